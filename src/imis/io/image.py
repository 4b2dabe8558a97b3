"""Reading 2D images and 3D volumes with their geometry, slicing volumes, and validating arrays.

Formats: PNG/JPEG/TIFF/BMP through Pillow; NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``),
MetaImage (``.mha``, ``.mhd``) and single DICOM files (``.dcm``) through SimpleITK; a folder is read as a
DICOM series (SimpleITK/GDCM); ``.npy`` / ``.npz`` through numpy. Axis order and physical conventions are
described in :mod:`imis.io.geometry`: volumes are ``(z, y, x)`` arrays, 2D images ``(y, x)`` or
``(y, x, 3)``; geometry is SimpleITK's ``(x, y, z)`` LPS. Voxels are never reoriented or resampled.

Every failure raises :class:`imis.errors.InputError` with one line ``"<file>: <cause>"``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from imis.errors import InputError
from imis.io._dicom import check_dicom_file
from imis.io._integrity import check_nifti, check_nrrd, check_slice_positions
from imis.io._metaimage import check_metaimage, check_metaimage_header
from imis.io.arrays import load_npy, load_npz, npz_keys
from imis.io.files import file_extension
from imis.io.geometry import Geometry
from imis.io.limits import check_claim, check_pillow_claim

__all__ = [
    "AXES",
    "SUPPORTED_EXTENSIONS",
    "ImageData",
    "SliceInfo",
    "parse_slice",
    "read_image",
    "require_2d",
    "slice_volume",
    "validate_image",
]

Kind = Literal["2d", "volume"]

#: Array axis of each axis name, for ``(z, y, x)`` volume arrays.
AXES: dict[str, int] = {"z": 0, "y": 1, "x": 2}
_AXIS_NAMES = ("z", "y", "x")

PILLOW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SITK_EXTENSIONS = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".dcm": "DICOM",
}
NUMPY_EXTENSIONS = (".npy", ".npz")
SUPPORTED_EXTENSIONS = (*PILLOW_EXTENSIONS, *SITK_EXTENSIONS, *NUMPY_EXTENSIONS)

#: Keys tried, in order, for an ``.npz`` holding several arrays.
NPZ_KEYS = ("image", "imgs", "arr_0")


# ---------------------------------------------------------------------------------------------------------
# data classes
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceInfo:
    """Where a 2D slice came from: enough to put a 2D result back into the parent volume's space.

    ``axis`` is the *array* axis of the parent ``(z, y, x)`` array (0, 1 or 2) and ``index`` the position
    along it; the slice is ``np.take(parent_array, index, axis)``.
    """

    axis: int
    index: int
    parent_geometry: Geometry
    parent_shape: tuple[int, ...]

    @property
    def axis_name(self) -> str:
        return _AXIS_NAMES[self.axis]

    @property
    def itk_axis(self) -> int:
        """The sliced axis in SimpleITK's ``(x, y, z)`` order (``2 - axis``)."""
        return 2 - self.axis

    def volume_geometry(self) -> Geometry:
        """Geometry of the single-slice volume holding this slice at its true physical position.

        Same spacing and direction as the parent; the origin is the parent's physical point of the
        slice's first voxel.
        """
        idx = [0.0, 0.0, 0.0]
        idx[self.itk_axis] = float(self.index)
        p = self.parent_geometry
        return Geometry(spacing=p.spacing, origin=p.index_to_physical(idx), direction=p.direction)

    def to_volume(self, array2d: np.ndarray) -> np.ndarray:
        """The 2D array as a single-slice ``(z, y, x)`` array matching :meth:`volume_geometry`."""
        return np.expand_dims(array2d, self.axis)


