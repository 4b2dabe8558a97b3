"""Bad input to the ONNX export and backend: one clear error each, naming the file or argument."""

from __future__ import annotations

import shutil

import pytest
import torch
from onnx_helpers import small_sam_model

from imis.cli import main
from imis.errors import CheckpointError, InputError
from imis.models import load_model
from imis.models.onnx.backend import resolve_runtime
from imis.models.onnx.export import export_onnx

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def sam_export(parity_dir, tmp_path_factory):
    """A decoder-only export of the small SAM fixture under the name sam-vit-b (fast to write)."""
    model = small_sam_model(torch.load(parity_dir / "sam_small.pt", weights_only=False))
    out = tmp_path_factory.mktemp("sam-small")
    export_onnx(model, out, encoder=False)
    return out


def test_export_of_a_model_without_weights_says_pass_checkpoint(tmp_path, capsys):
    assert main(["export", "sam-vit-b", "--format", "onnx", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "sam-vit-b" in err and "--checkpoint" in err
    assert not (tmp_path / "x").exists()


def test_unsupported_opset_is_refused_before_loading(tmp_path, capsys):
    assert main(["export", "litemedsam", "-o", str(tmp_path / "x"), "--opset", "11"]) == 2
    err = capsys.readouterr().err
    assert "--opset 11" in err and "18-23" in err


def test_unknown_format_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "litemedsam", "--format", "tflite", "-o", str(tmp_path)])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_export_of_another_model_is_refused(sam_export):
    with pytest.raises(CheckpointError, match="an ONNX export of model 'sam-vit-b', not 'imis-lite'"):
        load_model("imis-lite", checkpoint=sam_export, backend="onnx")


def test_cli_names_the_export_and_the_model(sam_export, btcv_dir, tmp_path, capsys):
    image = btcv_dir / "image" / "ABD_001_100.png"
    argv = ["segment", str(image), "--model", "litemedsam", "--box", "62,193,313,385"]
    argv += ["--backend", "onnx", "--checkpoint", str(sam_export), "-o", str(tmp_path / "m.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(sam_export) in err and "'sam-vit-b', not 'litemedsam'" in err


def test_onnx_file_without_manifest_is_not_an_export(sam_export, tmp_path):
    lone = tmp_path / "model.onnx"
    shutil.copyfile(sam_export / "decoder.onnx", lone)
    with pytest.raises(CheckpointError, match="not an imis ONNX export"):
        load_model("sam-vit-b", checkpoint=lone, backend="onnx")


def test_graph_swapped_in_from_another_export_is_refused(sam_export, tmp_path):
    import onnx

    swapped = tmp_path / "swapped"
    shutil.copytree(sam_export, swapped)
    graph = onnx.load(str(swapped / "decoder.onnx"))  # a decoder of the same model name, other weights
    for prop in graph.metadata_props:
        if prop.key == "imis.weights_sha256":
            prop.value = "0" * 64
    onnx.save(graph, str(swapped / "decoder.onnx"))
    with pytest.raises(CheckpointError, match="decoder.onnx: this ONNX graph's weights"):
        load_model("sam-vit-b", checkpoint=swapped, backend="onnx")


def test_an_export_needs_the_onnx_backend(sam_export):
    with pytest.raises(CheckpointError, match="needs --backend onnx"):
        load_model("sam-vit-b", checkpoint=sam_export / "manifest.json")


def test_runtime_option_conflicts():
    with pytest.raises(InputError, match="int8 runs on the ONNX backend"):
        resolve_runtime("torch", "int8")
    with pytest.raises(InputError, match="bf16 runs on --backend torch"):
        resolve_runtime("onnx", "bf16")
    with pytest.raises(InputError, match="CPU only"):
        resolve_runtime("onnx", "fp32", "cuda")
    assert resolve_runtime("auto", "fp32", "cpu") == ("onnx", None)
    assert resolve_runtime("onnx", "auto", "cpu", "imis-lite") == (
        "onnx",
        torch.qint8,
    )  # measured to keep masks
    assert resolve_runtime("onnx", "auto", "cpu", "sam-vit-b") == ("onnx", None)  # not measured: fp32


def test_auto_backend_prefers_bf16_torch_where_bf16_is_fast(monkeypatch):
    import imis.models.interactive as interactive

    monkeypatch.setattr(interactive, "fast_bf16_available", lambda device: True)
    assert resolve_runtime("auto", "auto", "cpu", "imis-lite") == ("torch", torch.bfloat16)
    assert resolve_runtime("auto", "bf16", "cpu", "imis-lite") == ("torch", torch.bfloat16)
    assert resolve_runtime("auto", "fp32", "cpu", "imis-lite") == ("onnx", None)
    monkeypatch.setattr(interactive, "fast_bf16_available", lambda device: False)
    assert resolve_runtime("auto", "auto", "cpu", "imis-lite") == ("onnx", torch.qint8)


def test_decoder_only_export_refuses_to_encode(sam_export):
    model = load_model("sam-vit-b", checkpoint=sam_export, backend="onnx")
    with pytest.raises(CheckpointError, match="decoder only"):
        model.encode(torch.zeros(32, 32).numpy())
