"""Issue 22, the first hour with imis: each point walked through as the new user did, on real data.

btcv-demo (CT) and Colin27 + AAL (T1 MRI, Debian mricron-data); every command through ``imis.cli.main``
as typed, asserting exit codes, the messages and the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imis.cli import main

COLIN = Path("/usr/share/mricron/templates")
CH2 = COLIN / "ch2.nii.gz"
LIVER_BOX = "62,193,313,385"


@pytest.fixture(scope="module")
def colin():
    if not CH2.is_file():
        pytest.skip("Colin27 not installed (apt-get install mricron-data)")
    return CH2


@pytest.fixture(scope="module")
def ct_png(btcv_dir):
    return btcv_dir / "image" / "ABD_001_100.png"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _error(err: str) -> str:
    err = err.strip()
    assert err.startswith("imis: error: ") and "\n" not in err, err
    return err


# -- names: checked before any work, with the closest name; baselines listed ------------------------------
def test_bench_refuses_a_misspelt_second_model_before_any_work(btcv_dir, tmp_path, capsys, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the benchmark ran before the names were checked")

    monkeypatch.setattr("imis.bench.runner.run_bench", no_work)
    run = tmp_path / "run"
    rc, _, err = _run(
        capsys, "bench", "--models", "imis-lite,randomwalker", "--data", f"{btcv_dir}:test", "-o", run
    )
    msg = _error(err)
    assert rc == 2 and not run.exists()
    assert "unknown model 'randomwalker'" in msg and msg.endswith("did you mean 'random-walker'?")
    assert "baselines: grabcut, random-walker" in msg and "imis-lite" in msg
    rc, _, err = _run(capsys, "bench", "--models", "sam-vit-b", "--data", btcv_dir, "-o", run)
    assert rc == 2 and "has no weights on this machine" in _error(err) and not run.exists()


def test_models_lists_the_baselines_marked(capsys):
    rc, out, _ = _run(capsys, "models")
    assert rc == 0
    assert "grabcut (baseline)" in out and "random-walker (baseline)" in out and "imis bench only" in out


def test_segment_model_name_checked_first_with_suggestion(tmp_path, capsys):
    out = tmp_path / "m.png"
    # the image does not exist: the name is refused before the image is read
    rc, _, err = _run(
        capsys, "segment", tmp_path / "none.png", "--model", "litemedsma", "--box", "1,1,9,9", "-o", out
    )
    msg = _error(err)
    assert rc == 2 and "unknown model 'litemedsma'" in msg and msg.endswith("did you mean 'litemedsam'?")
    rc, _, err = _run(
        capsys, "segment", tmp_path / "none.png", "--model", "grabcut", "--box", "1,1,9,9", "-o", out
    )
    assert rc == 2 and "a baseline of `imis bench`" in _error(err) and not out.exists()


# -- text: warnings instead of silence ------------------------------------------------------------------
def test_text_outside_the_trained_names_warns(ct_png, tmp_path, capsys):
    out = tmp_path / "foobar.png"
    rc, table, err = _run(capsys, "segment", ct_png, "--text", "foobar", "-o", out)
    assert rc == 0 and out.is_file() and "imis-lite" in table
    assert "imis: warning: text 'foobar' is not a name imis-lite was trained on" in err
    assert "`imis models --vocabulary imis-lite`" in err
    assert "imis: warning: predicted quality is low (IoU estimate 0." in err


def test_right_thalamus_text_on_colin_is_empty_and_said(colin, tmp_path, capsys):
    out = tmp_path / "thal.png"
    rc, _, err = _run(
        capsys, "segment", colin, "--axis", "z", "--slice", 80, "--text", "right thalamus", "-o", out
    )
    assert rc == 0 and out.is_file()
    lines = err.strip().splitlines()
    assert all(line.startswith("imis: warning: ") for line in lines), err
    assert "'right thalamus' is not a name imis-lite was trained on; nearest known: right " in lines[0]
    assert any("the predicted mask is empty" in line for line in lines)
    assert any("predicted quality is low" in line for line in lines)
    assert not np.asarray(Image.open(out)).any()


def test_models_vocabulary(capsys):
    rc, out, _ = _run(capsys, "models", "--vocabulary", "imis-lite")
    names = [line for line in out.splitlines() if not line.startswith("#")]
    assert rc == 0 and {"liver", "right kidney", "spleen", "left precentral gyrus", "gray matter"} <= set(
        names
    )
    assert "right thalamus" not in names  # held out of training (see brain_templates.HELDOUT_AAL_STRUCTURES)
    rc, _, err = _run(capsys, "models", "--vocabulary", "litemedsam")
    assert rc == 2 and "takes no text prompts" in _error(err)


def test_trained_name_gives_no_text_warning():
    from imis.models.text_vocabulary import text_warning
    from imis.session.feedback import result_warnings

    assert text_warning("imis-lite", "liver") is None and text_warning("imis-lite", "kidney_right") is None
    assert text_warning("litemedsam", "anything") is None  # no list: nothing to compare with
    assert result_warnings(np.ones((4, 4), bool), 0.9) == []


# -- prepare on an atlas --------------------------------------------------------------------------------
def _case_list(folder: Path, labels: dict[int, str]) -> Path:
    import yaml

    path = folder / "cases.yaml"
    data = {
        "name": "colin4",
        "modality": "mr",
        "labels": labels,
        "cases": [{"case": "colin_000", "image": str(CH2), "label": str(COLIN / "aal.nii.gz")}],
    }
    path.write_text(yaml.safe_dump(data))
    return path


FOUR = {77: "Thalamus_L", 72: "Caudate_R", 73: "Putamen_L", 38: "Hippocampus_R"}


def _config(folder: Path, text: str) -> Path:
    path = folder / "prepare.yaml"
    path.write_text("slice_step: 20\n" + text)
    return path


def _labels(dataset: Path) -> list[str]:
    import json

    meta = json.loads((dataset / "dataset.json").read_text())
    return sorted(v for k, v in meta["labels"].items() if k != "0")


def test_prepare_four_atlas_labels(colin, tmp_path, capsys):
    cases = _case_list(tmp_path, FOUR)
    rc, out, err = _run(capsys, "prepare", cases, "--out", tmp_path / "a", "--config", _config(tmp_path, ""))
    assert rc == 1
    assert (out + err).count("that the source's labels do not name") == 1, "the cause is printed once"
    assert "failed: colin_000 (the cause of each is printed above" in out
    assert "112 value(s) 1-37, 39-71, 74-76, 78-116" in out + err
    assert "unnamed_labels: ignore" in out + err and "keep_labels" in out + err
    # unnamed_labels: ignore -> the other 112 values are background
    cfg = _config(tmp_path, "unnamed_labels: ignore\n")
    rc, out, err = _run(capsys, "prepare", cases, "--out", tmp_path / "b", "--config", cfg)
    assert rc == 0 and len(_labels(tmp_path / "b")) == 4
    # the one case ends in training: said at the end, with the fix
    assert "0 test images" in err and f"--data {tmp_path / 'b'}:train" in err and "test_fraction: 1" in err
    rc, _, err = _run(
        capsys, "bench", "--models", "imis-lite", "--data", f"{tmp_path / 'b'}:test", "-o", tmp_path / "r"
    )
    assert rc == 2 and "split 'test' has no images; use --data" in _error(err) and ":train (" in err
    assert not (tmp_path / "r").exists()


def test_prepare_keep_labels_of_a_fully_named_atlas(colin, tmp_path, capsys):
    from imis.data.brain_templates import read_aal_names

    cases = _case_list(tmp_path, read_aal_names(COLIN / "aal.nii.txt"))  # all 116 named
    keep = "keep_labels: [Thalamus_L, Caudate_R, Putamen_L, 38]\ntest_fraction: 1\n"
    rc, _, err = _run(capsys, "prepare", cases, "--out", tmp_path / "k", "--config", _config(tmp_path, keep))
    assert rc == 0 and len(_labels(tmp_path / "k")) == 4 and "0 test images" not in err
    bad = _config(tmp_path, "keep_labels: [Thalamus_Lx]\n")
    rc, _, err = _run(capsys, "prepare", cases, "--out", tmp_path / "x", "--config", bad)
    msg = _error(err)
    assert rc == 2 and "keep_labels: 'Thalamus_Lx'" in msg and msg.endswith("did you mean 'Thalamus_L'?")


# -- bench --data ---------------------------------------------------------------------------------------
def test_bench_data_errors(btcv_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc, _, err = _run(capsys, "bench", "--models", "litemedsam", "--data", f"{btcv_dir}:val", "-o", run)
    assert rc == 2 and "unknown split 'val'" in _error(err) and "test and train" in err
    from imis.data.formats.msd import write_nnunet_raw

    raw = tmp_path / "raw"
    write_nnunet_raw(
        raw, [("c1", np.zeros((4, 16, 16), np.int16), np.ones((4, 16, 16), np.uint8))], {1: "x"}, "MR"
    )
    rc, _, err = _run(capsys, "bench", "--models", "litemedsam", "--data", raw, "-o", run)
    assert rc == 2 and f"run `imis prepare {raw} --out DATASET`" in _error(err)
    # a run that fails inside (an unknown case) leaves no empty run folder behind
    rc, _, err = _run(
        capsys, "bench", "--models", "litemedsam", "--data", btcv_dir, "--cases", "NOPE", "-o", run
    )
    assert rc == 2 and "NOPE" in _error(err) and not run.exists()
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = capsys.readouterr().out
    assert "':test' (the default)" in help_text and "without a split the test split is used" in help_text


# -- volumes: radiological pictures, preview, prompts, upscaling ----------------------------------------
def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min()) * 255


def test_coronal_overlay_is_radiological(colin, tmp_path, capsys):
    import SimpleITK as sitk

    vol = sitk.ReadImage(str(colin))
    arr = sitk.GetArrayFromImage(vol)  # (z, y, x)
    d = np.array(vol.GetDirection()).reshape(3, 3)  # column k: LPS direction of index axis k
    coronal = arr[:, 120, :]  # rows: index z, columns: index x
    # superior (+S, LPS z) at the top and the patient's right (-L, LPS x) on the left, from the direction
    expected = coronal[:: -1 if d[2, 2] > 0 else 1, :: -1 if d[0, 0] < 0 else 1]
    overlay, mask = tmp_path / "cor.png", tmp_path / "cor.nii.gz"
    argv = [
        "segment",
        colin,
        "--axis",
        "y",
        "--slice",
        120,
        "--box",
        "60,40,120,90",
        "-o",
        mask,
        "--overlay",
        overlay,
    ]
    assert _run(capsys, *argv)[0] == 0
    grey = np.asarray(Image.open(overlay))[..., 2].astype(np.float64)  # blue: barely touched by the red mask
    assert grey.shape == expected.shape
    assert np.corrcoef(grey.ravel(), _minmax(expected).ravel())[0, 1] > 0.97
    assert np.corrcoef(grey.ravel(), _minmax(coronal).ravel())[0, 1] < 0.5  # not as stored (upside down)
    # the label map itself keeps the voxel grid: the box's voxels, not the picture's
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))[:, 0, :]
    ys, xs = np.nonzero(written)
    assert 60 <= xs.min() and xs.max() <= 120 and 40 <= ys.min() and ys.max() <= 90


def test_preview_before_prompting(colin, tmp_path, capsys):
    preview = tmp_path / "sag.png"
    rc, out, _ = _run(capsys, "segment", colin, "--axis", "x", "--slice", 90, "--preview", preview)
    assert rc == 0 and "preview:" in out and "sagittal" in out
    pic = np.asarray(Image.open(preview))
    assert pic.shape[0] > 3 * 181 and pic.shape[1] > 3 * 217  # upscaled, with a margin for the grid
    rc, _, err = _run(capsys, "segment", colin, "--axis", "x", "--slice", 90)
    assert rc == 2 and "pass -o OUTPUT" in _error(err) and "--preview" in err


def test_orientation_of_each_plane():
    from imis.io import read_image, slice_volume
    from imis.io.display import orientation_of

    if not CH2.is_file():
        pytest.skip("Colin27 not installed")
    vol = read_image(CH2)  # LPS direction diag(-1, -1, 1): index x -> right, y -> anterior, z -> superior
    axial, coronal, sagittal = (orientation_of(slice_volume(vol, a, 80)) for a in "zyx")
    assert (axial.plane, axial.flip_rows, axial.flip_cols, axial.edges) == ("axial", True, True, "APRL")
    assert (coronal.plane, coronal.flip_rows, coronal.flip_cols, coronal.edges) == (
        "coronal",
        True,
        True,
        "SIRL",
    )
    assert (sagittal.plane, sagittal.flip_rows, sagittal.flip_cols, sagittal.edges) == (
        "sagittal",
        True,
        True,
        "SIAP",
    )
    assert not axial.transpose and orientation_of(read_image(CH2.parent / "ch2.nii.gz")).plane == "2d"


# 3D Slicer's default slice views (Libs/MRML/Core/vtkMRMLSliceNode.cxx, Initialize{Sagittal,Coronal}Matrix):
# the SliceToRAS columns 0 and 1 are the RAS directions of screen right and screen up (VTK's XY: origin
# bottom-left, y up). Sagittal: (0,-1,0) and (0,0,1); coronal: (-1,0,0) and (0,0,1).
SLICER_RIGHT_UP_RAS = {"x": ((0, -1, 0), (0, 0, 1)), "y": ((-1, 0, 0), (0, 0, 1))}


def _picture_centre(image, marker: np.ndarray) -> tuple[float, float]:
    """(column, row) in the written picture of the voxels of ``marker``: where the overlay changes it."""
    from imis.io.display import render_slice

    changed = np.any(render_slice(image, marker) != render_slice(image, None), axis=-1)
    rows, cols = np.nonzero(changed)
    assert rows.size, "the marker is not in the picture"
    return float(cols.mean()), float(rows.mean())


@pytest.mark.parametrize("axis", ["x", "y"])
def test_pictures_put_anatomy_where_3d_slicer_does(colin, axis):
    """On Colin27: points 40 mm along Slicer's screen-right and screen-up directions from the brain's
    centre, placed through the affine (SimpleITK, LPS), land right of / above the centre in our picture."""
    import SimpleITK as sitk

    from imis.io import read_image, slice_volume

    itk = sitk.ReadImage(str(colin))
    centre = np.array(itk.TransformIndexToPhysicalPoint((90, 108, 90)))  # LPS mm, mid-brain
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    index = (90, 108, 90)["xyz".index(axis)]
    image = slice_volume(read_image(colin), axis, index)
    take = {"x": lambda i: (i[2], i[1]), "y": lambda i: (i[2], i[0])}[axis]  # (row, col) in the slice

    def at(offset_ras) -> tuple[float, float]:
        point = centre + 40.0 * ras_to_lps * np.asarray(offset_ras, float)
        ijk = itk.TransformPhysicalPointToIndex(point.tolist())
        assert ijk["xyz".index(axis)] == index, "the direction leaves the slice"
        marker = np.zeros(image.spatial_shape, np.uint8)
        r, c = take(ijk)
        marker[r - 2 : r + 3, c - 2 : c + 3] = 1
        return _picture_centre(image, marker)

    right, up = SLICER_RIGHT_UP_RAS[axis]
    c0, r0 = at((0, 0, 0))
    cr, rr = at(right)
    cu, ru = at(up)
    assert cr > c0 + 30 and abs(rr - r0) < 3, f"Slicer's screen-right {right} is not on the right"
    assert ru < r0 - 30 and abs(cu - c0) < 3, f"Slicer's screen-up {up} is not at the top"


def test_sagittal_picture_has_the_frontal_lobe_on_the_left(colin):
    """AAL on Colin27, a left-hemisphere sagittal slice: the superior frontal gyrus (anterior) is left
    of the superior occipital gyrus, and above the cerebellum, as in Slicer's sagittal view."""
    from imis.io import read_image, slice_volume

    aal = read_image(COLIN / "aal.nii.gz").array
    image = slice_volume(read_image(colin), "x", 70)
    labels = aal[:, :, 70]
    frontal, occipital, cerebellum = (
        _picture_centre(image, (labels == v).astype(np.uint8)) for v in (3, 49, 91)
    )  # Frontal_Sup_L, Occipital_Sup_L, Cerebelum_Crus1_L
    assert frontal[0] < occipital[0] - 50
    assert frontal[1] < cerebellum[1] - 50


