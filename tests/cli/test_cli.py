"""`imis segment` and `imis models` end to end on real data, and their one-line failures."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from imis.bench.metrics import dice
from imis.cli import main
from imis.data.formats import imed

COLIN = Path("/usr/share/mricron/templates")
LIVER_BOX = "62,193,313,385"


@pytest.fixture(scope="module")
def liver_png(btcv_dir):
    return btcv_dir / "image" / "ABD_001_100.png"


@pytest.fixture(scope="module")
def liver_gt(btcv_dir):
    return imed.read_label(btcv_dir / "label" / "x___ABD_001_100.(13, 512, 512, 1).npz")[5]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("imis: error: "), err
    assert "\n" not in err, err
    return err


def test_segment_png_box_writes_mask_and_overlay(tmp_path, liver_png, liver_gt, capsys):
    out, overlay = tmp_path / "liver.png", tmp_path / "overlay.png"
    assert (
        main(
            ["segment", str(liver_png), "--model", "litemedsam", "--box", LIVER_BOX]
            + ["-o", str(out), "--overlay", str(overlay)]
        )
        == 0
    )
    from PIL import Image

    mask = np.asarray(Image.open(out))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}  # one mask: 0/255
    assert abs(dice(mask > 0, liver_gt) - 0.766) < 0.005
    ov = np.asarray(Image.open(overlay))
    assert ov.shape == (512, 512, 3)
    table = capsys.readouterr().out
    assert "litemedsam" in table and "pred IoU" in table


def test_segment_npy_and_nifti_outputs(tmp_path, liver_png, liver_gt):
    out = tmp_path / "liver.npy"
    assert main(["segment", str(liver_png), "--model", "litemedsam", "--box", LIVER_BOX, "-o", str(out)]) == 0
    assert abs(dice(np.load(out) > 0, liver_gt) - 0.766) < 0.005


def test_segment_volume_slice_keeps_geometry(tmp_path):
    if not (COLIN / "ch2.nii.gz").is_file():
        pytest.skip("Colin27 not installed (apt-get install mricron-data)")
    import SimpleITK as sitk

    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN / "aal.nii.gz")))
    z = 80
    thal = aal[z] == 77
    ys, xs = np.nonzero(thal)
    box = f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"
    out = tmp_path / "thal.nii.gz"
    args = [
        "segment",
        str(COLIN / "ch2.nii.gz"),
        "--axis",
        "z",
        "--slice",
        str(z),
        "--box",
        box,
        "-o",
        str(out),
    ]
    assert main(args) == 0
    written = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(COLIN / "ch2.nii.gz"))
    arr = sitk.GetArrayFromImage(written)
    assert arr.shape[-2:] == thal.shape
    assert np.allclose(written.GetSpacing(), ref.GetSpacing())
    assert np.allclose(written.GetDirection(), ref.GetDirection())
    # the slice sits at the physical position of voxel (0, 0, z) of the source volume
    assert np.allclose(written.GetOrigin(), ref.TransformIndexToPhysicalPoint((0, 0, z)))
    assert dice(arr.reshape(thal.shape) > 0, thal) > 0.6


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("litemedsam", "sam-vit-b", "medsam-vit-b", "imis-net-b"):
        assert name in out
    assert "lite_medsam.pth" in out and "pass --checkpoint" in out


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--click" in out


def test_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["segment", str(bad), "--box", "1,1,5,5", "-o", str(tmp_path / "m.png")]) == 2
    assert "broken.png" in _one_line_error(capsys)


def test_truncated_nifti(tmp_path, capsys):
    if not (COLIN / "ch2.nii.gz").is_file():
        pytest.skip("Colin27 not installed (apt-get install mricron-data)")
    data = (COLIN / "ch2.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 3])
    assert (
        main(["segment", str(bad), "--slice", "3", "--box", "1,1,5,5", "-o", str(tmp_path / "m.nii.gz")]) == 2
    )
    assert "cut.nii.gz" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((2, 3, 4, 5), np.float32), "4D"),
        (np.zeros((1, 1), np.float32), "1x1"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
        (np.full((8, 8), np.inf, np.float32), "Inf"),
    ],
    ids=["4d", "one-pixel", "nan", "inf"],
)
def test_bad_arrays(tmp_path, capsys, array, fragment):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    assert main(["segment", str(path), "--box", "0,0,1,1", "-o", str(tmp_path / "m.npy")]) == 2
    err = _one_line_error(capsys)
    assert "bad.npy" in err and fragment.lower() in err.lower(), err


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        (["--box", "600,10,700,90"], "outside"),
        (["--click", "10,900,+"], "outside"),
        (["--box", "100,100,50,120"], "empty"),
        (["--model", "litemedsam", "--text", "liver"], "does not support text"),
    ],
    ids=["box-outside", "click-outside", "empty-box", "text-unsupported"],
)
def test_bad_prompts(tmp_path, liver_png, capsys, prompt, fragment):
    assert main(["segment", str(liver_png), *prompt, "-o", str(tmp_path / "m.png")]) == 2
    assert fragment in _one_line_error(capsys)


def test_wrong_layout_checkpoint(tmp_path, parity_dir, capsys):
    """A SAM-layout file given as IMIS-Net weights names the missing/unexpected keys."""
    small = torch.load(parity_dir / "sam_small.pt", weights_only=False)
    sd = {f"image_encoder.{k}": v for k, v in small["image_encoder"].items()}
    ckpt = tmp_path / "sam_small.pth"
    torch.save(sd, ckpt)
    args = [
        "segment",
        "x.png",
        "--model",
        "imis-net-b",
        "--checkpoint",
        str(ckpt),
        "--box",
        "1,1,5,5",
        "-o",
        "m.png",
    ]
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    args[1] = str(png)
    args[-1] = str(tmp_path / "m.png")
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "sam_small.pth" in err and "imis-net" in err
    assert "unexpected keys (image_encoder.pos_embed" in err


def test_corrupt_checkpoint(tmp_path, liver_png, capsys):
    ckpt = tmp_path / "weights.pth"
    ckpt.write_bytes(gzip.compress(b"not a checkpoint"))
    args = ["segment", str(liver_png), "--model", "sam-vit-b", "--checkpoint", str(ckpt), "--box", LIVER_BOX]
    assert main([*args, "-o", str(tmp_path / "m.png")]) == 2
    assert "weights.pth" in _one_line_error(capsys)


def test_model_without_weights(tmp_path, liver_png, capsys):
    assert (
        main(
            [
                "segment",
                str(liver_png),
                "--model",
                "sam-vit-b",
                "--box",
                LIVER_BOX,
                "-o",
                str(tmp_path / "m.png"),
            ]
        )
        == 2
    )
    assert "--checkpoint" in _one_line_error(capsys)


def test_no_prompt(tmp_path, liver_png, capsys):
    assert main(["segment", str(liver_png), "-o", str(tmp_path / "m.png")]) == 2
    assert "no prompt" in _one_line_error(capsys)
