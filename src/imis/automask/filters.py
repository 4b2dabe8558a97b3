"""Filtering of candidate masks: area limits and non-maximum suppression (mask IoU or box IoU).

Greedy NMS in order of decreasing predicted IoU (ties: the earlier click first): a mask is dropped
when its IoU with an already kept mask exceeds the threshold. Mask NMS compares only the pairs that
can exceed it: IoU <= min(area) / max(area), and masks whose boxes do not meet have IoU 0; the
intersection of the others is counted inside the kept mask's box. That gives the exact greedy result
without the (K x K x pixels) product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["area_fraction", "box_nms", "mask_boxes", "mask_nms", "nms_order", "support_score"]


def mask_boxes(masks: torch.Tensor) -> np.ndarray:
    """(K, H, W) bool -> (K, 4) int x0, y0, x1, y1 inclusive ((0, 0, -1, -1) for an empty mask)."""
    k = masks.shape[0]
    out = np.zeros((k, 4), dtype=np.int64)
    out[:, 2:] = -1
    if k == 0:
        return out
    rows = masks.any(dim=2).numpy()
    cols = masks.any(dim=1).numpy()
    for i in range(k):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys):
            out[i] = (xs[0], ys[0], xs[-1], ys[-1])
    return out


def area_fraction(masks: torch.Tensor) -> np.ndarray:
    """Fraction of the frame each (K, H, W) mask covers."""
    if masks.shape[0] == 0:
        return np.zeros(0)
    return masks.flatten(1).sum(1).numpy() / float(masks.shape[1] * masks.shape[2])


def nms_order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score; equal scores keep their input order (deterministic)."""
    return np.argsort(-np.asarray(scores), kind="stable")


def box_iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with (K, 4) boxes, areas as (x1 - x0) * (y1 - y0) (torchvision's rule)."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _greedy_nms(order: np.ndarray, suppressed: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """Greedy NMS over candidates taken in ``order``: the first one still alive is kept, and
    ``suppressed(i, rest)`` tells which of the alive positions after it (``rest``, positions into
    ``order``, never empty) it drops. The one loop that box and mask NMS share; only the overlap test
    differs. Returns the kept candidate indices in order."""
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        rest = np.arange(i + 1, len(order))
        rest = rest[alive[rest]]
        if len(rest):
            alive[rest[suppressed(i, rest)]] = False
    return np.asarray(keep, dtype=np.int64)


def box_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS on box IoU; returns kept indices in score order."""
    order = nms_order(scores)
    b = boxes[order].astype(np.float64)
    return _greedy_nms(order, lambda i, rest: box_iou_one(b[i], b[rest]) > thresh)


def mask_nms(masks: torch.Tensor, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS on mask IoU of (K, H, W) bool masks; returns kept indices in score order."""
    order = nms_order(scores)
    m = masks[torch.as_tensor(order, dtype=torch.long)] if len(order) else masks
    areas = m.flatten(1).sum(1).numpy().astype(np.float64)
    boxes = mask_boxes(m)

    def suppressed(i: int, rest: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rest), dtype=bool)
        if areas[i] == 0:
            return out
        # only pairs that can exceed the threshold: IoU <= min/max area, and 0 where boxes do not meet
        lo, hi = np.minimum(areas[i], areas[rest]), np.maximum(areas[i], areas[rest])
        x0, y0, x1, y1 = boxes[i]
        meets = (
            (boxes[rest, 0] <= x1) & (boxes[rest, 2] >= x0) & (boxes[rest, 1] <= y1) & (boxes[rest, 3] >= y0)
        )
        can = np.flatnonzero((lo > thresh * hi) & meets)
        if not len(can):
            return out
        window = m[:, y0 : y1 + 1, x0 : x1 + 1]
        others = rest[can]
        inter = (window[torch.as_tensor(others)] & window[i]).flatten(1).sum(1).numpy().astype(np.float64)
        out[can] = inter / (areas[i] + areas[others] - inter) > thresh
        return out

    return _greedy_nms(order, suppressed)


def support_score(masks: torch.Tensor, cells: np.ndarray, agree: float = 0.7, pool: int = 4) -> np.ndarray:
    """Click consensus of each (K, H, W) bool mask: among the other candidates' clicks that fall inside
    mask i, the fraction whose own mask matches mask i (IoU >= ``agree``), counted as
    agreeing / (inside + 1) so that a mask backed by its own click alone scores 0.5.

    Why: a model trained for clicks on objects (imis-lite) gives the same organ mask from any click
    inside that organ, while masks of clicks on edges or background change with the click; its IoU
    head does not separate the two on a grid (btcv-demo train: the best candidate of an organ often
    has a predicted IoU of 0.3-0.6). ``cells`` (K, 2) are the clicks' (row, col) in the masks' frame.
    The IoUs are taken on masks average-pooled by ``pool`` (K x K pairs at 1/16 of the pixels).
    """
    k = masks.shape[0]
    if k == 0:
        return np.zeros(0)
    small = torch.nn.functional.avg_pool2d(masks[:, None].float(), pool, ceil_mode=True)[:, 0]
    s = (small.flatten(1) >= 0.5).float()
    inter = s @ s.t()
    area = s.sum(1)
    pair = (inter / (area[:, None] + area[None] - inter).clamp(min=1)).numpy()
    rows = np.clip(cells[:, 0], 0, masks.shape[1] - 1)
    cols = np.clip(cells[:, 1], 0, masks.shape[2] - 1)
    inside = masks[:, rows, cols].numpy()  # (K, K): click j inside mask i
    return (inside & (pair >= agree)).sum(1) / (inside.sum(1) + 1.0)
