"""imis.io: read images and volumes with their geometry, slice volumes, write label maps and overlays.

Conventions (see :mod:`imis.io.geometry`): volume arrays are ``(z, y, x)`` as SimpleITK returns them,
2D images ``(y, x)`` or ``(y, x, 3)``; spacing/origin/direction are in SimpleITK's ``(x, y, z)`` order in
LPS millimetres (NIfTI's RAS affine is converted by SimpleITK on read and write). Bad input raises
:class:`imis.errors.InputError` with one line naming the file and the cause.
"""

from imis.io.files import atomic_output, file_extension
from imis.io.geometry import LPS_TO_RAS, Geometry
from imis.io.image import (
    AXES,
    SUPPORTED_EXTENSIONS,
    ImageData,
    SliceInfo,
    parse_slice,
    read_image,
    require_2d,
    slice_volume,
    validate_image,
)
from imis.io.labels import (
    LABEL_EXTENSIONS,
    LABEL_PALETTE,
    binary_png_values,
    label_colors,
    overlay_rgb,
    write_label_map,
    write_overlay_png,
)

__all__ = [
    "AXES",
    "LABEL_EXTENSIONS",
    "LABEL_PALETTE",
    "LPS_TO_RAS",
    "SUPPORTED_EXTENSIONS",
    "Geometry",
    "ImageData",
    "SliceInfo",
    "atomic_output",
    "binary_png_values",
    "file_extension",
    "label_colors",
    "overlay_rgb",
    "parse_slice",
    "read_image",
    "require_2d",
    "slice_volume",
    "validate_image",
    "write_label_map",
    "write_overlay_png",
]