@dataclass
class ImageData:
    """An image or volume with its geometry.

    ``array`` is ``(z, y, x)`` for ``kind == "volume"`` and ``(y, x)`` or ``(y, x, 3)`` (``is_rgb``) for
    ``kind == "2d"``; it keeps the file's dtype (uint8, uint16, int16, float32, ...). ``geometry`` has 3
    entries per field for volumes and 2 for 2D images. For a slice taken with :func:`slice_volume`,
    ``slice_info`` records the axis, index and parent geometry, and ``geometry`` is the in-plane part
    (ITK ``ExtractImageFilter`` convention). ``meta`` holds extras (DICOM ``series_uid``, ``modality``,
    ``npz_key``, ``frames``).
    """

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None
    kind: Kind = "2d"
    is_rgb: bool = False
    slice_info: SliceInfo | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("2d", "volume"):
            raise ValueError(f"ImageData.kind must be '2d' or 'volume', got {self.kind!r}")
        want = 3 if self.kind == "volume" else 2
        if self.geometry.ndim != want:
            raise ValueError(f"a {self.kind} ImageData needs a {want}D geometry, got {self.geometry.ndim}D")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Array shape without the colour channel: ``(z, y, x)`` or ``(y, x)``."""
        return tuple(self.array.shape[:2]) if self.is_rgb else tuple(self.array.shape)

    @property
    def source(self) -> str:
        """Name used in messages: the path (or ``<array>``) plus the slice, if any."""
        name = str(self.path) if self.path is not None else "<array>"
        if self.slice_info is not None:
            name += f" (slice {self.slice_info.axis_name}={self.slice_info.index})"
        return name


# ---------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------
def validate_image(array: np.ndarray, source: str, *, kind: Kind | None = None) -> tuple[Kind, bool]:
    """Check that ``array`` is a usable image and return its ``(kind, is_rgb)``.

    Accepted: numeric or bool dtype; ``(y, x)``; ``(y, x, 3|4)`` colour; ``(z, y, x)`` volume; at least
    2x2 pixels (a volume needs two axes of length >= 2); finite values. ``kind`` forces the reading of a
    3D array; without it a 3D array whose last axis has 3 or 4 entries and whose other axes both exceed 4
    is a colour image, anything else a volume. Raises :class:`InputError` ``"<source>: <cause>"``.
    """
    if not isinstance(array, np.ndarray):
        raise InputError(f"{source}: expected a numpy array, got {type(array).__name__}")
    dt = array.dtype
    if dt.kind == "c":
        raise InputError(f"{source}: complex intensities ({dt}) are not supported")
    if dt.kind not in "biuf":
        raise InputError(f"{source}: non-numeric dtype {dt} (expected integer, float or bool intensities)")
    if array.size == 0:
        raise InputError(f"{source}: empty array (shape {array.shape})")
    shape = array.shape
    if array.ndim < 2 or array.ndim > 3:
        raise InputError(
            f"{source}: {array.ndim}D array of shape {shape} is not supported "
            "(expected a 2D image (y, x), a colour image (y, x, 3) or a volume (z, y, x))"
        )
    if array.ndim == 2:
        if kind == "volume":
            raise InputError(f"{source}: expected a volume (z, y, x), got a 2D array of shape {shape}")
        out_kind, rgb = "2d", False
    elif kind == "volume":
        out_kind, rgb = "volume", False
    elif kind == "2d":
        if shape[2] not in (3, 4):
            raise InputError(
                f"{source}: a 2D image is needed but the array of shape {shape} is 3D; "
                "pass an axis and index to take a slice (e.g. --slice z:90)"
            )
        out_kind, rgb = "2d", True
    else:
        rgb = shape[2] in (3, 4) and shape[0] > 4 and shape[1] > 4
        out_kind = "2d" if rgb else "volume"
    spatial = shape[:2] if rgb else shape
    if out_kind == "2d" and min(spatial) < 2:
        raise InputError(
            f"{source}: image is {spatial[0]}x{spatial[1]} pixels; at least 2x2 pixels are needed"
        )
    if out_kind == "volume" and sorted(spatial)[1] < 2:
        raise InputError(
            f"{source}: volume of shape {tuple(spatial)} (z, y, x) has no 2x2 slice; "
            "at least two axes of length >= 2 are needed"
        )
    if dt.kind == "f" and not np.isfinite(array).all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        raise InputError(
            f"{source}: intensities contain {n_nan} NaN and {n_inf} Inf values; replace or mask them first"
        )
    return out_kind, rgb


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------
def read_image(
    path: str | os.PathLike, *, series_uid: str | None = None, max_bytes: int | None = None
) -> ImageData:
    """Read a 2D image, a volume, or a DICOM series folder, with its geometry.

    ``series_uid`` picks one series when a DICOM folder holds several (otherwise that is an error
    listing the UIDs). Colour images come back as RGB (alpha dropped, palettes expanded); 16-bit greys
    stay uint16. Multi-page TIFFs become ``(z, y, x)`` volumes with unit geometry. A 4D file whose last
    axis has size 1 is read as 3D. Arrays from ``.npy``/``.npz`` get unit geometry; a ``(y, x, 1)`` array
    is read as ``(y, x)``, a ``(y, x, 3|4)`` one as colour, other 3D arrays as ``(z, y, x)`` volumes
    (see :func:`validate_image`). An ``.npz`` holding several arrays is read from its key ``image``,
    ``imgs`` or ``arr_0``.

    ``max_bytes`` is the reading cap: a file whose header claims more decoded pixel data is refused before
    anything is allocated (default ``$IMIS_MAX_IMAGE_BYTES`` or 4 GiB, see :mod:`imis.io.limits`).
    """
    p = Path(path)
    src = str(path)
    if not p.exists():
        raise InputError(f"{src}: no such file or folder")
    if p.is_dir():
        return _read_dicom_series(p, src, series_uid, max_bytes)
    if series_uid is not None:
        raise InputError(f"{src}: series_uid applies to DICOM series folders only, not to files")
    ext = file_extension(p)
    if ext in PILLOW_EXTENSIONS:
        return _read_pillow(p, src, max_bytes)
    if ext in SITK_EXTENSIONS:
        return _read_sitk(p, src, SITK_EXTENSIONS[ext], max_bytes)
    if ext in NUMPY_EXTENSIONS:
        return _read_numpy(p, src, ext, max_bytes)
    raise InputError(
        f"{src}: unsupported extension {ext or '(none)'!r}; supported: "
        f"{', '.join(SUPPORTED_EXTENSIONS)} or a DICOM series folder"
    )


def _finish(array: np.ndarray, geometry: Geometry | None, p: Path, src: str, kind: Kind | None, **meta):
    if array.dtype == bool:
        array = array.astype(np.uint8)
    out_kind, rgb = validate_image(array, src, kind=kind)
    if rgb and array.shape[2] == 4:
        array = np.ascontiguousarray(array[..., :3])
    ndim = 3 if out_kind == "volume" else 2
    if geometry is None:
        geometry = Geometry.identity(ndim)
    return ImageData(array=array, geometry=geometry, path=p, kind=out_kind, is_rgb=rgb, meta=meta)


# -- Pillow ----------------------------------------------------------------------------------------------
def _pil_array(im) -> np.ndarray:
    mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im, dtype=np.uint8)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16, copy=False)
    if mode in ("I", "F"):
        return np.asarray(im)
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0))
    if mode in ("RGB",):
        return np.asarray(im)
    if mode in ("RGBA", "RGBa", "RGBX"):
        return np.asarray(im)[..., :3]
    if mode in ("P", "PA"):
        return np.asarray(im.convert("RGBA"))[..., :3]
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV


def _pillow_frames(p: Path, src: str, max_bytes: int | None) -> list[np.ndarray]:
    from PIL import Image

    frames: list[np.ndarray] = []
    total = 0
    with Image.open(p) as im:
        for i in range(int(getattr(im, "n_frames", 1))):
            im.seek(i)
            total = check_pillow_claim(im, p, src, max_bytes, total)
            frames.append(_pil_array(im))
    return frames


def _read_pillow(p: Path, src: str, max_bytes: int | None = None) -> ImageData:
    fmt = file_extension(p).lstrip(".").upper().replace("JPG", "JPEG").replace("TIFF", "TIF")
    try:
        frames = _pillow_frames(p, src, max_bytes)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise InputError(f"{src}: cannot read {fmt} file: {_cause(exc)}") from None
    n_frames = len(frames)
    if n_frames == 1:
        return _finish(frames[0], None, p, src, "2d")
    if any(f.shape != frames[0].shape or f.ndim != 2 for f in frames):
        raise InputError(
            f"{src}: multi-page {fmt} with {n_frames} pages of differing sizes or colour pages "
            "cannot be read as a volume"
        )
    dtype = np.result_type(*frames)
    return _finish(np.stack(frames).astype(dtype, copy=False), None, p, src, "volume", frames=n_frames)


# -- SimpleITK -------------------------------------------------------------------------------------------
def _sitk_cause(exc: Exception, p: Path) -> str:
    """One readable line from a SimpleITK/ITK exception text (drops source paths and object addresses)."""
    text = str(exc)
    nrrd = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("[nrrd]")]
    if nrrd:
        text = nrrd[-1].removeprefix("[nrrd]").strip()
    text = re.sub(r"Exception thrown in SimpleITK \w+: \S+:\d+:", "", text)
    text = re.sub(r"(ITK|sitk)(::| )ERROR:\s*", "", text)
    text = re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    text = " ".join(text.split())
    if "File cannot be read" in text and p.is_file():
        # MetaImageIO reports a short read as "Reason: No such file or directory".
        text = "data could not be read completely (truncated or corrupt file)"
    if "Unable to determine ImageIO reader" in text:
        text = "not a recognised image file (corrupt or wrong extension)"
    return text[:300] or type(exc).__name__


def _cause(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:300]}" if msg else type(exc).__name__


def _geometry(image, src: str) -> Geometry:
    try:
        return Geometry.from_sitk(image)
    except ValueError as exc:  # spacing 0, negative or NaN; NaN origin or direction
        raise InputError(f"{src}: unusable geometry in the header: {exc}") from None


def _pixel_bytes(reader) -> int:
    """Bytes of one pixel component of the image ``reader`` would produce (from its header)."""
    import SimpleITK as sitk

    try:
        return sitk.Image([1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
    except RuntimeError:
        return 8


def _read_info(reader, p: Path, src: str, fmt: str, max_bytes: int | None) -> tuple[tuple[int, ...], int]:
    """Parse the header only; refuse a claimed size above the cap or beyond what the file holds."""
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{src}: cannot read {fmt} file: {_sitk_cause(exc, p)}") from None
    full = tuple(reader.GetSize())
    comps = reader.GetNumberOfComponents()
    n_bytes = math.prod(full) * comps * _pixel_bytes(reader)
    check_claim(src, n_bytes, f"a {fmt} image of size {full} x {comps} components", max_bytes)
    if fmt == "MetaImage":
        check_metaimage(p, src, n_bytes)  # ITK returns a corrupt compressed .mha with only a warning
    elif fmt == "NRRD":
        check_nrrd(p, src, n_bytes, math.prod(full) * comps)
    return full, comps


def _read_sitk(p: Path, src: str, fmt: str, max_bytes: int | None = None) -> ImageData:
    import SimpleITK as sitk

    if fmt == "NIfTI":
        check_nifti(p, src, max_bytes)  # truncation, gzip corruption and NaN/Inf, which ITK's reader hides
    elif fmt == "MetaImage":
        check_metaimage_header(p, src)  # ITK's MetaIO crashes on inconsistent fields
    elif fmt == "DICOM":
        check_dicom_file(p, src)  # GDCM allocates (and keeps) what a corrupt header claims, pads short data
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    size, comps = _read_info(reader, p, src, fmt, max_bytes)
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) > 3:
        raise InputError(
            f"{src}: {len(size)}D image of size {size} (x, y, z, ...) is not supported; "
            "only 2D images and 3D volumes are"
        )
    if comps > 1 and not (len(size) == 2 and comps in (3, 4)):
        raise InputError(
            f"{src}: {comps}-component pixels in a {len(size)}D image are not supported "
            "(only 2D RGB/RGBA colour images)"
        )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{src}: cannot read {fmt} file: {_sitk_cause(exc, p)}") from None
    while image.GetDimension() > len(size):
        image = image[(slice(None),) * (image.GetDimension() - 1) + (0,)]
    array = sitk.GetArrayFromImage(image)
    kind: Kind = "volume" if image.GetDimension() == 3 else "2d"
    return _finish(array, _geometry(image, src), p, src, kind)


def _series_files(p: Path, src: str, series_uid: str | None) -> tuple[str, list[str]]:
    import SimpleITK as sitk

    for f in sorted(p.iterdir()):
        if f.is_file():
            check_dicom_file(f, f"{src} (file {f.name})", strict=False)
    try:  # GDCM raises on a file it cannot parse (SamplesPerPixel 0, ...) while scanning the folder
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
    except RuntimeError as exc:
        raise InputError(f"{src}: cannot scan the DICOM folder: {_sitk_cause(exc, p)}") from None
    if not ids:
        n_files = sum(1 for f in p.iterdir() if f.is_file())
        raise InputError(f"{src}: folder holds no DICOM series ({n_files} files, none readable as DICOM)")
    if series_uid is not None:
        if series_uid not in ids:
            raise InputError(
                f"{src}: no DICOM series with UID {series_uid}; the folder holds: {', '.join(ids)}"
            )
        uid = series_uid
    elif len(ids) > 1:
        raise InputError(
            f"{src}: folder holds {len(ids)} DICOM series; pass series_uid= one of: {', '.join(ids)}"
        )
    else:
        uid = ids[0]
    try:
        return uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), uid))
    except RuntimeError as exc:
        raise InputError(f"{src}: cannot list DICOM series {uid}: {_sitk_cause(exc, p)}") from None


def _read_dicom_series(p: Path, src: str, series_uid: str | None, max_bytes: int | None = None) -> ImageData:
    import SimpleITK as sitk

    uid, files = _series_files(p, src, series_uid)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    size, comps = _read_info(first, Path(files[0]), f"{src} (file {Path(files[0]).name})", "DICOM", None)
    n_bytes = math.prod(size) * comps * _pixel_bytes(first) * len(files)
    check_claim(src, n_bytes, f"a DICOM series of {len(files)} files of size {size}", max_bytes)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{src}: cannot read DICOM series {uid}: {_sitk_cause(exc, p)}") from None
    check_slice_positions(reader, len(files), src, uid)
    meta = {"series_uid": uid, "n_files": len(files), "files": [str(f) for f in files]}
    if reader.HasMetaDataKey(0, "0008|0060"):
        meta["modality"] = reader.GetMetaData(0, "0008|0060").strip()
    array = sitk.GetArrayFromImage(image)
    kind: Kind = "volume" if image.GetDimension() == 3 else "2d"
    return _finish(array, _geometry(image, src), p, src, kind, **meta)


# -- numpy -----------------------------------------------------------------------------------------------
def _read_numpy(p: Path, src: str, ext: str, max_bytes: int | None = None) -> ImageData:
    meta = {}
    if ext == ".npy":
        array = load_npy(p, src, max_bytes)
    else:
        keys = npz_keys(p, src)
        if len(keys) == 1:
            key = keys[0]
        else:
            key = next((k for k in NPZ_KEYS if k in keys), None)
            if key is None:
                raise InputError(
                    f"{src}: .npz holds {len(keys)} arrays ({', '.join(keys) or 'none'}) and none "
                    f"is named {' / '.join(NPZ_KEYS)}; save the image alone or under 'image'"
                )
        array = load_npz(p, [key], src, max_bytes)[key]
        meta["npz_key"] = key
    if not isinstance(array, np.ndarray):
        raise InputError(f"{src}: expected an array, got {type(array).__name__}")
    if array.ndim == 3 and array.shape[2] == 1 and min(array.shape[:2]) > 4:
        array = array[..., 0]  # (y, x, 1) id maps and grey images, as IMed-361M releases them
    return _finish(array, None, p, src, None, **meta)


# ---------------------------------------------------------------------------------------------------------
# slicing
# ---------------------------------------------------------------------------------------------------------
def _axis_index(axis: str | int, source: str) -> int:
    if isinstance(axis, str) and axis.strip().lower() in AXES:
        return AXES[axis.strip().lower()]
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and 0 <= int(axis) <= 2:
        return int(axis)
    raise InputError(f"{source}: slice axis {axis!r} is not one of 'z', 'y', 'x' (or 0, 1, 2)")


def slice_volume(data: ImageData, axis: str | int, index: int) -> ImageData:
    """The 2D slice ``np.take(volume, index, axis)`` of a ``(z, y, x)`` volume, with its provenance.

    ``axis`` is ``"z"``/``"y"``/``"x"`` or the array axis 0/1/2: a z slice is ``(y, x)``, a y slice
    ``(z, x)``, an x slice ``(z, y)`` (rows follow the lower array axis; nothing is flipped). The result's
    ``slice_info`` lets :func:`imis.io.write_label_map` place a 2D label map back at the slice's physical
    position. ``index`` is 0-based, ``0 <= index < size``.
    """
    src = data.source
    if data.kind != "volume":
        raise InputError(f"{src}: slicing needs a 3D volume, got a 2D image of shape {data.array.shape}")
    ax = _axis_index(axis, src)
    n = data.array.shape[ax]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise InputError(f"{src}: slice index must be an integer, got {index!r}")
    if not 0 <= index < n:
        raise InputError(
            f"{src}: slice index {index} is out of range for axis {_AXIS_NAMES[ax]} "
            f"(volume shape (z, y, x) = {data.array.shape}; valid indices 0..{n - 1})"
        )
    index = int(index)
    info = SliceInfo(axis=ax, index=index, parent_geometry=data.geometry, parent_shape=data.array.shape)
    array = np.ascontiguousarray(np.take(data.array, index, axis=ax))
    out = ImageData(
        array=array,
        geometry=_slice_geometry(info),
        path=data.path,
        kind="2d",
        is_rgb=False,
        slice_info=info,
        meta=dict(data.meta),
    )
    validate_image(array, out.source, kind="2d")
    return out


def _slice_geometry(info: SliceInfo) -> Geometry:
    """In-plane 2D geometry of a slice, as ITK's ExtractImageFilter (collapse to submatrix, else identity)."""
    keep = [d for d in range(3) if d != info.itk_axis]
    parent = info.parent_geometry
    point = info.volume_geometry().origin
    sub = parent.direction_matrix[np.ix_(keep, keep)]
    if abs(np.linalg.det(sub)) < 1e-6:
        sub = np.eye(2)
    return Geometry(
        spacing=[parent.spacing[d] for d in keep],
        origin=[point[d] for d in keep],
        direction=sub,
    )


