"""Bad input: each broken case is reported with a clear cause while the others finish."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from imis.data.prepare import PrepareConfig, prepare
from imis.errors import InputError


def _write(path, array, origin=(0.0, 0.0, 0.0)):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def _volume(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(-200, 300, size=(6, 24, 24)).astype(np.int16)
    lab = np.zeros((6, 24, 24), dtype=np.uint8)
    lab[:, 4:14, 4:14] = 1
    lab[:, 15:20, 15:22] = 2
    return img, lab


@pytest.fixture
def bad_source(tmp_path):
    from imis.data.formats.msd import write_nnunet_raw

    names = ["good_a", "good_b", "float_ok", "truncated", "shape", "geometry", "float_lab", "nan", "empty"]
    cases = [(n, *_volume(i)) for i, n in enumerate(names)]
    root = tmp_path / "src"
    write_nnunet_raw(root, cases, {1: "liver", 2: "spleen"}, "CT")
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    blob = (img_dir / "truncated_0000.nii.gz").read_bytes()
    (img_dir / "truncated_0000.nii.gz").write_bytes(blob[: len(blob) // 2])
    _write(lab_dir / "shape.nii.gz", np.zeros((6, 24, 20), dtype=np.uint8) + 1)
    _write(lab_dir / "geometry.nii.gz", _volume(5)[1], origin=(0.0, 5.0, 0.0))
    flab = _volume(6)[1].astype(np.float32)
    flab[0, 0, 0] = 0.5
    _write(lab_dir / "float_lab.nii.gz", flab)
    _write(lab_dir / "float_ok.nii.gz", _volume(2)[1].astype(np.float32))  # whole numbers: accepted
    nan = _volume(7)[0].astype(np.float32)
    nan[2, 3, 4] = np.nan
    _write(img_dir / "nan_0000.nii.gz", nan)
    _write(lab_dir / "empty.nii.gz", np.zeros((6, 24, 24), dtype=np.uint8))
    return root


EXPECTED = {
    "truncated": "truncated|corrupt|incomplete",
    "shape": "shape",
    "geometry": "geometry",
    "float_lab": "non-integer",
    "nan": "NaN",
    "empty": "empty",
}


def test_broken_cases_reported_others_finish(bad_source, tmp_path, capsys):
    out = tmp_path / "ds"
    s = prepare(bad_source, out, progress=False, log=print)
    causes = {f["case"]: f["cause"] for f in s.failures}
    assert set(causes) == set(EXPECTED)
    for case, pattern in EXPECTED.items():
        assert case in causes[case]
        assert any(p.lower() in causes[case].lower() for p in pattern.split("|")), causes[case]
    assert s.cases_done == 3
    meta = json.loads((out / "dataset.json").read_text())
    listed = {e["case"] for e in meta["training"] + meta["test"]}
    assert listed == {"good_a", "good_b", "float_ok"}
    summary = json.loads((out / "summary.json").read_text())
    assert {f["case"] for f in summary["failures"]} == set(EXPECTED)
    printed = capsys.readouterr()
    assert (printed.out + printed.err).count("FAILED: case ") == len(EXPECTED)  # each cause once
    assert "failed: " + ", ".join(sorted(EXPECTED)) in printed.out
    # the failed cases are retried on a rerun (no done-marker); the good ones are skipped
    s2 = prepare(bad_source, out, progress=False)
    assert s2.cases_resumed == 3 and len(s2.failures) == len(EXPECTED)


def test_command_exit_code_when_cases_fail(bad_source, tmp_path, capsys):
    from imis.data.prepare.commands import register_prepare_commands

    parser = argparse.ArgumentParser(prog="imis")
    register_prepare_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", str(bad_source), "--out", str(tmp_path / "ds"), "--no-progress"])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "6 of 9 case(s) failed" in err
    # a missing source is a user error (ImisError), not a per-case failure
    args = parser.parse_args(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    with pytest.raises(InputError, match="no such file"):
        args.func(args)


def test_empty_labels_may_be_skipped(bad_source, tmp_path):
    s = prepare(bad_source, tmp_path / "ds", PrepareConfig(empty_labels="skip"), progress=False)
    assert "empty" not in {f["case"] for f in s.failures}
    assert [c["case"] for c in s.cases_skipped] == ["empty"]


def test_unreadable_dicom_in_a_case_list(tmp_path):
    img, lab = _volume(0)
    _write(tmp_path / "good" / "ct.nii.gz", img)
    _write(tmp_path / "good" / "seg.nii.gz", lab)
    _write(tmp_path / "bad" / "seg.nii.gz", lab)
    series = tmp_path / "bad" / "dicom"
    series.mkdir()
    for i in range(3):
        (series / f"IM{i:04d}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"not really dicom" * 10)
    (tmp_path / "bad2").mkdir()
    (tmp_path / "bad2" / "one.dcm").write_bytes(b"garbage" * 40)
    _write(tmp_path / "bad2" / "seg.nii.gz", lab)
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "name: mixed\nmodality: ct\nlabels: {1: liver, 2: spleen}\ncases:\n"
        "  - {case: good, image: good/ct.nii.gz, label: good/seg.nii.gz}\n"
        "  - {case: bad_series, image: bad/dicom, label: bad/seg.nii.gz}\n"
        "  - {case: bad_file, image: bad2/one.dcm, label: bad2/seg.nii.gz}\n"
    )
    s = prepare(cases, tmp_path / "ds", progress=False)
    causes = {f["case"]: f["cause"] for f in s.failures}
    assert set(causes) == {"bad_series", "bad_file"}
    assert "DICOM" in causes["bad_series"] and "case bad_series" in causes["bad_series"]
    assert "DICOM" in causes["bad_file"] and "one.dcm" in causes["bad_file"]
    assert s.cases_done == 1 and s.counts["slices_kept"] > 0


def test_bad_case_list_and_labels(tmp_path):
    p = tmp_path / "cases.yaml"
    p.write_text("cases: [{image: a.nii.gz}]\n")
    with pytest.raises(InputError, match="'case' and 'image'"):
        prepare(p, tmp_path / "ds", progress=False)
    p.write_text("labels: {1: liver}\nsomething: 1\ncases: []\n")
    with pytest.raises(InputError, match="unknown key"):
        prepare(p, tmp_path / "ds", progress=False)
    img, lab = _volume(0)
    _write(tmp_path / "ct.nii.gz", img)
    _write(tmp_path / "seg.nii.gz", lab)
    p.write_text("labels: {1: liver}\ncases: [{case: a, image: ct.nii.gz, label: seg.nii.gz}]\n")
    s = prepare(p, tmp_path / "ds2", progress=False)  # value 2 is not named: a per-case error
    assert (
        "1 value(s) 2 that" in s.failures[0]["cause"] and "unnamed_labels: ignore" in s.failures[0]["cause"]
    )
    s = prepare(p, tmp_path / "ds3", PrepareConfig(ignore_labels=("2",)), progress=False)
    assert s.ok and s.counts["slices_kept"] > 0
