"""The box-offset and click-position protocols: a cheap stand-in model on two btcv-demo images, and
LiteMedSAM's real weights on one."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from imis.bench.commands import register_bench_commands
from imis.bench.config import BenchConfig
from imis.bench.protocols import (
    BOX_OFFSETS,
    CLICK_BIN_EDGES,
    CLICK_BINS,
    PROTOCOLS,
    click_bin,
    click_distance,
)
from imis.bench.records import read_rows
from imis.bench.report import write_report
from imis.bench.runner import run_bench
from imis.errors import ImisError
from imis.models.interactive import Prediction


class Fill:
    """Stand-in: the mask is the box, or a 5-px disc around the first positive click."""

    def __init__(self, prompt_types=("box", "point")) -> None:
        self.prompt_types = frozenset(prompt_types)
        self.calls = 0

    def encode(self, image):
        return image.shape[:2]

    def decode(self, emb, spec):
        self.calls += 1
        mask = np.zeros(emb, dtype=bool)
        if spec.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in spec.box)
            mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
        else:
            yy, xx = np.mgrid[: emb[0], : emb[1]]
            x, y = spec.points[0]
            mask = (xx - x) ** 2 + (yy - y) ** 2 <= 25
        return Prediction(mask, mask.astype(np.float32), None, float("nan"))


def _config(btcv_dir, loader, protocol, n=2) -> BenchConfig:
    return BenchConfig(
        models=("fill",), data=btcv_dir, seed=3, protocol=protocol, limit_images=n, model_loader=loader
    )


def test_protocols_are_registered():
    assert {"box-offset", "click-position"} <= set(PROTOCOLS)
    parser = argparse.ArgumentParser(prog="imis")
    register_bench_commands(parser.add_subparsers(dest="command"))
    for p in ("box-offset", "click-position"):
        args = parser.parse_args(["bench", "--models", "a", "--data", "d", "--protocol", p, "-o", "x"])
        assert args.protocol == p


def test_click_bins():
    assert CLICK_BINS == ("[0,0.25)", "[0.25,0.5)", "[0.5,0.75)", "[0.75,1)", ">=1")
    assert [click_bin(d) for d in (0.0, 0.2499, 0.25, 0.6, 0.9999, 1.0, 7.0)] == [
        "[0,0.25)",
        "[0,0.25)",
        "[0.25,0.5)",
        "[0.5,0.75)",
        "[0.75,1)",
        ">=1",
        ">=1",
    ]
    disc = np.zeros((41, 41), dtype=bool)
    yy, xx = np.mgrid[:41, :41]
    disc[(xx - 20) ** 2 + (yy - 20) ** 2 <= 100] = True
    assert click_distance((20, 20), disc) == 0.0
    r_eq = math.sqrt(disc.sum() / math.pi)
    assert click_distance((20, 30), disc) == pytest.approx(10 / r_eq)
    with pytest.raises(ImisError):
        click_distance((0, 0), np.zeros((4, 4), dtype=bool))


def _check_bins(rows):
    for r in rows:
        d = r["click_distance"]
        assert r["kind"] == f"click@{r['click_bin']}"
        i = CLICK_BINS.index(r["click_bin"])
        assert CLICK_BIN_EDGES[i] <= d and (i == len(CLICK_BINS) - 1 or d < CLICK_BIN_EDGES[i + 1])


def test_stand_in_both_protocols_resume_and_report(btcv_dir, tmp_path):
    m = Fill()
    out = tmp_path / "offset"
    summary = run_bench(_config(btcv_dir, lambda n: m, "box-offset"), out, progress=False)
    rows = read_rows(out / "predictions.jsonl")
    targets = {(r["image"], r["target"]) for r in rows}
    assert targets and all(r["status"] == "ok" for r in rows)
    assert len(rows) == 4 * len(targets) and m.calls == len(rows)
    assert {r["kind"] for r in rows} == {f"box+{o}" for o in BOX_OFFSETS}
    res = summary["results"]["fill"]
    assert res["box+0"]["dice_mask"] > res["box+20"]["dice_mask"]  # a box mask: looser box, lower Dice
    board = (out / "leaderboard.md").read_text()
    assert "box+0 | box+5 | box+10 | box+20" in board
    calls = m.calls
    again = run_bench(_config(btcv_dir, lambda n: m, "box-offset"), out, progress=False)
    assert m.calls == calls and again["results"] == summary["results"]  # resumed: nothing recomputed

    out = tmp_path / "position"
    summary = run_bench(_config(btcv_dir, lambda n: m, "click-position"), out, progress=False)
    rows = read_rows(out / "predictions.jsonl")
    assert {(r["image"], r["target"]) for r in rows} == targets and len(rows) == len(targets)
    assert all(r["status"] == "ok" and r["click"] == "uniform" for r in rows)
    _check_bins(rows)
    kinds = {r["kind"] for r in rows}
    assert set(summary["results"]["fill"]) == kinds
    board = (out / "leaderboard.md").read_text()
    assert all(k in board for k in kinds)
    assert write_report(out)["results"] == summary["results"]


def test_models_without_the_prompt_type_are_skipped(btcv_dir, tmp_path):
    summary = run_bench(
        _config(btcv_dir, lambda n: Fill(("point",)), "box-offset", n=1), tmp_path / "a", progress=False
    )
    rows = read_rows(tmp_path / "a" / "predictions.jsonl")
    assert rows and all(r["status"] == "skipped" and "box" in r["reason"] for r in rows)
    assert not summary["results"] and any("box+20" in k for k in summary["skipped"])
    summary = run_bench(
        _config(btcv_dir, lambda n: Fill(("box",)), "click-position", n=1), tmp_path / "b", progress=False
    )
    rows = read_rows(tmp_path / "b" / "predictions.jsonl")
    assert rows and all(r["status"] == "skipped" and "point" in r["reason"] for r in rows)
    _check_bins(rows)  # the prompt's distance is recorded even when not scored
    assert not summary["results"]


def test_litemedsam_box_offset_and_click_position(btcv_dir, litemedsam, tmp_path):
    out = tmp_path / "offset"
    summary = run_bench(_config(btcv_dir, lambda n: litemedsam, "box-offset", n=1), out, progress=False)
    rows = read_rows(out / "predictions.jsonl")
    targets = {(r["image"], r["target"]) for r in rows}
    for t in targets:
        kinds = sorted(r["kind"] for r in rows if (r["image"], r["target"]) == t and r["status"] == "ok")
        assert kinds == sorted(f"box+{o}" for o in BOX_OFFSETS)
    res = summary["results"]["fill"]
    d = {o: res[f"box+{o}"]["dice_mask"] for o in BOX_OFFSETS}
    print("LiteMedSAM box-offset Dice (mask level):", d)
    assert d[20] < d[0]

    out = tmp_path / "position"
    summary = run_bench(_config(btcv_dir, lambda n: litemedsam, "click-position", n=1), out, progress=False)
    rows = read_rows(out / "predictions.jsonl")
    assert {(r["image"], r["target"]) for r in rows} == targets
    assert all(r["status"] == "ok" for r in rows)
    _check_bins(rows)
    print(
        "LiteMedSAM click-position Dice:", {k: v["dice_mask"] for k, v in summary["results"]["fill"].items()}
    )
