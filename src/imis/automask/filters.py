"""Filtering of candidate masks: area limits and non-maximum suppression (mask IoU or box IoU).

Greedy NMS in order of decreasing predicted IoU (ties: the earlier click first): a mask is dropped
when its IoU with an already kept mask exceeds the threshold. Mask NMS compares only the pairs that
can exceed it: IoU <= min(area) / max(area), and masks whose boxes do not meet have IoU 0; the
intersection of the others is counted inside the kept mask's box. That gives the exact greedy result
without the (K x K x pixels) product.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["area_fraction", "mask_boxes", "nms_order", "box_nms", "mask_nms"]


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


def box_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS on box IoU; returns kept indices in score order."""
    order = nms_order(scores)
    alive = np.ones(len(order), dtype=bool)
    keep = []
    b = boxes[order].astype(np.float64)
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        rest = np.arange(i + 1, len(order))
        rest = rest[alive[rest]]
        if len(rest):
            alive[rest[box_iou_one(b[i], b[rest]) > thresh]] = False
    return np.asarray(keep, dtype=np.int64)


def mask_nms(masks: torch.Tensor, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS on mask IoU of (K, H, W) bool masks; returns kept indices in score order."""
    order = nms_order(scores)
    m = masks[torch.as_tensor(order, dtype=torch.long)] if len(order) else masks
    areas = m.flatten(1).sum(1).numpy().astype(np.float64)
    boxes = mask_boxes(m)
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        rest = np.arange(i + 1, len(order))
        rest = rest[alive[rest]]
        if not len(rest) or areas[i] == 0:
            continue
        lo, hi = np.minimum(areas[i], areas[rest]), np.maximum(areas[i], areas[rest])
        x0, y0, x1, y1 = boxes[i]
        meets = (
            (boxes[rest, 0] <= x1) & (boxes[rest, 2] >= x0) & (boxes[rest, 1] <= y1) & (boxes[rest, 3] >= y0)
        )
        rest = rest[(lo > thresh * hi) & meets]
        if not len(rest):
            continue
        window = m[:, y0 : y1 + 1, x0 : x1 + 1]
        inter = (window[torch.as_tensor(rest)] & window[i]).flatten(1).sum(1).numpy().astype(np.float64)
        iou = inter / (areas[i] + areas[rest] - inter)
        alive[rest[iou > thresh]] = False
    return np.asarray(keep, dtype=np.int64)