# -- single-mask PNGs: 0/255, prompts drawn, upscaled overlay -------------------------------------------
def test_png_mask_0_255_prompts_drawn_and_upscaled(ct_png, tmp_path, capsys):
    out, overlay = tmp_path / "liver.png", tmp_path / "liver_overlay.png"
    argv = ["segment", ct_png, "--box", LIVER_BOX, "--click", "150,280", "-o", out, "--overlay", overlay]
    assert _run(capsys, *argv, "--overlay-scale", 2)[0] == 0
    mask = np.asarray(Image.open(out))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    pic = np.asarray(Image.open(overlay))
    assert pic.shape == (1024, 1024, 3)
    x0, y0, x1, y1 = (int(v) for v in LIVER_BOX.split(","))
    edge = pic[2 * y0 + 10 : 2 * y1 - 10, 2 * x0]  # the box's left side, in yellow
    assert (edge == (255, 220, 0)).all(axis=1).mean() > 0.9
    assert (pic[2 * 280 + 4, 2 * 150 + 4] == (0, 230, 0)).all()  # the positive click, in green
    rc, _, err = _run(capsys, *argv, "--overlay-scale", 40)
    assert rc == 2 and "--overlay-scale must be from 1 to 16" in _error(err)


def test_png_masks_read_back_as_0_1():
    from imis.io import binary_png_values

    assert binary_png_values(np.array([[0, 255]], np.uint8)).tolist() == [[0, 1]]
    assert binary_png_values(np.array([[0, 1]], np.uint8)).tolist() == [[0, 1]]
    assert binary_png_values(np.array([[0, 3, 255]], np.uint8)).tolist() == [[0, 3, 255]]  # a label map


