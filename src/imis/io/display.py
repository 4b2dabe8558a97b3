"""How slices are shown: the radiological convention, upscaling, prompts and a coordinate grid.

Prompts and label maps stay in the voxel indices of the slice array (x = column, y = row of
``np.take(volume, index, axis)``, as ITK-SNAP and 3D Slicer show a voxel's index); only the pictures
written for people (``imis segment --overlay`` and ``--preview``) are turned into the radiological
convention, from the volume's direction matrix:

* axial: anterior at the top, the patient's right on the left of the picture;
* coronal: superior at the top, the patient's right on the left;
* sagittal: superior at the top, anterior on the left.

These are 3D Slicer's default Axial, Coronal and Sagittal views (the orientation presets of
``vtkMRMLSliceNode``, whose SliceToRAS columns 0 and 1 give screen right and screen up in RAS: axial
-R and +A, coronal -R and +S, sagittal -A and +S). Two differences, both because pictures show the
voxels the prompts index: Slicer resamples an oblique volume onto the anatomical plane, we show the
voxel plane turned to its nearest anatomical orientation (no resampling); and we draw one pixel per
voxel, where Slicer scales by the voxel spacing. A 2D image (no volume) is shown as stored. The preview's grid is labelled with voxel indices, so that
the numbers read off it are the ``--box``/``--click`` coordinates even where the picture is flipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imis.errors import InputError
from imis.io.files import atomic_output, file_extension
from imis.io.image import ImageData

__all__ = ["Orientation", "orientation_of", "render_slice", "write_slice_png"]

#: LPS unit vectors of "down" and "right" on the screen for each plane (radiological convention)
_SCREEN = {
    "axial": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),  # down = posterior, right = patient's left
    "coronal": ((0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),  # down = inferior, right = patient's left
    "sagittal": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),  # down = inferior, right = posterior
}
_EDGES = {"axial": "APRL", "coronal": "SIRL", "sagittal": "SIAP"}  # top, bottom, left, right
_PLANE_OF_NORMAL = ("sagittal", "coronal", "axial")  # the normal's dominant LPS axis: x, y, z


@dataclass(frozen=True)
class Orientation:
    """How a slice array becomes the picture: transpose first, then flip rows and/or columns."""

    plane: str = "2d"
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def edges(self) -> str:
        """Anatomical letters at the picture's top, bottom, left and right ('' for a 2D image)."""
        return _EDGES.get(self.plane, "")

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The picture of a ``(h, w)`` or ``(h, w, c)`` slice array."""
        out = np.swapaxes(array, 0, 1) if self.transpose else array
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def point(self, x: float, y: float, shape: Sequence[int]) -> tuple[float, float]:
        """Picture (column, row) of the slice pixel (x, y) of a slice of ``shape`` (h, w)."""
        r, c = (x, y) if self.transpose else (y, x)
        h, w = (shape[1], shape[0]) if self.transpose else (shape[0], shape[1])
        return (w - 1 - c if self.flip_cols else c), (h - 1 - r if self.flip_rows else r)


def orientation_of(data: ImageData) -> Orientation:
    """The radiological picture of ``data``: a slice of a volume from its parent's direction matrix."""
    info = data.slice_info
    if info is None:
        return Orientation()
    d = info.parent_geometry.direction_matrix  # column k: LPS direction of ITK index axis k (x, y, z)
    rows_axis, cols_axis = (a for a in range(3) if a != info.axis)  # array axes of the slice's rows, cols
    row_vec, col_vec, normal = d[:, 2 - rows_axis], d[:, 2 - cols_axis], d[:, 2 - info.axis]
    plane = _PLANE_OF_NORMAL[int(np.argmax(np.abs(normal)))]
    down, right = (np.asarray(v) for v in _SCREEN[plane])
    transpose = abs(col_vec @ down) > abs(row_vec @ down)
    if transpose:
        row_vec, col_vec = col_vec, row_vec
    return Orientation(plane, bool(transpose), bool(row_vec @ down < 0), bool(col_vec @ right < 0))


def _upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    return rgb if scale == 1 else np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _draw_prompts(draw, orient: Orientation, shape, scale: int, offset, box, clicks) -> None:
    """The box (yellow) and clicks (green +, red -) at their picture positions, ``scale`` px a pixel."""

    def at(x: float, y: float) -> tuple[float, float]:
        c, r = orient.point(x, y, shape)
        return offset[0] + (c + 0.5) * scale, offset[1] + (r + 0.5) * scale

    width = max(1, scale // 2)
    if box is not None:
        (ax, ay), (bx, by) = at(box[0], box[1]), at(box[2], box[3])
        half = scale / 2
        draw.rectangle(
            [min(ax, bx) - half, min(ay, by) - half, max(ax, bx) + half - 1, max(ay, by) + half - 1],
            outline=(255, 220, 0),
            width=width,
        )
    radius = max(5, 3 * scale)
    for x, y, positive in clicks or ():
        cx, cy = at(x, y)
        colour = (0, 230, 0) if positive else (255, 40, 40)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=(0, 0, 0), fill=colour)
        draw.line([cx - radius + 2, cy, cx + radius - 2, cy], fill=(0, 0, 0), width=1)
        if positive:
            draw.line([cx, cy - radius + 2, cx, cy + radius - 2], fill=(0, 0, 0), width=1)


