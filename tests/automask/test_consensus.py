"""The click-consensus rule (support) and the `--no-gt` defaults chosen for it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SLICES, copy_dataset

from imis.automask.filters import support_score
from imis.automask.generate import Candidates
from imis.automask.pipeline import select_masks
from imis.automask.settings import NO_GT, AutomaskSettings
from imis.cli import main
from imis.errors import InputError


def _square(y0, x0, size, hw=(32, 32)):
    m = np.zeros(hw, dtype=bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def _case():
    """Clicks 0-2 inside one 16 x 16 square all give that square (an 'organ'); click 3, also inside,
    gives a thin strip (an edge mask); click 4 alone gives a small square elsewhere."""
    organ = _square(4, 4, 16)
    strip = np.zeros((32, 32), dtype=bool)
    strip[10:12, 2:30] = True
    masks = np.stack([organ, organ, organ, strip, _square(24, 24, 4)])
    cells = np.array([[6, 6], [10, 10], [16, 16], [10, 12], [25, 25]])
    return torch.from_numpy(masks), cells


def test_support_counts_the_clicks_inside_that_agree():
    masks, cells = _case()
    s = support_score(masks, cells, agree=0.7, pool=1)
    # organ: 4 clicks inside (0-3), 3 agree (0-2) -> 3 / 5; strip: clicks 1 and 3 inside, itself agrees
    np.testing.assert_allclose(s, [3 / 5, 3 / 5, 3 / 5, 1 / 3, 1 / 2])
    assert support_score(masks[:0], cells[:0]).shape == (0,)


def test_support_on_pooled_masks_keeps_the_order():
    masks, cells = _case()
    s = support_score(masks, cells)  # default 4 x 4 pooling
    assert s[0] == s[1] == s[2] > s[3]


def _candidates(masks, cells, iou):
    k = len(masks)
    return Candidates(
        logits=masks.float()[:, None].squeeze(1),
        masks=masks,
        iou=np.asarray(iou, dtype=np.float64),
        stability=np.ones(k),
        point=cells[:, ::-1].astype(np.float64),
        output=np.zeros(k, np.int64),
        decoded=k,
        cell=cells,
    )


def test_select_masks_filters_on_support_and_ranks_by_it():
    masks, cells = _case()
    cand = _candidates(masks, cells, [0.5, 0.6, 0.55, 0.9, 0.7])
    by_iou = select_masks(cand, AutomaskSettings(min_area=0.0, support_thresh=0.0))
    assert by_iou.iou[0] == 0.9  # the edge strip, the most confident by the IoU head, comes first
    chosen = select_masks(cand, AutomaskSettings(min_area=0.0, support_thresh=0.5, nms_score="support"))
    # the strip is dropped (1/3 < 0.5); of the three organ masks NMS keeps one: the best supported,
    # ties broken by predicted IoU (click 1); the lone small square (support 1/2) stays
    assert chosen.iou.tolist() == [0.6, 0.7]
    with pytest.raises(ValueError, match="click cells"):
        select_masks(
            Candidates(cand.logits, masks, cand.iou, cand.stability, cand.point, cand.output, 5),
            AutomaskSettings(support_thresh=0.5),
        )


def test_segment_everything_defaults_and_overrides():
    s = AutomaskSettings.segment_everything()
    assert (s.iou_thresh, s.stability_thresh, s.support_thresh) == (0.5, 0.6, 0.5)
    assert (s.min_area, s.nms_score, s.gt_qc) == (0.0005, "support", False)
    assert AutomaskSettings.segment_everything(iou_thresh=0.7, min_area=None).iou_thresh == 0.7
    assert AutomaskSettings().support_thresh == 0.0  # the paper's defaults keep no consensus rule
    with pytest.raises(InputError, match="--nms-score"):
        AutomaskSettings(nms_score="area")
    with pytest.raises(InputError, match="--support-thresh"):
        AutomaskSettings(support_thresh=1.5)


def test_no_gt_run_uses_the_segment_everything_defaults(btcv_dir, tmp_path, lite):
    root = copy_dataset(btcv_dir, tmp_path / "ds", SLICES[:1])
    fast = ["--points-per-side", "3", "--no-progress", "--threads", "1", "--precision", "fp32"]
    assert main(["automask", str(root), "--no-gt", *fast, "--stability", "0"]) == 0
    written = json.loads((root / "automask" / "settings.json").read_text())
    assert written["gt_qc"] is False and written["stability_thresh"] == 0.0  # given: kept
    for key in ("iou_thresh", "support_thresh", "nms_score", "min_area"):
        assert written[key] == NO_GT[key]