def require_2d(data: ImageData, axis: str | int | None = None, index: int | None = None) -> ImageData:
    """The 2D image a 2D-only step needs: ``data`` itself, or its slice at ``axis``/``index``.

    A volume with a single slice along one axis is taken as that slice. Any other volume without an axis
    and index is an :class:`InputError` telling the user to pass them (``--slice z:90``).
    """
    src = data.source
    if (axis is None) != (index is None):
        raise InputError(f"{src}: pass both a slice axis and an index (e.g. --slice z:90), not just one")
    if data.kind == "2d":
        if axis is not None:
            raise InputError(f"{src}: is already a 2D image of shape {data.array.shape}; drop --slice")
        return data
    if axis is not None:
        return slice_volume(data, axis, index)
    singles = [ax for ax, n in enumerate(data.array.shape) if n == 1]
    if singles:
        return slice_volume(data, singles[0], 0)
    shape = data.array.shape
    raise InputError(
        f"{src}: is a 3D volume of shape (z, y, x) = {shape} but a 2D image is needed; pass an axis and "
        f"index to take a slice, e.g. --slice z:{shape[0] // 2} (axis z, y or x; 0-based index)"
    )


def parse_slice(spec: str, source: str = "--slice") -> tuple[str, int]:
    """Parse ``"z:90"`` / ``"y=10"`` / ``"0:90"`` into ``(axis_name, index)``."""
    m = re.fullmatch(r"\s*([zyxZYX012])\s*[:=]\s*(\d+)\s*", str(spec))
    if not m:
        raise InputError(
            f"{source}: {spec!r} is not AXIS:INDEX with AXIS one of z, y, x (or 0, 1, 2), e.g. z:90"
        )
    axis = m.group(1).lower()
    name = _AXIS_NAMES[int(axis)] if axis.isdigit() else axis
    return name, int(m.group(2))
