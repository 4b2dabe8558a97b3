"""Writing label maps (with the input's geometry) and coloured overlay PNGs, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imis.errors import InputError
from imis.io.files import atomic_output, file_extension
from imis.io.geometry import Geometry
from imis.io.image import ImageData

__all__ = [
    "LABEL_EXTENSIONS",
    "LABEL_PALETTE",
    "binary_png_values",
    "label_colors",
    "overlay_rgb",
    "write_label_map",
    "write_overlay_png",
]

LABEL_EXTENSIONS = (".png", ".nii", ".nii.gz", ".nrrd", ".mha", ".npy")
_SITK_LABEL_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha")

#: Distinct colours (RGB) for labels 1, 2, ...; label ``l`` gets ``LABEL_PALETTE[(l - 1) % 20]``.
LABEL_PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
        (170, 255, 195),
        (128, 128, 0),
        (255, 215, 180),
        (0, 0, 128),
        (128, 128, 128),
    ],
    dtype=np.uint8,
)


def label_colors(labels: np.ndarray) -> np.ndarray:
    """RGB colour of each label value (``labels.shape + (3,)``, uint8); background 0 is black."""
    lab = np.asarray(labels).astype(np.int64, copy=False)
    rgb = LABEL_PALETTE[(np.maximum(lab, 1) - 1) % len(LABEL_PALETTE)]
    rgb[lab <= 0] = 0
    return rgb


def _label_array(labels: np.ndarray, src: str) -> np.ndarray:
    """Labels as the smallest unsigned dtype holding them (uint8, uint16 or uint32)."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise InputError(f"{src}: labels must be an integer or bool array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InputError(f"{src}: labels must be 2D (y, x) or 3D (z, y, x), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{src}: labels are empty (shape {arr.shape})")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise InputError(f"{src}: labels must be >= 0, found {lo}")
    if hi < 256:
        return arr.astype(np.uint8, copy=False)
    if hi < 65536:
        return arr.astype(np.uint16, copy=False)
    if hi < 2**32:
        return arr.astype(np.uint32, copy=False)
    raise InputError(f"{src}: label value {hi} does not fit in 32 bits")


def write_label_map(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: Geometry | None = None,
    reference: ImageData | None = None,
) -> Path:
    """Write an integer label map atomically; return its path.

    Formats by extension: ``.png`` (2D only; uint8 when max < 256, else uint16; a single mask, values
    0/1, is written 0/255 so that it shows in any viewer: :func:`binary_png_values` reads it back), ``.nii``/``.nii.gz``/
    ``.nrrd``/``.mha`` (SimpleITK, with spacing/origin/direction), ``.npy``. Labels are stored in the
    smallest unsigned dtype that holds them.

    Geometry: ``geometry`` if given, else ``reference.geometry``, else unit geometry. When ``reference`` is
    a slice of a volume (``reference.slice_info``, from :func:`imis.io.slice_volume`) and no ``geometry``
    is given, a volumetric format receives a 3D single-slice volume placed at the slice's physical
    position in the parent volume (same spacing and direction). ``labels`` must match the reference's
    spatial shape.
    """
    src = str(path)
    ext = file_extension(path)
    if ext not in LABEL_EXTENSIONS:
        raise InputError(
            f"{src}: cannot write a label map as {ext or '(no extension)'!r}; use one of "
            f"{', '.join(LABEL_EXTENSIONS)}"
        )
    arr = _label_array(labels, src)
    slice_info = None
    if reference is not None:
        if tuple(arr.shape) != reference.spatial_shape:
            raise InputError(
                f"{src}: labels of shape {arr.shape} do not match the image {reference.source} of shape "
                f"{reference.spatial_shape}"
            )
        if geometry is None:
            geometry = reference.geometry
            slice_info = reference.slice_info
    if geometry is None:
        geometry = Geometry.identity(arr.ndim)
    if geometry.ndim != arr.ndim:
        raise InputError(f"{src}: a {geometry.ndim}D geometry cannot be written with {arr.ndim}D labels")

    if ext == ".png":
        if arr.ndim != 2:
            raise InputError(f"{src}: PNG holds 2D label maps only, got shape {arr.shape}; use .nii.gz")
        if arr.dtype == np.uint32:
            raise InputError(f"{src}: label values up to {int(arr.max())} do not fit a 16-bit PNG")
        from PIL import Image

        if arr.dtype == np.uint8 and arr.size and int(arr.max()) == 1:
            arr = arr * np.uint8(255)  # a single mask: 0/255, visible in any viewer (read back as 0/1)
        with atomic_output(path) as tmp:
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    elif ext == ".npy":
        with atomic_output(path) as tmp:
            np.save(tmp, arr, allow_pickle=False)
    else:
        import SimpleITK as sitk

        if slice_info is not None and arr.ndim == 2:
            arr = slice_info.to_volume(arr)
            geometry = slice_info.volume_geometry()
        image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        geometry.apply_to(image)
        with atomic_output(path) as tmp:
            try:
                sitk.WriteImage(image, str(tmp), True)
            except RuntimeError as exc:
                msg = " ".join(str(exc).split())[-300:]
                raise InputError(f"{src}: cannot write label map: {msg}") from None
    return Path(path)


