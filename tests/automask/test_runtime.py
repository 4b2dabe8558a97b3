"""`imis automask --backend/--precision`: the runtime resolution, the bf16 grid decoder, the ONNX encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SLICES, copy_dataset

from imis.automask import generate
from imis.automask.loading import EncoderSplit, load_automask_model, runtime_tag
from imis.automask.settings import AutomaskSettings
from imis.cli import main
from imis.data.formats import imed


def test_bad_runtime_combinations_are_refused_with_the_reason(btcv_dir, tmp_path, capsys, lite):
    root = copy_dataset(btcv_dir, tmp_path / "ds", SLICES[:1])
    assert main(["automask", str(root), "--backend", "torch", "--precision", "int8"]) == 2
    assert "--precision int8 runs on the ONNX backend" in capsys.readouterr().err
    assert not (root / "imask").exists()


def test_runtime_is_part_of_the_fingerprint():
    s = AutomaskSettings()
    fp32 = s.fingerprint("imis-lite", "w", "torch:fp32")
    assert fp32 == s.fingerprint("imis-lite", "w")  # fp32 runs keep their old fingerprint
    assert (
        len(
            {
                fp32,
                s.fingerprint("imis-lite", "w", "torch:bf16"),
                s.fingerprint("imis-lite", "w", "onnx:int8"),
            }
        )
        == 3
    )
    assert runtime_tag("imis-lite", "torch", "fp32", "cpu") == "torch:fp32"
    assert runtime_tag("imis-lite", "torch", "bf16", "cpu") == "torch:bf16"


def test_bf16_grid_decoder_keeps_the_fp32_candidates(lite, lite_embedding):
    """A bf16 model decodes the grid in bf16; on the same embedding its masks match fp32's."""
    bf16 = load_automask_model("imis-lite", None, "cpu", "torch", "bf16")
    assert generate.grid_net(bf16).dtype == torch.bfloat16
    assert generate.grid_net(lite).dtype == torch.float32
    s = AutomaskSettings(points_per_side=4, iou_thresh=0.3, stability_thresh=0.0)
    a = generate.generate_candidates(lite, lite_embedding, s)
    b = generate.generate_candidates(bf16, lite_embedding, s)
    assert len(a) > 3
    common = {tuple(p): i for i, p in enumerate(a.point)}
    ious = []
    for j, p in enumerate(b.point):
        if tuple(p) in common:
            i = common[tuple(p)]
            ma, mb = a.masks[i], b.masks[j]
            ious.append(((ma & mb).sum() / max((ma | mb).sum(), 1)).item())
            assert abs(a.iou[i] - b.iou[j]) < 0.02
    assert len(ious) >= len(a) - 1  # at most one borderline click crosses the 0.3 threshold
    assert np.mean(ious) > 0.97


def test_onnx_backend_encodes_with_onnx_runtime_and_decodes_the_grid(btcv_dir, tmp_path, lite):
    pytest.importorskip(
        "onnxruntime", reason="the ONNX backend is an optional extra (pip install imis[onnx])"
    )
    model = load_automask_model("imis-lite", None, "cpu", "onnx", "fp32")
    assert isinstance(model, EncoderSplit) and model.encoder.backend == "onnx"
    root = copy_dataset(btcv_dir, tmp_path / "onnx", SLICES[:1])
    fast = ["--points-per-side", "3", "--iou-thresh", "0.3", "--stability", "0", "--no-progress"]
    assert main(["automask", str(root), *fast, "--backend", "onnx", "--precision", "fp32"]) == 0
    ids = imed.read_imask(imed.read_dataset(root).entries[0].imask)
    assert ids.max() >= 1
