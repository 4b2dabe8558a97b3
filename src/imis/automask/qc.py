"""Ground-truth quality control (paper §3.2), morphological clean-up and the non-overlapping id map.

Rules, in this order:

1. A GT label with several connected regions (8-connectivity) replaces the generated masks it covers:
   every generated mask with at least half of its pixels inside the label is dropped, and the label
   (all its regions, one id) is added.
2. For each single-connected GT label: when a generated mask's bounding box overlaps the GT region's
   box by more than ``box_overlap`` (box IoU, inclusive pixel boxes) the generated mask is kept (it
   stands for the region; the most confident one is recorded); otherwise the generated masks with at
   least half of their pixels inside the region are dropped and the GT region is added.
3. Each generated mask is opened then closed (scipy's 3x3 cross, ``radius`` iterations): specks off,
   small holes filled. GT regions are kept as annotated.
4. Id map: masks below ``min_area`` of the image are dropped; the rest are painted larger first,
   smaller on top (equal areas: the earlier mask first); a mask left with fewer than ``min_area``
   visible pixels is taken out and the map repainted; ids are 1..K in painting order, 0 = no mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["Region", "apply_gt_qc", "clean_regions", "paint_id_map"]

INSIDE = 0.5  # fraction of a generated mask inside a GT region for the GT to replace it
EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(eq=False)
class Region:
    """One mask of the id map and where it came from (provenance)."""

    mask: np.ndarray  # bool (H, W)
    source: str  # "model" or "gt"
    info: dict = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def box_iou_inclusive(a, b) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area - inter)


def _drop_inside(regions: list[Region], gt: np.ndarray) -> list[Region]:
    out = []
    for r in regions:
        a = r.area
        if r.source == "model" and a and (r.mask & gt).sum() >= INSIDE * a:
            continue
        out.append(r)
    return out


def apply_gt_qc(regions: list[Region], gt: np.ndarray, names: list[str], box_overlap: float) -> list[Region]:
    """Rules 1 and 2 on generated ``regions`` with GT masks ``gt`` (C, H, W) named ``names``."""
    singles = []
    for c in range(gt.shape[0]):
        if not gt[c].any():
            continue
        _, n = ndimage.label(gt[c], structure=EIGHT)
        if n > 1:
            regions = _drop_inside(regions, gt[c])
            regions.append(Region(gt[c].copy(), "gt", {"gt_label": names[c], "rule": "multi-region"}))
        else:
            singles.append(c)
    for c in singles:
        gbox = _box(gt[c])
        best = None
        for r in regions:
            if r.source != "model":
                continue
            rbox = _box(r.mask)
            if rbox is not None and box_iou_inclusive(gbox, rbox) > box_overlap:
                best = r
                break  # regions are in decreasing confidence
        if best is not None:
            best.info.setdefault("stands_for", []).append(names[c])
            continue
        regions = _drop_inside(regions, gt[c])
        regions.append(Region(gt[c].copy(), "gt", {"gt_label": names[c], "rule": "box-mismatch"}))
    return regions


def clean_regions(regions: list[Region], radius: int) -> list[Region]:
    """Rule 3: opening then closing of each generated mask (within its box, with a margin)."""
    if radius < 1:
        return regions
    h, w = regions[0].mask.shape if regions else (0, 0)
    out = []
    for r in regions:
        box = _box(r.mask)
        if r.source != "model" or box is None:
            out.append(r)
            continue
        m = 2 * radius + 1
        x0, y0, x1, y1 = (
            max(box[0] - m, 0),
            max(box[1] - m, 0),
            min(box[2] + m, w - 1),
            min(box[3] + m, h - 1),
        )
        crop = r.mask[y0 : y1 + 1, x0 : x1 + 1]
        crop = ndimage.binary_closing(ndimage.binary_opening(crop, iterations=radius), iterations=radius)
        mask = np.zeros_like(r.mask)
        mask[y0 : y1 + 1, x0 : x1 + 1] = crop
        out.append(Region(mask, r.source, dict(r.info)))
    return out


def paint_id_map(
    regions: list[Region], min_pixels: int, shape: tuple[int, int]
) -> tuple[np.ndarray, list[Region]]:
    """Rule 4: -> (int64 (H, W) id map, the regions of ids 1..K in order)."""
    live = [r for r in regions if r.area >= max(min_pixels, 1)]
    live = [live[i] for i in np.argsort([-r.area for r in live], kind="stable")]
    while True:
        ids = np.zeros(shape, dtype=np.int64)
        for k, r in enumerate(live, start=1):
            ids[r.mask] = k
        visible = np.bincount(ids.ravel(), minlength=len(live) + 1)[1:]
        small = visible < max(min_pixels, 1)
        if not small.any():
            return ids, live
        live = [r for r, s in zip(live, small, strict=True) if not s]
