"""Overlap metrics at native resolution (first version: Dice and IoU)."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P| + |G|); 1.0 when both are empty (nothing to find, nothing found)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    union = int(np.logical_or(p, g).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, g).sum()) / union
