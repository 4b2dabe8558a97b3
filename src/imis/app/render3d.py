"""The 3D view: the label map rendered on the server as a shaded surface, turned by an azimuth/elevation.

No build step and no WebGL in the page, so the server draws it: the boundary voxels of each visible
object are placed in physical space (voxel index x spacing, through the direction cosines: LPS
millimetres), rotated, projected orthographically, and the nearest voxel per pixel kept (a z-buffer);
the depth map gives the surface normals for Lambert shading, and a depth cue darkens what is farther.
Azimuth 0 and elevation 0 look at the patient from the front (anterior view: the patient's right on the
left of the image, superior up); azimuth turns about the superior axis, elevation tilts towards the top.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from imis.errors import PromptError

MAX_POINTS = 1_500_000  # boundary voxels drawn at most (a stride over the volume beyond that)
BACKGROUND = (22, 24, 29)


def boundary_points(labels: np.ndarray, visible: set[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """(N, 3) array indices (z, y, x) of the visible objects' boundary voxels, (N,) their labels, and the
    stride taken over the volume (1 unless there were more than MAX_POINTS of them)."""
    shown = np.isin(labels, sorted(visible)) if visible else np.zeros(labels.shape, bool)
    if not shown.any():
        return np.zeros((0, 3), np.int64), np.zeros(0, labels.dtype), 1
    # crop to the objects first: the erosion then runs on their bounding box, not the whole volume
    box = ndimage.find_objects(shown.astype(np.uint8))[0]
    lab = np.where(shown[box], labels[box], 0)
    stride = 1
    while np.count_nonzero(lab[::stride, ::stride, ::stride]) > 4 * MAX_POINTS:
        stride += 1
    lab = lab[::stride, ::stride, ::stride]
    # a boundary voxel has a 6-neighbour of another label (or lies on the crop's edge)
    padded = np.pad(lab, 1)
    edge = np.zeros(lab.shape, bool)
    core = padded[1:-1, 1:-1, 1:-1]
    for axis in range(3):
        for shift in (-1, 1):
            edge |= np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1] != core
    edge &= lab > 0
    idx = np.argwhere(edge)
    values = lab[edge]
    origin = np.array([s.start for s in box])
    return origin + idx * stride, values, stride


def rotation(azimuth: float, elevation: float) -> np.ndarray:
    """Rows: the screen's right, its down and the viewing direction, in LPS, for these angles (degrees)."""
    a, e = np.radians(azimuth), np.radians(elevation)
    # anterior view: screen right = patient's left (+L), screen down = inferior (-S), looking towards +P
    right = np.array([np.cos(a), -np.sin(a), 0.0])
    into = np.array([np.sin(a), np.cos(a), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    into, up = into * np.cos(e) - up * np.sin(e), up * np.cos(e) + into * np.sin(e)
    return np.stack([right, -up, into])


def render(
    labels: np.ndarray,
    spacing_xyz,
    direction: np.ndarray | None,
    colors: dict[int, tuple[int, int, int]],
    azimuth: float = 0.0,
    elevation: float = 0.0,
    size: int = 384,
) -> np.ndarray:
    """The (size, size, 3) uint8 image of the visible objects (`colors`: label -> RGB) of a (z, y, x) map."""
    if labels.ndim != 3:
        raise PromptError("the 3D view needs a volume")
    if not 64 <= size <= 1024:
        raise PromptError(f"size {size}: choose 64 to 1024 pixels")
    idx, values, stride = boundary_points(labels, set(colors))
    if not len(idx):
        return _blank(size)
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    # array (z, y, x) -> ITK (x, y, z) millimetres -> LPS
    mm = idx[:, ::-1] * np.asarray(spacing_xyz, float)[None]
    lps = mm @ d.T
    lps -= (lps.min(0) + lps.max(0)) / 2
    view = lps @ rotation(azimuth, elevation).T
    radius = float(np.sqrt((lps**2).sum(1)).max()) or 1.0
    # draw where a voxel is at most ~1.4 pixels wide (the 2 x 2 splats then close every gap), then scale
    # the picture up to `size`: a small object fills the view without looking like a cloud of dots
    voxel = float(min(spacing_xyz)) * stride
    n = int(np.clip(np.ceil(2 * radius / (0.7 * voxel)) + 8, 64, size))
    scale = (n / 2 - 4) / radius
    px = np.clip(np.rint(view[:, 0] * scale + n / 2), 0, n - 1).astype(np.int64)
    py = np.clip(np.rint(view[:, 1] * scale + n / 2), 0, n - 1).astype(np.int64)
    depth = view[:, 2] * scale  # in pixels, smaller is nearer
    depth_buf, label_buf = _zbuffer(px, py, depth, values, n)
    img = _shade(_blank(n), depth_buf, label_buf, colors, radius * scale)
    if n == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def _blank(size: int) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[...] = BACKGROUND
    return img


def _zbuffer(px, py, depth, values, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The nearest point per pixel, each point splatted on 2 x 2 pixels so that no gaps open between
    voxels nearer than a pixel apart."""
    depth_buf = np.full(size * size, np.inf)
    label_buf = np.zeros(size * size, np.int64)
    xs = np.concatenate([px, np.minimum(px + 1, size - 1), px, np.minimum(px + 1, size - 1)])
    ys = np.concatenate([py, py, np.minimum(py + 1, size - 1), np.minimum(py + 1, size - 1)])
    flat = ys * size + xs
    dep, val = np.tile(depth, 4), np.tile(values, 4)
    order = np.lexsort((dep, flat))  # by pixel, nearest first
    flat, dep, val = flat[order], dep[order], val[order]
    first = np.r_[True, flat[1:] != flat[:-1]]
    depth_buf[flat[first]] = dep[first]
    label_buf[flat[first]] = val[first]
    return depth_buf.reshape(size, size), label_buf.reshape(size, size)


def _shade(img, depth, labels, colors, radius: float) -> np.ndarray:
    hit = np.isfinite(depth)
    z = np.where(hit, depth, np.nan)
    # normals from the depth map (missing neighbours: the pixel's own depth, i.e. facing the viewer)
    filled = np.where(hit, z, ndimage.maximum_filter(np.where(hit, z, -np.inf), 3))
    filled = np.where(np.isfinite(filled), filled, 0.0)
    gy, gx = np.gradient(ndimage.uniform_filter(filled, 3))
    n = np.stack([-gx, -gy, -np.ones_like(gx)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    light = np.array([-0.35, -0.45, -1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(n @ light, 0, 1)
    cue = 1 - 0.35 * np.clip((filled + radius) / (2 * radius), 0, 1)  # farther is darker
    shade = (0.25 + 0.75 * lambert) * cue
    palette = np.zeros((int(labels.max()) + 1, 3))
    for v, c in colors.items():
        if v < len(palette):
            palette[v] = c
    rgb = palette[labels] * shade[..., None]
    img[hit] = np.clip(rgb[hit], 0, 255).astype(np.uint8)
    return img


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
