"""Click simulation: first clicks on a ground-truth mask and correction clicks on a prediction's errors.

Conventions shared by every function here:

* Masks are 2D arrays (``H x W``) read as booleans; coordinates are integer pixel positions ``(x, y)``
  (column, row) in the mask's own frame.
* Every random draw comes from the explicit :class:`numpy.random.Generator` passed in; nothing touches a
  global RNG. Deterministic simulators (``center_click``, ``ritm_click``, ``largest_component_click``) take
  no generator at all and break ties by taking the **first pixel in raster order** (smallest ``y``, then
  smallest ``x``), as RITM's ``argwhere(...)[0]`` does.
* Distance transforms are Euclidean and computed on the region padded by one ``False`` pixel on every side,
  so the image border counts as a region boundary (a region touching the border is not "infinitely deep"
  there). This is RITM's choice and matches the CVPR 2025 challenge, whose crop is zero-padded.
* ``clicked`` is the collection of pixels already clicked (``Click`` objects or ``(x, y)`` pairs). No
  simulator returns one of them again: they are removed from the candidates, so the simulator falls back to
  the next best unclicked pixel, and returns ``None`` when every candidate pixel has been clicked.
* Correction clicks are positive on false negatives (``gt & ~pred``: the user adds) and negative on false
  positives (``pred & ~gt``: the user removes); each returns ``None`` when the prediction has no (unclicked)
  error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "Click",
    "center_click",
    "centroid_candidates",
    "centroid_click",
    "largest_component_click",
    "ritm_click",
    "uniform_click",
    "uniform_error_click",
]


@dataclass(frozen=True)
class Click:
    """One click at pixel ``(x, y)``; ``positive`` is True for foreground (add), False for background."""

    x: int
    y: int
    positive: bool

    @property
    def xy(self) -> tuple[int, int]:
        return self.x, self.y


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _mask2d(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) array, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _mask2d(pred, "pred"), _mask2d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    return p, g


def _clicked_map(shape: tuple[int, int], clicked: Iterable[Click | tuple[int, int]]) -> np.ndarray:
    """Boolean map of the pixels already clicked (coordinates outside the image raise ValueError)."""
    out = np.zeros(shape, dtype=bool)
    h, w = shape
    for c in clicked:
        x, y = (c.x, c.y) if isinstance(c, Click) else c
        xi, yi = int(round(float(x))), int(round(float(y)))
        if not (0 <= xi < w and 0 <= yi < h):
            raise ValueError(f"clicked pixel ({x}, {y}) lies outside the {w}x{h} image")
        out[yi, xi] = True
    return out


def _edt(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each region pixel to the nearest non-region pixel, the image border counting
    as non-region (the region is padded by one False pixel before the transform)."""
    out = np.zeros(region.shape, dtype=np.float64)
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if rows.size == 0:
        return out
    # Exact on the region's bounding box padded by one False pixel: the nearest non-region pixel of any
    # region pixel is never farther out than that ring (clamping a point onto the ring only brings it
    # closer), and at the image border the pad is the border rule itself.
    sl = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    out[sl] = ndimage.distance_transform_edt(np.pad(region[sl], 1))[1:-1, 1:-1]
    return out


def _first_argmax(values: np.ndarray) -> tuple[int, int]:
    """(x, y) of the first maximum in raster order."""
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(x), int(y)