def test_restack_reads_a_0_255_prediction(colin, tmp_path, capsys):
    cases = _case_list(tmp_path, FOUR)
    cfg = _config(tmp_path, "unnamed_labels: ignore\naxes: [z]\n")
    assert _run(capsys, "prepare", cases, "--out", tmp_path / "d", "--config", cfg)[0] == 0
    from imis.data.formats import imed

    entry = imed.read_dataset(tmp_path / "d").entries[0]
    gt = imed.read_label(entry.label)[0]  # the first channel of one slice
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray((gt * 255).astype(np.uint8)).save(pred / f"{entry.stem}.png")  # as imis segment writes
    out = tmp_path / "restacked.nii.gz"
    rc, _, err = _run(
        capsys, "restack", tmp_path / "d", "--case", "colin_000", "--predictions", pred, "-o", out
    )
    assert rc == 0, err
    import SimpleITK as sitk

    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0).sum() == int(gt.sum())


# -- README and help ------------------------------------------------------------------------------------
def test_readme_thalamus_box_finds_the_right_thalamus(colin, tmp_path, capsys, monkeypatch):
    import SimpleITK as sitk
    from readme_helpers import commands, readme_blocks

    from imis.bench.metrics import dice

    argv = next(
        a
        for _, code in readme_blocks("bash")
        for a in commands(code)
        if "thalamus.nii.gz" in a and "--box" in a
    )
    assert argv[argv.index("--box") + 1] == "91,93,112,121" and argv[argv.index("--slice") + 1] == "80"
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    capsys.readouterr()
    pred = sitk.GetArrayFromImage(sitk.ReadImage("thalamus.nii.gz"))[0] > 0
    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(COLIN / "aal.nii.gz")))[80]
    # Thalamus_R: 0.849 with imis-lite stage 13 (0.86 with stage 12); the left one would score 0
    assert dice(pred, aal == 78) > 0.8


def test_help_paths_npz_and_report_output(btcv_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    seg = capsys.readouterr().out
    assert ".npz" in seg and "radiological" in seg and "--preview" in seg and "--overlay-scale" in seg
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    bench = capsys.readouterr().out
    assert " data/btcv-demo" not in bench and "../shared/data/btcv-demo" in bench
    run = tmp_path / "run"
    argv = [
        "bench",
        "--models",
        "grabcut",
        "--data",
        btcv_dir,
        "--limit-images",
        1,
        "-o",
        run,
        "--no-progress",
    ]
    assert _run(capsys, *argv)[0] == 0
    table = tmp_path / "tables" / "leaderboard.md"
    rc, out, _ = _run(capsys, "report", run, "-o", table)
    assert rc == 0 and table.read_text() in out and "| grabcut |" in table.read_text().replace("  ", " ")
    rc, _, err = _run(capsys, "report", tmp_path / "nothing", "-o", table)
    assert rc == 2 and "not a run directory" in _error(err)
