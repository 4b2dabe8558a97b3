"""The interaction loop's prompt sequence: deterministic per seed, and the rules of each schedule."""

from __future__ import annotations

import numpy as np
import pytest

from imis.prompts import Click
from imis.train.config import DatasetSpec, TrainConfig
from imis.train.data import Target
from imis.train.interaction import MaskState, draw_first, next_prompt


def _mask() -> np.ndarray:
    m = np.zeros((64, 64), dtype=bool)
    m[10:40, 20:50] = True
    return m


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(datasets=(DatasetSpec("x"),), **kw)


def _sequence(seed: int, cfg: TrainConfig, steps: int = 4) -> list[tuple]:
    gt = _mask()
    st = MaskState(Target(gt, "liver", "gt"), 0, np.random.default_rng(seed), text_index=3)
    draw_first(st, cfg, text_ok=True)
    seq = []
    pred = np.zeros_like(gt)
    for step in range(steps + 1):
        st.pred = pred.copy()
        p = next_prompt(st, step, cfg, t_star=2, text_ok=True)
        seq.append((tuple(c for c in p.clicks), p.box, p.text_index, p.use_logits, p.multimask))
        st.logits = object()  # a previous prediction exists from now on
        pred[10:25, 20:50] = True  # the "model" finds the top half, so corrections go to the rest
    return seq


def test_same_seed_same_sequence_and_other_seed_differs():
    cfg = _cfg(interactions=4, corrections={"uniform": 1.0})
    a, b = _sequence(5, cfg), _sequence(5, cfg)
    assert a == b
    assert any(_sequence(s, cfg) != a for s in range(6, 12))


def test_plain_schedule_accumulates_clicks_and_keeps_first_prompt():
    cfg = _cfg(interactions=4, first_prompts={"box+text": 1.0}, corrections={"ritm": 1.0})
    seq = _sequence(0, cfg)
    first_clicks, box, text, use_logits, multimask = seq[0]
    assert first_clicks == () and box is not None and text == 3 and not use_logits and not multimask
    for k in range(1, 5):
        clicks, b, t, logits, _ = seq[k]
        assert len(clicks) == k  # one new correction click per step, earlier ones kept
        assert b == box and t == 3 and logits
        assert len({c.xy for c in clicks}) == k  # never the same pixel twice
    # the first correction of an under-segmentation is a positive click in the missed bottom half
    assert seq[1][0][0].positive and seq[1][0][0].y >= 25


def test_box_jitter_within_bound():
    cfg = _cfg(first_prompts={"box": 1.0}, box_jitter=5)
    for seed in range(20):
        box = _sequence(seed, cfg, steps=0)[0][1]
        assert abs(box[0] - 20) <= 5 and abs(box[1] - 10) <= 5
        assert abs(box[2] - 49) <= 5 and abs(box[3] - 39) <= 5


def test_lone_click_is_multimask_and_first_click_in_mask():
    cfg = _cfg(first_prompts={"click": 1.0}, first_clicks={"center": 1.0})
    clicks, box, text, logits, multimask = _sequence(0, cfg, steps=0)[0]
    assert multimask and box is None and text is None and not logits
    assert clicks == (Click(34, 24, True),) or _mask()[clicks[0].y, clicks[0].x]


def test_single_click_output_gives_one_mask_for_a_lone_click():
    cfg = _cfg(first_prompts={"click": 1.0}, first_clicks={"center": 1.0}, click_output="single")
    assert not any(step[4] for step in _sequence(0, cfg))


def test_reference_schedule_rules():
    cfg = _cfg(interactions=4, schedule="reference", first_prompts={"click": 1.0}, corrections={"ritm": 1.0})
    seq = _sequence(1, cfg)
    for k in (2, 4):  # t* and the last step: text + previous logits, no click
        clicks, box, text, logits, _ = seq[k]
        assert clicks == () and box is None and text == 3 and logits
    for k in (1, 3):  # otherwise only the newest click, with the logits or (p = 0.4) the text
        clicks, box, text, logits, _ = seq[k]
        assert len(clicks) == 1 and box is None
        assert (logits and text is None) or (text == 3 and not logits)


def test_imask_targets_never_get_text():
    cfg = _cfg(first_prompts={"text": 1.0, "box": 0.0})
    st = MaskState(Target(_mask(), None, "imask"), 0, np.random.default_rng(0))
    draw_first(st, cfg, text_ok=True)
    assert "text" not in st.first


@pytest.mark.parametrize("schedule", ["plain", "reference"])
def test_no_error_left_adds_no_click(schedule):
    cfg = _cfg(interactions=2, schedule=schedule, first_prompts={"click": 1.0}, corrections={"ritm": 1.0})
    gt = _mask()
    st = MaskState(Target(gt, "liver", "gt"), 0, np.random.default_rng(0))
    draw_first(st, cfg, text_ok=False)
    next_prompt(st, 0, cfg, 2, False)
    st.pred = gt.copy()
    st.logits = object()
    p = next_prompt(st, 1, cfg, 2, False)
    assert len(st.clicks) == 1
    assert len(p.clicks) <= 1


def test_paper_schedule_rules():
    """imis bench --protocol imis-paper's loop: one first prompt alone, then only the newest click plus
    the previous logits; every step decoded with the multimask outputs."""
    cfg = _cfg(interactions=4, schedule="paper")
    firsts = set()
    for seed in range(6):
        seq = _sequence(seed, cfg)
        clicks, box, text, logits, multimask = seq[0]
        assert len(clicks) + (box is not None) + (text is not None) == 1 and not logits and multimask
        firsts.add("click" if clicks else "box" if box else "text")
        for clicks, box, text, logits, multimask in seq[1:]:
            assert len(clicks) == 1 and box is None and text is None and logits and multimask
        assert len({c for step in seq[1:] for c in step[0]}) == 4  # a new click every step, no history
    assert firsts == {"click", "box", "text"}


def test_mixed_schedule_draws_per_mask_and_paper_masks_get_the_benchmarks_prompts():
    cfg = _cfg(schedule={"plain": 1.0, "paper": 1.0}, first_prompts={"click+box": 1.0}, box_jitter=5)
    drawn = {}
    for seed in range(40):
        st = MaskState(Target(_mask(), "liver", "gt"), 0, np.random.default_rng(seed), text_index=3)
        draw_first(st, cfg, text_ok=True)
        drawn.setdefault(st.schedule, []).append(st)
    assert set(drawn) == {"plain", "paper"}
    assert all(st.first == "click+box" for st in drawn["plain"])  # the configuration's prompts
    for st in drawn["paper"]:  # the benchmark's: one of click, tight box, text; uniform corrections
        assert st.first in ("click", "box", "text") and st.corrector == "uniform"
        assert st.box in (None, (20, 10, 49, 39))
    assert {st.first for st in drawn["paper"]} == {"click", "box", "text"}
