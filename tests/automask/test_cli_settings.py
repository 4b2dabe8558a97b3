"""`imis automask`'s options -> AutomaskSettings (parsing only, no model): the options left out take the
paper's defaults, or with --no-gt the segment-everything ones, and the help states those defaults."""

from __future__ import annotations

from imis.automask.commands import settings_from_args
from imis.automask.settings import NO_GT, AutomaskSettings
from imis.cli import build_parser


def _settings(*options: str) -> AutomaskSettings:
    return settings_from_args(build_parser().parse_args(["automask", "DATASET", *options]))


def test_no_options_are_the_paper_defaults():
    assert _settings() == AutomaskSettings()


def test_no_gt_takes_the_segment_everything_defaults():
    assert _settings("--no-gt") == AutomaskSettings.segment_everything()
    assert _settings("--no-gt").min_area == NO_GT["min_area"]


def test_given_options_win_in_both_modes():
    opts = (
        "--support",
        "0.3",
        "--nms-score",
        "iou",
        "--nms",
        "0.6",
        "--batch-size",
        "4",
        "--morphology",
        "0",
    )
    paper = _settings(*opts)
    assert (paper.support_thresh, paper.nms_score, paper.nms, paper.batch_size, paper.morphology) == (
        0.3,
        "iou",
        0.6,
        4,
        0,
    )
    assert paper.iou_thresh == AutomaskSettings().iou_thresh and paper.gt_qc
    no_gt = _settings("--no-gt", *opts)
    assert no_gt == AutomaskSettings.segment_everything(
        support_thresh=0.3, nms_score="iou", nms=0.6, batch_size=4, morphology=0
    )


def test_help_states_both_defaults_of_each_mode_dependent_option():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["automask"]
    text = " ".join(sub.format_help().split())
    for flag, field in (
        ("--iou-thresh", "iou_thresh"),
        ("--min-area", "min_area"),
        ("--support", "support_thresh"),
    ):
        paper = AutomaskSettings.__dataclass_fields__[field].default
        assert f"(default {paper}; --no-gt {NO_GT[field]})" in text, flag
