"""`imis demo` (the main job) end to end on one image per dataset with the two baselines, on 2 workers."""

from __future__ import annotations

import json

import pytest

from imis.cli import main
from imis.demo import COLIN_DIR, available_models


def test_available_models_are_the_registry_models_with_weights():
    from imis.models.registry import REGISTRY

    names = available_models()
    assert names == [n for n, spec in REGISTRY.items() if spec.weights_path() is not None]
    assert all(n in REGISTRY for n in names)


def test_demo_runs_both_protocols_and_writes_the_reports(shared_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--shared", str(shared_dir), "--out", str(out), "--models", "grabcut,random-walker"]
    assert main([*args, "--limit-images", "1", "--workers", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "## btcv-demo" in printed and "NoC@85" in printed and "Dice@9" in printed
    datasets = ["btcv-demo"] + (["colin27-aal"] if (COLIN_DIR / "aal.nii.gz").is_file() else [])
    for label in datasets:
        for protocol in ("single", "iterative"):
            run = out / f"{label}-{protocol}"
            for name in ("leaderboard.md", "results.csv", "summary.json", "prompts.json", "figures"):
                assert (run / name).exists(), run / name
            rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
            assert {r["model"] for r in rows} == {"grabcut", "random-walker"}
            # every model of a run received the same prompt file
            parts = [run / "parts" / m / "prompts.json" for m in ("grabcut", "random-walker")]
            assert parts[0].read_bytes() == parts[1].read_bytes() == (run / "prompts.json").read_bytes()
            summary = json.loads((run / "summary.json").read_text())
            assert summary["config"]["models"] == ["grabcut", "random-walker"]
    single = json.loads((out / "btcv-demo-single" / "summary.json").read_text())["results"]
    assert "box" in single["grabcut"] and "click" in single["random-walker"]
    board = (out / "leaderboard.md").read_text()
    assert "per target, tight box" in board and "| grabcut |" in board
    results = json.loads((out / "results.json").read_text())
    assert len(results["tasks"]) == 2 * len(datasets)
    if "colin27-aal" in datasets:
        assert (out / "colin27-aal" / "dataset.json").is_file()
        from imis.data.formats import imed

        # the automask step gave every prepared slice its interactive masks, read as released ones are
        ds = imed.read_dataset(out / "colin27-aal")
        assert results["automask"]["images"] == len(ds.entries) > 0
        assert all(imed.read_imask(e.imask).max() >= 1 for e in ds.entries)


def test_demo_refuses_an_unknown_model(shared_dir, tmp_path, capsys):
    args = ["demo", "--shared", str(shared_dir), "--out", str(tmp_path), "--models", "nosuchmodel"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imis: error: ") and "nosuchmodel" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["demo", "--workers"])
