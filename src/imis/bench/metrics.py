"""Segmentation metrics at native resolution: Dice, IoU, NSD at a tolerance in mm, and HD95 in mm.

Surface definition (used consistently by :func:`surface_distances`, :func:`hd95` and :func:`nsd`)
---------------------------------------------------------------------------------------------------
We use the **boundary-voxel** definition, not DeepMind's sub-voxel surface elements ("surfels"):

* The surface of a binary mask ``M`` is the set of foreground voxels with at least one *face* neighbour
  (4-connectivity in 2D, 6-connectivity in 3D) outside the mask, i.e. ``M & ~erode(M)`` with the
  cross-shaped structuring element. Voxels outside the array count as background, so a mask touching the
  image border has a surface there.
* Every surface voxel has the same weight (1.0); the ``*_weights`` arrays returned by
  :func:`surface_distances` exist so the percentile and NSD formulas read exactly as in DeepMind's
  area-weighted definitions (with unit weights).
* The distance of a surface voxel to the other surface is the Euclidean distance, in mm, between voxel
  centres, computed with ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)`` (``spacing`` in
  the array's axis order).

Why: it is exact and simple to reason about on analytic shapes (a square shifted by ``k`` pixels has
HD95 = ``k * spacing`` exactly), needs no marching-squares/cubes area tables, and is the default of
MONAI (``use_subvoxels=False``) and of most published HD95 code. It differs from DeepMind's
``surface-distance`` package (surfels on the half-voxel grid, weighted by their area): HD95 agrees on
axis-aligned shifts, and NSD differs by a few percent on small objects (our boundary voxels sit half a
voxel inside DeepMind's surfels, and unit weights over-count corners). Results are therefore labelled
"boundary-voxel NSD/HD95" and must not be mixed with DeepMind numbers in one table.

Percentile (HD95) semantics follow DeepMind's ``compute_robust_hausdorff(..., 95)``: for each direction,
sort the distances, accumulate the normalised weights and take the first distance whose cumulative weight
reaches 0.95 (an "inverted CDF" percentile, no interpolation); HD95 is the maximum of the two directed
values.

Empty masks (documented, deterministic, never NaN):

=====================  ====  ===  ===  =====
case                   dice  iou  nsd  hd95
=====================  ====  ===  ===  =====
both empty             1.0   1.0  1.0  0.0
exactly one empty      0.0   0.0  0.0  inf
=====================  ====  ===  ===  =====

HD95 = ``inf`` for one empty mask is deliberate: aggregation code decides whether to cap it (e.g. at the
image diagonal) or to report the count of infinite cases separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P| + |G|); 1.0 when both are empty (nothing to find, nothing found)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |P∪G|; 1.0 when both are empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    union = int(np.logical_or(p, g).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, g).sum()) / union


class SurfaceDistances(NamedTuple):
    """Directed surface distances (mm) and the weight of each surface element (1.0 per boundary voxel).

    ``pred_to_gt[i]`` is the distance from the i-th surface voxel of ``pred`` to the surface of ``gt``
    (weight ``pred_weights[i]``); ``gt_to_pred`` likewise. If the *other* mask is empty the distances are
    ``inf``; if a mask is empty its arrays are empty.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray
    pred_weights: np.ndarray
    gt_weights: np.ndarray


