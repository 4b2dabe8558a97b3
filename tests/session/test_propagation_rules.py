"""How a propagated slice's prompt is built from its neighbour's mask (pure functions, no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imis.errors import PromptError
from imis.session.propagation import PropagationRules, SliceRecord, next_prompt, stop_reason


def _mask(x0: int, y0: int, x1: int, y1: int, shape=(100, 120)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def test_tight_box_is_the_mask_extent():
    spec = next_prompt(_mask(10, 20, 29, 59), None, PropagationRules(prompt="box", box_margin_frac=0.0))
    assert spec.box.tolist() == [10, 20, 29, 59]
    assert spec.points is None and spec.mask_logits is None


def test_proportional_margin_grows_each_side_by_a_share_of_that_side_and_is_clamped():
    # 20 px wide, 40 px tall: 10 % is 2 px in x and 4 px in y
    rules = PropagationRules(prompt="box", box_margin_frac=0.1)
    assert next_prompt(_mask(10, 20, 29, 59), None, rules).box.tolist() == [8, 16, 31, 63]
    clamped = PropagationRules(prompt="box", box_margin_frac=0.1, box_margin_max=3)
    assert next_prompt(_mask(10, 20, 29, 59), None, clamped).box.tolist() == [8, 17, 31, 62]
    # and never past the image
    assert next_prompt(_mask(0, 0, 119, 99), None, rules).box.tolist() == [0, 0, 119, 99]


def test_mask_and_point_parts():
    logits = torch.zeros(1, 1, 256, 256)
    spec = next_prompt(_mask(10, 20, 29, 59), logits, PropagationRules(prompt="box+mask+point"))
    assert spec.mask_logits is logits
    # the interior point of a 20 x 40 rectangle lies on its middle column band, inside the mask
    ((x, y),) = spec.points.tolist()
    assert 10 <= x <= 29 and 20 <= y <= 59 and spec.labels.tolist() == [1]


def test_rules_refuse_a_prompt_without_box_or_point():
    with pytest.raises(PromptError, match="include box or point"):
        PropagationRules(prompt="mask")


@pytest.mark.parametrize(
    ("rec", "reason"),
    [
        (SliceRecord(1, 0, 0.9, 0.0, 0.0), "empty"),
        (SliceRecord(1, 50, 0.1, 1.0, 1.0), "low confidence"),
        (SliceRecord(1, 50, 0.9, 9.0, 1.0), "size jump"),
        (SliceRecord(1, 50, 0.9, 1.0, 1.0), None),
    ],
)
def test_stop_reasons(rec, reason):
    assert stop_reason(rec, PropagationRules(min_quality=0.5, max_growth=2.0)) == reason


def test_box_from_seed_ignores_the_previous_mask():
    rules = PropagationRules(prompt="box+mask", box_from="seed")
    spec = next_prompt(_mask(40, 40, 45, 45), None, rules, seed=_mask(10, 20, 29, 59))
    assert spec.box.tolist() == [10, 20, 29, 59]
    with pytest.raises(PromptError, match="box_from"):
        PropagationRules(box_from="elsewhere")


def test_thinned_out_stop_is_relative_to_the_seed_area():
    rules = PropagationRules(min_quality=0.0, min_seed_ratio=0.3)
    assert stop_reason(SliceRecord(1, 20, 0.9, 1.0, 1.0, seed_ratio=0.2), rules) == "thinned out"
    assert stop_reason(SliceRecord(1, 40, 0.9, 1.0, 1.0, seed_ratio=0.4), rules) is None
