"""NMS and area filters against brute-force definitions."""

from __future__ import annotations

import numpy as np
import torch

from imis.automask.filters import area_fraction, box_nms, mask_boxes, mask_nms


def _greedy(iou: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        if all(iou[i, j] <= thresh for j in keep):
            keep.append(int(i))
    return keep


def _random_masks(rng, k=40, h=48, w=40):
    masks = np.zeros((k, h, w), dtype=bool)
    for i in range(k):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        masks[i, y0 : y0 + rng.integers(4, 20), x0 : x0 + rng.integers(4, 20)] = True
        masks[i] ^= rng.random((h, w)) < 0.02  # ragged edges, specks
    masks[5] = masks[3]  # exact duplicates and an empty mask
    masks[7] = False
    return masks


def test_mask_nms_equals_brute_force_greedy():
    rng = np.random.default_rng(0)
    for trial in range(5):
        m = _random_masks(rng)
        scores = rng.random(len(m)).round(2)  # ties happen: the earlier mask wins
        inter = np.einsum("ahw,bhw->ab", m.astype(float), m.astype(float))
        area = m.reshape(len(m), -1).sum(1)
        iou = inter / np.maximum(area[:, None] + area[None] - inter, 1)
        for thresh in (0.3, 0.7):
            got = mask_nms(torch.from_numpy(m), scores, thresh).tolist()
            assert got == _greedy(iou, scores, thresh), (trial, thresh)


def test_box_nms_equals_brute_force_greedy():
    rng = np.random.default_rng(1)
    m = _random_masks(rng)
    boxes = mask_boxes(torch.from_numpy(m)).astype(float)
    scores = rng.random(len(m))
    x0, y0, x1, y1 = boxes.T
    iw = np.clip(np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0), 0, None)
    ih = np.clip(np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0), 0, None)
    area = (x1 - x0) * (y1 - y0)
    iou = iw * ih / np.maximum(area[:, None] + area - iw * ih, 1e-12)
    assert box_nms(boxes, scores, 0.7).tolist() == _greedy(iou, scores, 0.7)


def test_boxes_and_areas():
    m = torch.zeros(2, 10, 20, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    assert mask_boxes(m).tolist() == [[3, 2, 8, 4], [0, 0, -1, -1]]
    np.testing.assert_allclose(area_fraction(m), [18 / 200, 0.0])