def _check(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple]:
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"surface metrics need a 2D or 3D mask, got {p.ndim}D")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != p.ndim:
        raise ValueError(f"spacing {sp} has {len(sp)} values for a {p.ndim}D mask")
    if not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be positive and finite, got {sp}")
    return p, g, sp


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask: foreground voxels with a face neighbour in the background.

    Outside the array counts as background (``border_value=0``), so a mask touching the edge of the image
    has a surface there. A single voxel is its own surface.
    """
    m = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def _union_box(p: np.ndarray, g: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of ``p | g`` grown by one voxel on every side (clipped to the array), or None when
    both are empty.

    Surfaces and surface distances computed on this crop equal those on the whole array: the added ring
    is background in both masks, so the erosion sees the same neighbours (outside the array counts as
    background either way), and every surface voxel of both masks lies inside the crop, so the Euclidean
    distance transform finds the same nearest voxel. On a 512 x 512 slice with an organ of a few thousand
    pixels this makes the metrics 10-50x cheaper.
    """
    u = p | g
    out = []
    for ax in range(u.ndim):
        hit = np.flatnonzero(u.any(axis=tuple(i for i in range(u.ndim) if i != ax)))
        if hit.size == 0:
            return None
        out.append(slice(max(0, int(hit[0]) - 1), min(u.shape[ax], int(hit[-1]) + 2)))
    return tuple(out)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Distances (mm) from each boundary voxel of one mask to the nearest boundary voxel of the other.

    ``spacing`` is the voxel size in mm in the array's axis order (e.g. ``(row, col)`` or
    ``(z, y, x)``). See the module docstring for the surface definition and empty cases.
    """
    p, g, sp = _check(pred, gt, spacing)
    box = _union_box(p, g)
    if box is not None:  # exact on the crop: see _union_box
        p, g = p[box], g[box]
    sp_surf, sg_surf = surface(p), surface(g)

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        n = int(src.sum())
        if n == 0:
            return np.zeros(0, np.float64)
        if not dst.any():
            return np.full(n, np.inf)
        # EDT gives, at every voxel, the distance to the nearest zero, i.e. to the nearest dst surface voxel.
        return ndimage.distance_transform_edt(~dst, sampling=sp)[src].astype(np.float64)

    d_pg, d_gp = directed(sp_surf, sg_surf), directed(sg_surf, sp_surf)
    return SurfaceDistances(d_pg, d_gp, np.ones_like(d_pg), np.ones_like(d_gp))


def _weighted_percentile(dist: np.ndarray, weights: np.ndarray, percent: float) -> float:
    """First sorted distance whose cumulative normalised weight reaches ``percent``/100 (no interpolation)."""
    order = np.argsort(dist, kind="stable")
    d, w = dist[order], weights[order]
    cum = np.cumsum(w) / w.sum()
    idx = int(np.searchsorted(cum, percent / 100.0, side="left"))
    return float(d[min(idx, len(d) - 1)])


def _hd95_from(sd: SurfaceDistances) -> float:
    n_p, n_g = sd.pred_to_gt.size, sd.gt_to_pred.size
    if n_p == 0 and n_g == 0:
        return 0.0
    if n_p == 0 or n_g == 0:
        return float("inf")
    return max(
        _weighted_percentile(sd.pred_to_gt, sd.pred_weights, 95.0),
        _weighted_percentile(sd.gt_to_pred, sd.gt_weights, 95.0),
    )


def _nsd_from(sd: SurfaceDistances, tolerance_mm: float) -> float:
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    n_p, n_g = sd.pred_to_gt.size, sd.gt_to_pred.size
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    within = (
        sd.pred_weights[sd.pred_to_gt <= tolerance_mm].sum()
        + sd.gt_weights[sd.gt_to_pred <= tolerance_mm].sum()
    )
    return float(within) / float(sd.pred_weights.sum() + sd.gt_weights.sum())


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance in mm: max of the two directed 95th percentiles.

    0.0 when both masks are empty; ``inf`` when exactly one is empty.
    """
    return _hd95_from(surface_distances(pred, gt, spacing))


def nsd(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), tolerance_mm: float = 2.0
) -> float:
    """Normalised surface Dice at ``tolerance_mm``.

    (w(pred surface within tol of gt surface) + w(gt surface within tol of pred surface))
    / (w(pred surface) + w(gt surface)), with "within" meaning distance <= tolerance. 1.0 when both masks
    are empty; 0.0 when exactly one is empty.
    """
    return _nsd_from(surface_distances(pred, gt, spacing), tolerance_mm)


@dataclass(frozen=True)
class MaskMetrics:
    """Per-mask metrics: Dice, IoU, NSD at the chosen tolerance (mm) and HD95 (mm, may be ``inf``)."""

    dice: float
    iou: float
    nsd: float
    hd95: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def mask_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), tolerance_mm: float = 2.0
) -> MaskMetrics:
    """Dice, IoU, NSD@``tolerance_mm`` and HD95 for one predicted mask against its ground truth.

    The surface distances are computed once and shared by NSD and HD95. Empty cases: both empty ->
    (1, 1, 1, 0.0); exactly one empty -> (0, 0, 0, inf).
    """
    p, g, sp = _check(pred, gt, spacing)
    sd = surface_distances(p, g, sp)
    return MaskMetrics(dice=dice(p, g), iou=iou(p, g), nsd=_nsd_from(sd, tolerance_mm), hd95=_hd95_from(sd))
