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
    spec = next_prompt(_mask(10, 20, 29, 59), None, PropagationRules(prompt="box", box_margin=0))
    assert spec.box.tolist() == [10, 20, 29, 59]
    assert spec.points is None and spec.mask_logits is None
    # the measured default grows it by 1 px on each side
    assert next_prompt(_mask(10, 20, 29, 59), None, PropagationRules()).box.tolist() == [9, 19, 30, 60]


def test_proportional_margin_grows_each_side_by_a_share_of_that_side_and_is_clamped():
    # 20 px wide, 40 px tall: 10 % is 2 px in x and 4 px in y
    rules = PropagationRules(prompt="box", box_margin=0, box_margin_frac=0.1)
    assert next_prompt(_mask(10, 20, 29, 59), None, rules).box.tolist() == [8, 16, 31, 63]
    clamped = PropagationRules(prompt="box", box_margin=0, box_margin_frac=0.1, box_margin_max=3)
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
    rules = PropagationRules(prompt="box+mask", box_from="seed", box_margin=0)
    spec = next_prompt(_mask(40, 40, 45, 45), None, rules, seed=_mask(10, 20, 29, 59))
    assert spec.box.tolist() == [10, 20, 29, 59]
    with pytest.raises(PromptError, match="box_from"):
        PropagationRules(box_from="elsewhere")


def test_thinned_out_stop_is_relative_to_the_seed_area():
    rules = PropagationRules(min_quality=0.0, min_seed_ratio=0.3)
    assert stop_reason(SliceRecord(1, 20, 0.9, 1.0, 1.0, seed_ratio=0.2), rules) == "thinned out"
    assert stop_reason(SliceRecord(1, 40, 0.9, 1.0, 1.0, seed_ratio=0.4), rules) is None


def test_negative_ring_clicks_lie_outside_the_mask_at_the_distance_and_around_it():
    mask = _mask(40, 30, 59, 49)
    spec = next_prompt(mask, None, PropagationRules(prompt="box", neg_clicks=4, neg_distance=3))
    assert spec.labels.tolist() == [0, 0, 0, 0]
    pts = spec.points.astype(int)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~mask)
    assert all(round(dist[y, x]) == 3 for x, y in pts)
    # one click on each side of the square: left, above, right, below the centre
    cx, cy = 49.5, 39.5
    quadrants = {(int(x > cx + 5) - int(x < cx - 5), int(y > cy + 5) - int(y < cy - 5)) for x, y in pts}
    assert len(quadrants) == 4


def test_interior_click_comes_first_then_the_negatives():
    spec = next_prompt(_mask(10, 20, 29, 59), None, PropagationRules(prompt="box+point", neg_clicks=2))
    assert spec.labels.tolist() == [1, 0, 0]


def test_negative_margin_shrinks_the_box_but_never_inverts_it():
    rules = PropagationRules(prompt="box", box_margin=-2)
    assert next_prompt(_mask(10, 20, 29, 59), None, rules).box.tolist() == [12, 22, 27, 57]
    assert next_prompt(
        _mask(10, 20, 12, 59), None, PropagationRules(prompt="box", box_margin=-5)
    ).box.tolist() == [
        11,
        25,
        11,
        54,
    ]


def test_rules_refuse_bad_negative_clicks():
    with pytest.raises(PromptError, match="neg_clicks"):
        PropagationRules(neg_clicks=-1)


def test_slice_record_signals():
    from imis.models.interactive import Prediction

    prev = _mask(10, 10, 19, 19)  # 100 px
    logits = np.full((100, 120), -5.0, np.float32)
    logits[10:20, 12:22] = 3.0  # 100 px above +1, shifted 2 px right
    logits[10:20, 22:27] = 0.5  # 50 px between -1 and +1 (in the mask, not above +1)
    pred = Prediction(mask=logits > 0, logits=logits, low_res_logits=torch.zeros(1, 1, 4, 4), quality=0.4)
    from imis.session.propagation import slice_record

    rec = slice_record(7, pred, prev, seed_area=300, seed_quality=0.8)
    assert rec.area == 150 and rec.growth == 1.5 and rec.seed_ratio == 0.5
    assert rec.stability == pytest.approx(100 / 150)
    assert rec.quality_ratio == pytest.approx(0.5)
    assert rec.iou_prev == pytest.approx(80 / 170) and rec.overlap == pytest.approx(80 / 150)
    assert slice_record(7, pred, prev, 300, None).quality_ratio == 1.0


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("stability", 0.5, "unstable"),
        ("quality_ratio", 0.5, "confidence fell"),
        ("iou_prev", 0.3, "drifted"),
        ("reach", 0.6, "too far"),
    ],
)
def test_model_signal_stops(field, value, reason):
    rules = PropagationRules(
        min_quality=0.0, min_stability=0.7, min_quality_ratio=0.7, min_iou_prev=0.5, max_reach=0.5
    )
    assert stop_reason(SliceRecord(1, 50, 0.9, 1.0, 1.0, 1.0, **{field: value}), rules) == reason
    assert stop_reason(SliceRecord(1, 50, 0.9, 1.0, 1.0, 1.0), rules) is None


def test_seed_reach_is_slice_step_over_the_seed_diameter_in_mm():
    from imis.session.propagation import seed_reach

    # a disc of area pi * 10^2 px at 0.5 mm pixels is 10 mm across; slices 2 mm apart: 0.2 per slice
    assert seed_reach(round(np.pi * 100), (2.0, 0.5, 0.5), 0) == pytest.approx(0.2, rel=1e-3)
    assert seed_reach(0, (1.0, 1.0, 1.0), 0) == float("inf")


def test_click_seeds_have_their_own_measured_stops():
    from imis.session.propagation import CLICK_SEED_RULES, default_rules

    assert default_rules("box") == PropagationRules()
    assert default_rules("click") is CLICK_SEED_RULES
    assert CLICK_SEED_RULES.prompt == PropagationRules().prompt and CLICK_SEED_RULES != PropagationRules()


def test_record_from_a_recorded_row_ignores_extra_keys_and_defaults_missing_measures():
    # a benchmark walk row: GT intersection and the packed mask beside the measures; an old row lacks
    # the model-signal measures (stability, quality ratio, previous IoU, reach)
    row = {"index": 4, "area": 50, "quality": 0.9, "growth": 1.0, "overlap": 1.0, "inter": 40, "mask": "x"}
    rec = SliceRecord.from_row(row)
    assert rec == SliceRecord(4, 50, 0.9, 1.0, 1.0)
    strict = PropagationRules(min_stability=0.9, min_quality_ratio=0.9, min_iou_prev=0.9)
    assert stop_reason(rec, strict) is None  # missing measures never stop a walk
    assert stop_reason(SliceRecord.from_row({**row, "stability": 0.5}), strict) == "unstable"
