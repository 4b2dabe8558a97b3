"""Validation during training: the iterative score (click@N) and the logs of resumed runs."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from imis.train.config import DatasetSpec, TrainConfig


@pytest.fixture(scope="module")
def held_out_slice(btcv_dir):
    """imis-lite and the slice with the most targets of a btcv-demo case it never trained on (ABD_034)."""
    from imis.models.registry import load_model
    from imis.train.data import load_images

    model = load_model("imis-lite")
    lowres = 4 * int(model.net.prompt_encoder.image_embedding_size[0])
    spec = DatasetSpec(path=str(btcv_dir), split="train", cases=("ABD_034",))
    images = load_images(spec, model.preprocess, lowres, with_imask=False)
    return model, max(images, key=lambda im: len(im.gt))


def _evaluate(model, image, **over) -> dict[str, float]:
    from imis.train.validation import evaluate

    cfg = replace(TrainConfig(datasets=()), click_output="single", val_max_targets=6, **over)
    return evaluate(model.net, [image], None, None, {}, model.preprocess, cfg, torch.device("cpu"))


def test_one_interaction_is_the_click_score(held_out_slice):
    model, image = held_out_slice
    res = _evaluate(model, image, val_interactions=1)
    assert res["click@1"] == pytest.approx(res["click"], abs=1e-12)
    assert "click@5" not in res


def test_corrections_follow_the_benchmark_iterative_protocol(held_out_slice):
    """click@5 of the trainer (low-res frame) against the benchmark's loop at native resolution: the
    same centre click, RITM corrections and fed-back logits, through InteractiveModel."""
    from imis.bench.metrics import dice
    from imis.data.formats.imed import read_dataset, read_image, read_label
    from imis.models.interactive import PromptSpec
    from imis.prompts import Click, center_click, ritm_click

    model, image = held_out_slice
    res = _evaluate(model, image, val_interactions=5)
    assert res["targets"] == 6
    assert res["click@5"] > res["click"] + 0.01  # the corrections are used, not ignored

    ds = read_dataset(image.path.parent.parent)
    entry = next(e for e in ds.entries if e.stem == image.stem)
    label = read_label(entry.label)
    label_names = ds.label_names(label.shape[0])
    emb = model.encode(read_image(image.path))
    scores = []
    for name in [t.name for t in image.gt[:6]]:
        gt = label[label_names.index(name)].astype(bool)
        clicks: list[Click] = [center_click(gt)]
        logits = None
        pred = None
        for k in range(5):
            if k:
                new = ritm_click(pred.mask, gt, clicks)
                if new is None:
                    break
                clicks.append(new)
            spec = PromptSpec(
                points=np.array([c.xy for c in clicks], dtype=np.float64),
                labels=np.array([int(c.positive) for c in clicks]),
                mask_logits=logits,
            )
            pred = model.decode(emb, spec)
            logits = pred.low_res_logits
        scores.append(dice(pred.mask, gt))
    assert res["click@5"] == pytest.approx(float(np.mean(scores)), abs=0.03)


def test_resumed_run_rewrites_an_older_log_under_the_new_header(tmp_path):
    from imis.train.logs import CsvLog

    path = tmp_path / "val_log.csv"
    path.write_text("epoch,step,click,box,text,targets\n1,50,0.8,0.9,0.6,111\n")
    log = CsvLog(path, ["epoch", "step", "click", "box", "text", "click@5", "targets"], True)
    log.write(
        {"epoch": 2, "step": 100, "click": 0.81, "box": 0.91, "text": 0.61, "click@5": 0.88, "targets": 111}
    )
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "click", "box", "text", "click@5", "targets"]
    assert rows[0]["click"] == "0.8" and rows[0]["click@5"] == "" and rows[0]["targets"] == "111"
    assert rows[1]["click@5"] == "0.88"


def test_val_interactions_is_checked_and_does_not_change_the_resume_key(tmp_path):
    from imis.errors import InputError
    from imis.train.state import config_key

    base = {"datasets": [{"path": str(tmp_path)}], "out": str(tmp_path)}
    with pytest.raises(InputError, match="val_interactions must be >= 0"):
        TrainConfig.from_mapping({**base, "val_interactions": -1}, "cfg.yaml")
    a = TrainConfig.from_mapping({**base, "val_interactions": 0}, "cfg.yaml")
    b = TrainConfig.from_mapping(base, "cfg.yaml")
    assert b.val_interactions == 5
    assert config_key(a) == config_key(b)


def test_several_validation_datasets_are_also_scored_apart(held_out_slice, tmp_path):
    """btcv-demo's held-out case beside the OOD set (imis.data.ood): the pooled means are the targets'
    means over both, and each dataset gets its own columns (what a run selects on)."""
    from imis.data.ood import OodConfig, write_ood_datasets
    from imis.train.data import load_images
    from imis.train.validation import evaluate, per_dataset_fields

    model, image = held_out_slice
    first = image.__class__(**{**image.__dict__, "gt": image.gt[:3]})
    write_ood_datasets(tmp_path, OodConfig(per_background=(1, 1)))
    lowres = 4 * int(model.net.prompt_encoder.image_embedding_size[0])
    spec = DatasetSpec(path=str(tmp_path / "ood-val"), split="test")
    ood = load_images(spec, model.preprocess, lowres, with_imask=False)[:1]
    n_ood = min(len(ood[0].gt), 6 - 3)
    res = _evaluate(model, first, val_interactions=2)
    assert not any(":" in k for k in res)  # one dataset: the pooled columns are its own
    cfg = replace(TrainConfig(datasets=()), click_output="single", val_max_targets=6, val_interactions=2)
    both = evaluate(model.net, [first, *ood], None, None, {}, model.preprocess, cfg, torch.device("cpu"))
    names = sorted({first.dataset, ood[0].dataset})
    assert names == ["BTCV", "ood-val"]
    for metric in ("click", "box", "click@2"):
        assert both[f"BTCV:{metric}"] == pytest.approx(res[metric], abs=1e-9)
        pooled = (3 * both[f"BTCV:{metric}"] + n_ood * both[f"ood-val:{metric}"]) / (3 + n_ood)
        assert both[metric] == pytest.approx(pooled, abs=1e-9)
    assert per_dataset_fields([first, *ood], ["click", "box"]) == [
        "BTCV:click",
        "BTCV:box",
        "ood-val:click",
        "ood-val:box",
    ]
    assert per_dataset_fields([first], ["click"]) == []