def _uniform_pixel(candidates: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(candidates)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


# ---------------------------------------------------------------------------------------------------------
# first clicks
# ---------------------------------------------------------------------------------------------------------
def uniform_click(
    mask: np.ndarray, rng: np.random.Generator, clicked: Iterable[Click | tuple[int, int]] = ()
) -> Click:
    """A positive click drawn uniformly among the (unclicked) foreground pixels (SAM-Med2D's first point).

    Raises ValueError for an empty mask or one whose every pixel is already clicked.
    """
    m = _mask2d(mask)
    cand = m & ~_clicked_map(m.shape, clicked)
    if not cand.any():
        raise ValueError("empty mask: no foreground pixel to click" if not m.any() else "all pixels clicked")
    return Click(*_uniform_pixel(cand, rng), True)


def centroid_candidates(mask: np.ndarray, top_fraction: float = 0.5) -> np.ndarray:
    """(N, 2) array of the (x, y) foreground pixels nearest the foreground centroid, the IMIS reference's
    candidate set for the first click: the ``max(1, int(top_fraction * n))`` nearest of the ``n`` foreground
    pixels, distance ties kept in raster order (stable sort)."""
    m = _mask2d(mask)
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise ValueError("empty mask: no foreground pixel to click")
    xy = np.stack([xs, ys], axis=1)
    d = np.linalg.norm(xy - xy.mean(axis=0), axis=1)
    k = max(1, int(top_fraction * len(xy)))
    return xy[np.argsort(d, kind="stable")[:k]]


def centroid_click(mask: np.ndarray, rng: np.random.Generator, top_fraction: float = 0.5) -> Click:
    """A positive click drawn uniformly among the ``top_fraction`` of foreground pixels nearest the
    centroid, as IMIS-Bench's ``get_points_from_mask`` does (see :func:`centroid_candidates`).

    Unlike the reference, a mask of one pixel (where ``int(0.5 * 1) == 0``) gets that pixel as a positive
    click instead of a random background click; an empty mask raises ValueError.
    """
    cand = centroid_candidates(mask, top_fraction)
    x, y = cand[int(rng.integers(len(cand)))]
    return Click(int(x), int(y), True)


def center_click(mask: np.ndarray) -> Click:
    """A positive click at the foreground pixel farthest from the background (distance-transform maximum,
    image border counting as background); ties go to the first pixel in raster order. Deterministic.

    Raises ValueError for an empty mask.
    """
    m = _mask2d(mask)
    if not m.any():
        raise ValueError("empty mask: no foreground pixel to click")
    return Click(*_first_argmax(_edt(m)), True)


# ---------------------------------------------------------------------------------------------------------
# correction clicks
# ---------------------------------------------------------------------------------------------------------
def uniform_error_click(
    pred: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator,
    clicked: Iterable[Click | tuple[int, int]] = (),
) -> Click | None:
    """A click drawn uniformly over the error region ``pred XOR gt`` (IMIS-Net / SAM-Med2D), positive on a
    false negative. Unlike the references (which draw with replacement), already clicked pixels are
    excluded; ``None`` when no unclicked error pixel remains."""
    p, g = _pair(pred, gt)
    cand = (p ^ g) & ~_clicked_map(p.shape, clicked)
    if not cand.any():
        return None
    x, y = _uniform_pixel(cand, rng)
    return Click(x, y, bool(g[y, x]))


def ritm_click(
    pred: np.ndarray, gt: np.ndarray, clicked: Iterable[Click | tuple[int, int]] = ()
) -> Click | None:
    """The RITM / f-BRS simulator: the global distance-transform maximum over all error pixels.

    The false-negative and false-positive regions each get their own distance transform (padded, see the
    module notes); already clicked pixels are zeroed. The click is positive iff the FN maximum is strictly
    larger than the FP maximum (a tie goes to the FP side, as in RITM), at the first maximum in raster
    order. ``None`` when there is no unclicked error pixel.
    """
    p, g = _pair(pred, gt)
    free = ~_clicked_map(p.shape, clicked)
    fn_dt = _edt(g & ~p) * free
    fp_dt = _edt(p & ~g) * free
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    if fn_max <= 0.0 and fp_max <= 0.0:
        return None
    positive = fn_max > fp_max
    return Click(*_first_argmax(fn_dt if positive else fp_dt), positive)


def largest_component_click(
    pred: np.ndarray, gt: np.ndarray, clicked: Iterable[Click | tuple[int, int]] = ()
) -> Click | None:
    """The CVPR 2025 interactive-segmentation challenge simulator, in 2D: the centre (distance-transform
    maximum) of the largest 8-connected component of the error ``pred XOR gt``, positive iff the ground
    truth is foreground there.

    Ties between equally large components go to the one met first in raster order, ties within a component
    to the first pixel in raster order (the challenge breaks the latter at random; we stay deterministic).
    If every pixel of the largest component is already clicked, the next largest component is used;
    ``None`` when no unclicked error pixel remains.
    """
    p, g = _pair(pred, gt)
    err = p ^ g
    if not err.any():
        return None
    free = ~_clicked_map(p.shape, clicked)
    labels, n = ndimage.label(err, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    boxes = ndimage.find_objects(labels)
    # Component labels are assigned in raster order, so a stable sort keeps that order among equal sizes.
    for lab in np.argsort(-sizes, kind="stable") + 1:
        sl = boxes[lab - 1]  # the component's bounding box: the transform inside it is exact (padded)
        dt = _edt(labels[sl] == lab) * free[sl]
        if dt.max() > 0.0:
            x, y = _first_argmax(dt)
            x, y = x + sl[1].start, y + sl[0].start
            return Click(x, y, bool(g[y, x]))
    return None
