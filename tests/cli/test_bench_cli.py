"""`imis bench --prompts FILE` through the CLI: a prompt file is replayed as given, one made for other data
is refused with a one-line error naming the file and the reason (exit 2)."""

from __future__ import annotations

import inspect
import json

import numpy as np

from imis.cli import main
from imis.prompts import generate_prompts, save_prompts


def _bench(btcv_dir, out, *extra):
    return main(
        ["bench", "--models", "grabcut", "--data", f"{btcv_dir}:test", "--limit-images", "1"]
        + ["--no-progress", "-o", str(out), *extra]
    )


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("imis: error: "), err
    assert "\n" not in err, err
    return err


def test_prompts_file_is_replayed(btcv_dir, tmp_path, capsys):
    first = tmp_path / "first"
    assert _bench(btcv_dir, first, "--seed", "5") == 0
    # the file of the seed-5 run, replayed in a run whose own seed would give other prompts
    given = tmp_path / "given.json"
    given.write_bytes((first / "prompts.json").read_bytes())
    second = tmp_path / "second"
    assert _bench(btcv_dir, second, "--seed", "6", "--prompts", str(given)) == 0
    assert (second / "prompts.json").read_bytes() == given.read_bytes()
    a, b = (json.loads((d / "summary.json").read_text())["results"] for d in (first, second))
    assert a["grabcut"]["box"]["dice_mask"] == b["grabcut"]["box"]["dice_mask"]
    assert json.loads((second / "config.json").read_text())["prompts_file"] == str(given)
    capsys.readouterr()


def test_prompts_file_of_the_whole_split_serves_a_subset(btcv_dir, tmp_path, capsys):
    whole = tmp_path / "whole"
    assert _bench(btcv_dir, whole, "--limit-images", "2") == 0  # the later --limit-images wins
    out = tmp_path / "subset"
    assert _bench(btcv_dir, out, "--prompts", str(whole / "prompts.json")) == 0
    sub = json.loads((out / "prompts.json").read_text())
    full = json.loads((whole / "prompts.json").read_text())
    assert 0 < len(sub["targets"]) < len(full["targets"])
    assert all(t in full["targets"] for t in sub["targets"])
    capsys.readouterr()


def test_prompts_file_of_another_dataset_is_refused(btcv_dir, tmp_path, capsys):
    mask = np.zeros((512, 512), bool)
    mask[100:200, 100:200] = True
    other = tmp_path / "other_prompts.json"
    save_prompts(other, generate_prompts([("someone_else_001", "liver", mask)], "single", 0))
    assert _bench(btcv_dir, tmp_path / "run", "--prompts", str(other)) == 2
    err = _one_line_error(capsys)
    assert str(other) in err and "another dataset" in err
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_bad_prompts_files_are_refused(btcv_dir, tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert _bench(btcv_dir, tmp_path / "r1", "--prompts", str(missing)) == 2
    err = _one_line_error(capsys)
    assert str(missing) in err and "not found" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert _bench(btcv_dir, tmp_path / "r2", "--prompts", str(broken)) == 2
    err = _one_line_error(capsys)
    assert str(broken) in err and "not a valid prompt file" in err


def test_checkpoints_are_given_per_model():
    from imis.bench.commands import parse_checkpoints
    from imis.errors import InputError

    models = ("sam2-hiera-b+", "sam-med2d-b", "grabcut")
    got = parse_checkpoints(["sam2-hiera-b+=a.pt", "sam-med2d-b=dir/b=1.pth"], models)
    assert got == {"sam2-hiera-b+": "a.pt", "sam-med2d-b": "dir/b=1.pth"}
    assert parse_checkpoints(["x=y.pt"], ("sam2-hiera-t", "grabcut")) == {"sam2-hiera-t": "x=y.pt"}
    assert parse_checkpoints(None, models) == {}
    for specs, message in [
        (["a.pt"], "name the model it is for"),
        (["sam2-hiera-t=a.pt"], "sam2-hiera-t is not among --models"),
        (["grabcut=a.pt"], "grabcut is a baseline"),
        (["sam-med2d-b=a.pth", "sam-med2d-b=b.pth"], "two files for sam-med2d-b"),
    ]:
        try:
            parse_checkpoints(specs, models)
        except InputError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{specs} accepted")


def test_bench_passes_each_model_its_checkpoint(btcv_dir, tmp_path, capsys, monkeypatch):
    # litemedsam given its own weight file explicitly: the file reaches load_model for that model only.
    from imis.bench import runner
    from imis.models import registry

    seen = {}
    real = registry.load_model

    def spy(name, checkpoint=None, device="cpu", dtype=None, backend="torch"):
        seen[name] = checkpoint
        return real(name, checkpoint=checkpoint, device=device, dtype=dtype, backend=backend)

    monkeypatch.setattr(registry, "load_model", spy)
    weights = registry.get_spec("litemedsam").weights_path()
    out = tmp_path / "run"
    argv = ["bench", "--models", "litemedsam,grabcut", "--data", f"{btcv_dir}:test", "--limit-images", "1"]
    assert main(argv + ["--no-progress", "-o", str(out), "--checkpoint", f"litemedsam={weights}"]) == 0
    assert seen == {"litemedsam": str(weights)}
    assert json.loads((out / "config.json").read_text())["checkpoints"] == {"litemedsam": str(weights)}
    assert inspect.signature(runner.load_any_model).parameters["checkpoint"].default is None
    capsys.readouterr()
