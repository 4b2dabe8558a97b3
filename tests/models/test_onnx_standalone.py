"""An exported model used from a fresh virtual environment with only onnxruntime and numpy (no torch,
no imis): the export's run_onnx.py follows manifest.json and segments the btcv-demo liver from a box."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import numpy as np
import pytest

from imis.cli import main
from imis.data.formats import imed
from imis.models import PromptSpec, load_model
from imis.prompts.boxes import tight_box

LIVER = "liver"


def _clean_env() -> dict[str, str]:
    """This process's environment without what would let the venv see our packages (PYTHONPATH=src)."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _bare_env(path):
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    py = path / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "onnxruntime", "numpy"],
        capture_output=True,
        text=True,
        timeout=900,
        env=_clean_env(),
        cwd=path,
    )
    if pip.returncode:
        pytest.skip(f"pip could not install onnxruntime/numpy into a fresh venv: {pip.stderr.strip()[-300:]}")
    probe = "import importlib.util as u; print([m for m in ('torch', 'imis') if u.find_spec(m)])"
    found = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, env=_clean_env(), cwd=path)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
    return py


@pytest.mark.slow
def test_export_segments_liver_in_a_venv_without_torch(btcv_dir, tmp_path):
    from imis.models.registry import default_model_name

    if default_model_name() != "imis-lite":
        pytest.skip("imis-lite weights not installed")
    export = tmp_path / "export"
    assert main(["export", "imis-lite", "-o", str(export)]) == 0
    dataset = imed.read_dataset(btcv_dir)
    entry = next(e for e in dataset.split("train") if e.stem == "ABD_001_100")
    sample = imed.read_sample(dataset, entry, with_imask=False)
    gt = sample.masks[LIVER] > 0
    box = tight_box(gt)
    np.save(tmp_path / "ct.npy", sample.image[..., 0])  # the grey slice, as a user would hand it over

    py = _bare_env(tmp_path / "venv")
    args = [str(py), str(export / "run_onnx.py"), str(tmp_path / "ct.npy"), "--box", ",".join(map(str, box))]
    run = subprocess.run(
        [*args, "-o", str(tmp_path / "mask.npy")], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["mask_px"] > 0
    mask = np.load(tmp_path / "mask.npy")
    assert mask.shape == gt.shape and mask.dtype == bool

    dice = 2 * (mask & gt).sum() / (mask.sum() + gt.sum())
    assert dice >= 0.85, dice
    model = load_model("imis-lite")
    ours = model.decode(model.encode(sample.image), PromptSpec(box=np.array(box, dtype=np.float64))).mask
    assert (ours & mask).sum() / (ours | mask).sum() >= 0.99
    assert sys.executable != str(py)
