"""The loss terms against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from imis.train.loss import dice_loss, focal_loss, iou_target, mask_loss


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


LOGITS = torch.tensor([[[2.0, -1.0], [0.0, -3.0]]])
TARGET = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])


def test_focal_matches_hand_computation():
    expected = 0.0
    for x, t in [(2.0, 1), (-1.0, 1), (0.0, 0), (-3.0, 0)]:
        p = _sig(x)
        p_t = p if t else 1 - p
        a_t = 0.25 if t else 0.75
        expected += -a_t * (1 - p_t) ** 2 * math.log(p_t)
    assert focal_loss(LOGITS, TARGET).item() == pytest.approx(expected / 4, rel=1e-5)


def test_dice_matches_hand_computation():
    p = [_sig(2.0), _sig(-1.0), _sig(0.0), _sig(-3.0)]
    inter = p[0] + p[1]
    expected = 1 - (2 * inter + 1) / (sum(p) + 2 + 1)
    assert dice_loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_iou_target_and_total():
    # prediction (logit > 0): only pixel (0, 0); target: the top row -> IoU 1/2
    assert iou_target(LOGITS, TARGET).item() == pytest.approx(0.5)
    both_empty = iou_target(torch.full((1, 2, 2), -5.0), torch.zeros(1, 2, 2))
    assert both_empty.item() == 1.0
    terms = mask_loss(LOGITS, torch.tensor([0.8]), TARGET)
    assert terms.iou.item() == pytest.approx((0.8 - 0.5) ** 2)
    expected = 20 * terms.focal + terms.dice + terms.iou
    assert torch.allclose(terms.total, expected)


def test_terms_are_per_mask():
    logits = torch.cat([LOGITS, -LOGITS])
    target = torch.cat([TARGET, TARGET])
    terms = mask_loss(logits, torch.tensor([0.5, 0.5]), target)
    assert terms.total.shape == (2,)
    assert terms.total[0] < terms.total[1]  # the second mask is the wrong way round
    assert terms.focal[0].item() == pytest.approx(focal_loss(LOGITS, TARGET).item())
