"""The benchmark runner and reports on real btcv-demo images with LiteMedSAM's real weights.

The LiteMedSAM runs use the first two test images (17 masks) and are shared between tests where possible;
a cheap stand-in model (BoxFill) is the second model of a run and covers failures and bad labels.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imis.bench.commands import _parse_data, register_bench_commands
from imis.bench.config import BenchConfig
from imis.bench.records import read_rows
from imis.bench.report import format_table, merge_runs, write_report
from imis.bench.runner import run_bench
from imis.errors import ImisError
from imis.models.interactive import Prediction


class Recorder:
    """Wraps a model under another name and records every prompt it receives."""

    def __init__(self, model, name: str) -> None:
        self.model, self.name, self.prompt_types = model, name, model.prompt_types
        self.seen: list[tuple] = []

    def encode(self, image):
        return self.model.encode(image)

    def decode(self, emb, spec):
        self.seen.append(_spec_key(spec))
        return self.model.decode(emb, spec)


class BoxFill:
    """A cheap stand-in: the mask is the box, or 5-px discs around the positive clicks."""

    prompt_types = frozenset({"box", "point"})

    def __init__(self, name: str = "boxfill", fail_on_call: int | None = None) -> None:
        self.name, self.fail_on_call, self.calls = name, fail_on_call, 0
        self.seen: list[tuple] = []

    def encode(self, image):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated failure")
        return image.shape[:2]

    def decode(self, emb, spec):
        self.seen.append(_spec_key(spec))
        mask = np.zeros(emb, dtype=bool)
        if spec.box is not None:
            x0, y0, x1, y1 = (int(v) for v in spec.box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        elif spec.points is not None:
            yy, xx = np.mgrid[: emb[0], : emb[1]]
            for (x, y), lab in zip(spec.points, spec.labels, strict=True):
                disc = (xx - x) ** 2 + (yy - y) ** 2 <= 25
                mask = mask | disc if lab else mask & ~disc
        return Prediction(mask, mask.astype(np.float32), None, float("nan"))


def _spec_key(spec) -> tuple:
    pts = None if spec.points is None else spec.points.tolist()
    box = None if spec.box is None else spec.box.tolist()
    return (pts, box, spec.text)


def _config(btcv_dir, models, loader, **kw) -> BenchConfig:
    kw.setdefault("limit_images", 2)
    return BenchConfig(models=tuple(models), data=btcv_dir, seed=7, model_loader=loader, **kw)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, btcv_dir, litemedsam):
    models = {"lite": Recorder(litemedsam, "lite"), "boxfill": BoxFill()}
    out = tmp_path_factory.mktemp("single")
    summary = run_bench(_config(btcv_dir, models, models.__getitem__), out, progress=False)
    return out, summary, models


def _metrics(rows):
    return {
        (r["model"], r["image"], r["target"], r["kind"], r["k"]): (
            r.get("dice"),
            r.get("iou"),
            r.get("nsd"),
            r.get("hd95"),
        )
        for r in rows
    }


def test_single_protocol_litemedsam(single_run):
    out, summary, _ = single_run
    res = summary["results"]["lite"]
    assert 0.6 < res["box"]["dice_mask"] < 0.95
    assert res["click"]["dice_mask"] < 0.05  # LiteMedSAM ignores clicks
    assert res["box"]["n_masks"] == 17 and res["box"]["n_images"] == 2
    assert "text" not in res and "box+text" not in res
    rows = read_rows(out / "predictions.jsonl")
    text = [r for r in rows if r["model"] == "lite" and r["kind"] == "text"]
    assert len(text) == 17 and all(r["status"] == "skipped" and "text" in r["reason"] for r in text)
    assert all(r.get("dice") is None for r in text)
    clicks = [r for r in rows if r["model"] == "lite" and r["kind"] == "click"]
    assert all(r["click"] == "center" and r["status"] == "ok" for r in clicks)
    assert all({"group", "seconds", "iou", "nsd", "hd95"} <= set(r) for r in clicks)
    for name in (
        "summary.json",
        "results.csv",
        "leaderboard.md",
        "figures/dice_by_prompt.png",
        "prompts.json",
    ):
        assert (out / name).is_file(), name
    board = (out / "leaderboard.md").read_text()
    assert "| lite |" in board and "box" in board


def test_two_models_receive_the_same_prompts(single_run):
    _, _, models = single_run
    lite, box = models["lite"].seen, models["boxfill"].seen
    assert lite and lite == box  # same kinds supported: identical prompt sequences


def test_same_seed_same_prompt_bytes(single_run, btcv_dir, tmp_path):
    out, _, _ = single_run
    m = BoxFill()
    run_bench(_config(btcv_dir, ["boxfill"], lambda n: m), tmp_path, progress=False)
    assert (tmp_path / "prompts.json").read_bytes() == (out / "prompts.json").read_bytes()
    # another seed: other prompts, and the run directory refuses to mix them
    with pytest.raises(ImisError, match="another run"):
        cfg = _config(btcv_dir, ["boxfill"], lambda n: m)
        cfg.seed = 8
        run_bench(cfg, tmp_path, progress=False)


def test_resume_gives_identical_summary(single_run, btcv_dir, litemedsam, tmp_path):
    out, summary, _ = single_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    pred = run / "predictions.jsonl"
    lines = pred.read_text().splitlines(keepends=True)
    lite_ok = [i for i, line in enumerate(lines) if '"model": "lite"' in line and '"status": "ok"' in line]
    keep = lines[: lite_ok[-3]]
    pred.write_text("".join(keep) + lines[lite_ok[-3]][:20])  # plus a torn line
    models = {"lite": Recorder(litemedsam, "lite"), "boxfill": BoxFill()}
    again = run_bench(_config(btcv_dir, models, models.__getitem__), run, progress=False)
    assert len(models["lite"].seen) == 3  # only the missing predictions were recomputed
    assert _metrics(read_rows(pred)) == _metrics(read_rows(out / "predictions.jsonl"))
    for model, per in summary["results"].items():
        for kind, e in per.items():
            for key in ("dice_mask", "dice_image", "iou_mask", "nsd_mask", "hd95_mask", "n_masks"):
                assert again["results"][model][kind][key] == e[key]


def test_failing_model_is_reported_and_the_run_goes_on(btcv_dir, tmp_path):
    from imis.data.formats.imed import read_dataset

    entries = sorted(read_dataset(btcv_dir).split("test"), key=lambda e: e.stem)[:2]
    m = BoxFill("flaky", fail_on_call=2)  # images are visited in name order: the second one fails
    summary = run_bench(_config(btcv_dir, ["flaky"], lambda n: m, limit_images=2), tmp_path, progress=False)
    assert summary["errors"] and summary["errors"][0]["image"] == entries[1].stem
    assert "simulated failure" in summary["errors"][0]["reason"]
    assert summary["results"]["flaky"]["box"]["n_images"] == 1


def test_bad_label_file_is_reported(btcv_dir, tmp_path):
    data = tmp_path / "data"
    meta = json.loads((btcv_dir / "dataset.json").read_text())
    entries = sorted(meta["test"], key=lambda e: Path(e["image"]).stem)[:2]
    for e in entries:
        e["image"] = str(btcv_dir / e["image"])
        e["label"] = str(btcv_dir / e["label"])
    entries[1]["label"] = str(tmp_path / "x___missing.(13, 512, 512, 1).npz")
    meta["test"], meta["training"] = entries, []
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps(meta))
    m = BoxFill()
    summary = run_bench(
        BenchConfig(models=("boxfill",), data=data, seed=7, model_loader=lambda n: m),
        tmp_path / "r2",
        progress=False,
    )
    assert any("label file not found" in k for k in summary["skipped"])
    assert summary["results"]["boxfill"]["box"]["n_images"] == 1


def test_iterative_protocol(btcv_dir, litemedsam, tmp_path):
    m = Recorder(litemedsam, "lite")
    cfg = _config(btcv_dir, ["lite"], lambda n: m, protocol="iterative", max_interactions=3, noc_cap=3)
    summary = run_bench(cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path / "predictions.jsonl")
    targets = {(r["image"], r["target"]) for r in rows if r["kind"] == "iterative"}
    assert len(targets) == 17
    for t in targets:
        ks = sorted(r["k"] for r in rows if (r["image"], r["target"]) == t and r["kind"] == "iterative")
        assert ks == [1, 2, 3]
    assert all(len(pts) == k + 1 for k, (pts, _, _) in enumerate(m.seen[:3]))  # accumulated clicks
    res = summary["results"]["lite"]
    assert {"iterative@1", "iterative@2", "iterative@3"} <= set(res)
    noc = summary["noc"]["lite"]
    assert noc["n_masks"] == 17 and 1 <= noc["noc85"] <= 3 and 0 <= noc["failures90"] <= 17
    assert (tmp_path / "figures" / "dice_vs_interactions.png").is_file()


def test_commands_and_merge(single_run, tmp_path, capsys):
    out, _, _ = single_run
    parser = argparse.ArgumentParser(prog="imis")
    register_bench_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--models", "a,b", "--data", "d:train", "-o", str(tmp_path)])
    assert args.protocol == "single" and args.max_interactions == 9 and args.click_simulator == "ritm"
    assert _parse_data("some/dir:train") == (Path("some/dir"), "train")
    assert _parse_data("some/dir") == (Path("some/dir"), "test")
    args = parser.parse_args(["report", str(out), str(out)])
    assert args.func(args) == 0
    assert "| lite |" in capsys.readouterr().out
    table = merge_runs([out, out])
    assert {r["model"] for r in table} == {"lite", "boxfill"} and len(
        table
    ) == 2 * 6  # 2 runs x 2 models x (click, box, click+box)
    assert "dice_mask" in format_table(table)
    write_report(out)
    with pytest.raises(ImisError):
        merge_runs([tmp_path / "nothing"])


def test_baseline_refusals_are_skipped_not_scored(btcv_dir, tmp_path):
    baselines = pytest.importorskip("imis.bench.baselines")
    cfg = _config(btcv_dir, ["grabcut"], lambda n: baselines.load_baseline(n), limit_images=1)
    summary = run_bench(cfg, tmp_path, progress=False)
    assert not summary["errors"]
    assert any(k.startswith("grabcut | click |") for k in summary["skipped"])
    assert 0.0 < summary["results"]["grabcut"]["box"]["dice_mask"] <= 1.0


def test_cases_select_a_validation_split(btcv_dir, tmp_path, capsys):
    """--cases scores only the named cases of a split (the validation cases a training run held out)."""
    models = {"boxfill": BoxFill()}
    cfg = _config(btcv_dir, models, models.__getitem__, split="train", cases=("ABD_035",), limit_images=None)
    run_bench(cfg, tmp_path / "val", progress=False)
    images = {r["image"] for r in read_rows(tmp_path / "val" / "predictions.jsonl")}
    expected = {
        Path(e["image"]).stem
        for e in json.loads((btcv_dir / "dataset.json").read_text())["training"]
        if Path(e["image"]).stem.startswith("ABD_035_")
    }
    assert images == expected and len(expected) >= 3
    assert json.loads((tmp_path / "val" / "config.json").read_text())["cases"] == ["ABD_035"]
    with pytest.raises(ImisError, match="has no case ABD_099"):
        run_bench(
            _config(btcv_dir, models, models.__getitem__, cases=("ABD_099",)), tmp_path / "x", progress=False
        )
    # the CLI: a comma-separated list; an empty one is refused with the argument named
    from imis.cli import main

    assert (
        main(
            [
                "bench",
                "--models",
                "grabcut",
                "--data",
                str(btcv_dir),
                "--cases",
                " , ",
                "-o",
                str(tmp_path / "y"),
            ]
        )
        != 0
    )
    assert "--cases: no case id" in capsys.readouterr().err


class TextEcho:
    """Stand-in that takes text: records the text of every decode (the mask is empty)."""

    name, prompt_types = "echo", frozenset({"text"})

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, image):
        return image.shape[:2]

    def decode(self, emb, spec):
        self.texts.append(spec.text)
        return Prediction(np.zeros(emb, bool), np.zeros(emb, np.float32), None, float("nan"))


def test_text_fed_is_the_text_the_prompt_file_records(btcv_dir, tmp_path):
    """Replay = what the model read: the runner feeds each target's recorded sentence, which is the
    template filled with the target's display name (the sentence the model's text path builds)."""
    from imis.prompts import load_prompts, text_prompt

    echo = TextEcho()
    cfg = _config(btcv_dir, ["echo"], {"echo": echo}.__getitem__, limit_images=1, protocol="imis-paper")
    cfg.max_interactions = 1
    run_bench(cfg, tmp_path / "paper", progress=False, report=False)
    run_bench(_config(btcv_dir, ["echo"], {"echo": echo}.__getitem__, limit_images=1), tmp_path / "single")
    recs = [r for r in load_prompts(tmp_path / "single" / "prompts.json", None)["targets"] if "text" in r]
    recorded = [r["text"] for r in recs]
    assert recorded and echo.texts == recorded * 2  # imis-paper's paper:text, then single's text
    assert all(r["text"] == text_prompt(r["target"]) for r in recs)
    # dataset keys are read by their display names ("kidney_right" -> "... a right kidney.")
    assert any(r["text"] != f"A segmentation area of a {r['target']}." for r in recs)


def test_config_records_the_requested_and_the_resolved_runtime(btcv_dir, tmp_path, litemedsam):
    """--backend auto / --precision auto: config.json keeps the request and records, per model, the backend
    and precision the loaded model runs at (not 'auto'), by the rule of resolve_runtime on this machine;
    a baseline has no runtime."""
    import importlib.util

    import torch

    from imis.bench.runner import load_any_model, runtime_of
    from imis.models.onnx.backend import INT8, resolve_runtime

    cfg = BenchConfig(models=("litemedsam",), data=btcv_dir, limit_images=1, backend="auto", precision="auto")
    run_bench(cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "config.json").read_text())
    assert (record["backend"], record["precision"]) == ("auto", "auto")
    backend, dtype = resolve_runtime("auto", "auto", "cpu", "litemedsam")
    precision = {None: "fp32", torch.bfloat16: "bf16", INT8: "int8"}[dtype]
    assert record["resolved_runtime"] == {"litemedsam": {"backend": backend, "precision": precision}}
    # what is recorded is read from the loaded model, so an explicit choice shows as itself
    assert runtime_of(litemedsam) == {"backend": "torch", "precision": "fp32"}
    bf16 = load_any_model("litemedsam", backend="torch", precision="bf16", zoom=True)
    assert runtime_of(bf16) == {"backend": "torch", "precision": "bf16"}
    if importlib.util.find_spec("cv2") is not None:
        assert runtime_of(load_any_model("grabcut")) is None