def _display_rgb(image: np.ndarray, src: str) -> np.ndarray:
    """Min-max scaled uint8 RGB of a 2D grey or colour image of any numeric dtype (non-finite -> 0)."""
    img = np.asarray(image)
    if img.dtype.kind not in "biuf":
        raise InputError(f"{src}: image must be numeric, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., :3]
    elif img.ndim != 2:
        raise InputError(f"{src}: overlay needs a 2D image (y, x) or (y, x, 3), got shape {img.shape}")
    x = img.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        x = np.zeros_like(x)
    else:
        lo, hi = float(x[finite].min()), float(x[finite].max())
        x = np.where(finite, x, lo)
        x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    return x


def _outline(lab: np.ndarray) -> np.ndarray:
    """Pixels of a non-zero label with a 4-neighbour (or the image border) of another label."""
    pad = np.pad(lab, 1, mode="constant", constant_values=0)
    c = pad[1:-1, 1:-1]
    edge = (c != pad[:-2, 1:-1]) | (c != pad[2:, 1:-1]) | (c != pad[1:-1, :-2]) | (c != pad[1:-1, 2:])
    return edge & (c > 0)


def overlay_rgb(
    image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, src: str = "overlay"
) -> np.ndarray:
    """uint8 RGB of ``image`` (min-max display) with ``labels`` blended in colour and outlined.

    ``image`` is 2D ``(y, x)`` or colour ``(y, x, 3|4)`` of any numeric dtype; ``labels`` is an integer
    ``(y, x)`` map (0 = background). Each label gets a distinct colour (:data:`LABEL_PALETTE`), filled with
    opacity ``alpha`` and drawn opaque on its one-pixel outline.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"{src}: alpha must be in [0, 1], got {alpha}")
    rgb = _display_rgb(image, src)
    lab = np.asarray(labels)
    if lab.dtype.kind not in "biu":
        raise InputError(f"{src}: labels must be an integer or bool array, got dtype {lab.dtype}")
    if lab.shape != rgb.shape[:2]:
        raise InputError(
            f"{src}: labels of shape {lab.shape} do not match the image of shape {rgb.shape[:2]}"
        )
    lab = lab.astype(np.int64, copy=False)
    colors = label_colors(lab).astype(np.float64)
    fg = lab > 0
    rgb[fg] = (1.0 - alpha) * rgb[fg] + alpha * colors[fg]
    edge = _outline(lab)
    rgb[edge] = colors[edge]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_overlay_png(
    path: str | os.PathLike, image: np.ndarray, labels: np.ndarray, alpha: float = 0.5
) -> Path:
    """Write :func:`overlay_rgb` of ``image`` and ``labels`` as a PNG, atomically; returns the path.

    The image is written as stored (no reorientation); :func:`imis.io.display.write_slice_png` shows a
    slice of a volume in the radiological convention, upscaled, with prompts.
    """
    src = str(path)
    if file_extension(path) != ".png":
        raise InputError(f"{src}: overlay is written as PNG; use a .png file name")
    out = overlay_rgb(image, labels, alpha, src)
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
    return Path(path)


def binary_png_values(array: np.ndarray) -> np.ndarray:
    """A mask read from a PNG as 0/1: a single-mask PNG holds 0/255 (as written here) or 0/1 (older
    files, other tools); any other label map is returned unchanged."""
    arr = np.asarray(array)
    if arr.dtype == np.uint8 and arr.size and int(arr.max()) == 255 and np.isin(arr, (0, 255)).all():
        return (arr // 255).astype(np.uint8)
    return arr
