"""`imis serve` on the command line, and the radiological view flips (no model, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from imis.app.backend import view_flips
from imis.app.server import is_loopback
from imis.cli import main


def test_serve_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--token" in out and "--max-upload-mb" in out and "imis serve /data" in out


def test_serve_refuses_a_missing_data_dir(capsys, tmp_path):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "DATA_DIR is not a folder" in capsys.readouterr().err


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_view_flips_follow_the_direction_cosines():
    # Colin27 as SimpleITK reads it (LPS): x and y run towards the patient's right and anterior
    colin = view_flips(np.diag([-1.0, -1.0, 1.0]))
    assert colin == {"z": [True, True], "y": [True, True], "x": [True, True]}
    # an LPS-aligned volume: only the superior-up flip of the coronal and sagittal views
    lps = view_flips(np.eye(3))
    assert lps == {"z": [False, False], "y": [False, True], "x": [False, True]}
    assert view_flips(None) == {"z": [False, False]}


def test_serve_takes_the_runtime_options(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--backend {torch,onnx,auto}" in out and "--precision {fp32,bf16,int8,auto}" in out
    # the same refusal as `imis segment`: int8 is the ONNX backend's
    assert main(["serve", "--backend", "torch", "--precision", "int8"]) == 2
    assert "--backend onnx" in capsys.readouterr().err


def test_runtime_label():
    import torch

    from imis.app.server import runtime_label
    from imis.models.onnx.backend import INT8

    assert runtime_label("torch", None) == "torch fp32"
    assert runtime_label("torch", torch.bfloat16) == "torch bf16"
    assert runtime_label("onnx", INT8) == "onnx int8"