def _tick_step(n: int) -> int:
    """A round voxel step giving about 8-12 grid lines over ``n`` voxels."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if n / step <= 12:
            return step
    return 10 ** math.ceil(math.log10(n / 10))


def _draw_grid(draw, orient: Orientation, shape, scale: int, offset: tuple[int, int], font) -> None:
    """Grid lines every few voxels, labelled with the voxel index (x along one side, y along the other)."""
    h, w = shape
    ox, oy = offset
    ph, pw = (w, h) if orient.transpose else (h, w)  # picture size in voxels
    for axis, n in (("x", w), ("y", h)):
        for v in range(0, n, _tick_step(max(h, w))):
            c, r = orient.point(v if axis == "x" else 0, v if axis == "y" else 0, shape)
            vertical = (axis == "x") != orient.transpose  # an x value is a column unless transposed
            if vertical:
                px = ox + (c + 0.5) * scale
                draw.line([px, oy, px, oy + ph * scale - 1], fill=(0, 200, 255), width=1)
                draw.text((px, oy - 2), f"{axis}{v}", fill=(255, 255, 255), font=font, anchor="mb")
            else:
                py = oy + (r + 0.5) * scale
                draw.line([ox, py, ox + pw * scale - 1, py], fill=(0, 200, 255), width=1)
                draw.text((ox - 3, py), f"{axis}{v}", fill=(255, 255, 255), font=font, anchor="rm")


def render_slice(
    image: ImageData,
    labels: np.ndarray | None = None,
    *,
    scale: int = 1,
    box: Sequence[float] | None = None,
    clicks: Sequence[tuple[float, float, bool]] = (),
    grid: bool = False,
    title: str | None = None,
) -> np.ndarray:
    """The uint8 RGB picture of a 2D image or slice: ``labels`` blended in colour, the radiological
    convention for slices of volumes (:func:`orientation_of`), upscaled ``scale`` times (nearest), the
    prompts drawn on top; ``grid``: a margin with voxel-index grid lines, orientation letters and
    ``title``."""
    from PIL import Image, ImageDraw

    from imis.io.labels import overlay_rgb

    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 1 <= scale <= 16:
        raise InputError(f"overlay scale must be a whole number from 1 to 16, got {scale!r}")
    shape = image.spatial_shape
    lab = np.zeros(shape, np.uint8) if labels is None else labels
    orient = orientation_of(image)
    rgb = _upscale(orient.apply(overlay_rgb(image.array, lab, src=image.source)), int(scale))
    left, top, right, bottom = (48, 40, 12, 24) if grid else (0, 0, 0, 0)
    canvas = Image.new("RGB", (rgb.shape[1] + left + right, rgb.shape[0] + top + bottom), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (left, top))
    draw = ImageDraw.Draw(canvas)
    if grid:
        font = _font(12)
        _draw_grid(draw, orient, shape, int(scale), (left, top), font)
        if title:
            draw.text((left, 4), title, fill=(255, 255, 255), font=font)
    _draw_prompts(draw, orient, shape, int(scale), (left, top), box, clicks)
    rect = (left, top, left + rgb.shape[1], top + rgb.shape[0])
    _draw_edges(draw, orient, rect, _font(max(12, 4 * int(scale))))
    return np.asarray(canvas)


def _draw_edges(draw, orient: Orientation, rect, font) -> None:
    """The anatomical letters (A/P, R/L, S/I) at the middle of each edge of the picture ``rect``."""
    if not orient.edges:
        return
    x0, y0, x1, y1 = rect
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    top, bottom, left, right = orient.edges
    for letter, xy, anchor in (
        (top, (xm, y0 + 2), "mt"),
        (bottom, (xm, y1 - 2), "mb"),
        (left, (x0 + 2, ym), "lm"),
        (right, (x1 - 2, ym), "rm"),
    ):
        draw.text(
            xy, letter, fill=(255, 255, 0), font=font, anchor=anchor, stroke_width=1, stroke_fill=(0, 0, 0)
        )


def write_slice_png(
    path: str | os.PathLike, image: ImageData, labels: np.ndarray | None = None, **kw
) -> Path:
    """Write :func:`render_slice` as a PNG, atomically; returns the path."""
    if file_extension(path) != ".png":
        raise InputError(f"{path}: overlays and previews are written as PNG; use a .png file name")
    rgb = render_slice(image, labels, **kw)
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)
