"""`imis bench --protocol volume / volume-iterative` on a small real volume set (Colin27 + AAL left thalamus)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imis.bench.volume import read_volume_dataset
from imis.cli import main
from imis.errors import InputError

TEMPLATES = Path("/usr/share/mricron/templates")


@pytest.fixture(scope="module")
def thalamus_msd(tmp_path_factory) -> Path:
    """An MSD-layout dataset: 5 axial slices of Colin27 through the left thalamus, its AAL label as 1."""
    import SimpleITK as sitk

    if not (TEMPLATES / "ch2.nii.gz").is_file():
        pytest.skip("mricron-data (Colin27, AAL) is not installed")
    root = tmp_path_factory.mktemp("msd")
    image = sitk.ReadImage(str(TEMPLATES / "ch2.nii.gz"))
    aal = sitk.ReadImage(str(TEMPLATES / "aal.nii.gz"))
    lab = sitk.GetArrayFromImage(aal)
    k = int(np.argmax((lab == 77).sum(axis=(1, 2))))
    crop = (slice(30, 180), slice(30, 160), slice(k - 2, k + 3))  # ITK (x, y, z) order
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    sitk.WriteImage(image[crop], str(root / "imagesTr" / "colin_001.nii.gz"))
    sitk.WriteImage(sitk.Cast(aal[crop] == 77, sitk.sitkUInt8), str(root / "labelsTr" / "colin_001.nii.gz"))
    meta = {
        "name": "colin-thalamus",
        "labels": {"0": "background", "1": "left thalamus"},
        "training": [{"image": "./imagesTr/colin_001.nii.gz", "label": "./labelsTr/colin_001.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_dataset_layouts(thalamus_msd, tmp_path):
    cases, names = read_volume_dataset(thalamus_msd)
    assert [c.case_id for c in cases] == ["colin_001"] and names == {1: "left thalamus"}
    pairs = tmp_path / "pairs.txt"
    img, lab = cases[0].image, cases[0].label
    pairs.write_text(f"# image,label\n{img},{lab}\n")
    assert read_volume_dataset(pairs)[0][0].label == lab
    pairs.write_text(f"{img}\n")
    with pytest.raises(InputError, match="line 1 is not 'image,label'"):
        read_volume_dataset(pairs)
    with pytest.raises(InputError, match="no dataset.json"):
        read_volume_dataset(tmp_path)


def test_unknown_seed_axis_or_refinement_is_refused(thalamus_msd, tmp_path, capsys):
    from imis.bench.volume import VolumeBenchConfig, run_volume_bench

    argv = ["bench", "--models", "imis-lite", "--data", str(thalamus_msd), "--protocol", "volume"]
    with pytest.raises(SystemExit):
        main([*argv, "--seed-axis", "w", "-o", str(tmp_path / "r")])
    assert "argument --seed-axis: invalid choice: 'w'" in capsys.readouterr().err
    config = VolumeBenchConfig(models=("imis-lite",), data=thalamus_msd, seed_axis="w")
    with pytest.raises(InputError, match=r"^--seed-axis: seed axis 'w': one of largest, z, y, x$"):
        run_volume_bench(config, tmp_path / "r", progress=False)
    config = VolumeBenchConfig(models=("imis-lite",), data=thalamus_msd, refine="twice")
    with pytest.raises(InputError, match=r"^--refine 'twice': one of none, orthogonal$"):
        run_volume_bench(config, tmp_path / "r", progress=False)


def test_volume_protocols(thalamus_msd, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["bench", "--models", "imis-lite", "--data", str(thalamus_msd), "--protocol", "volume"]
    # refinement re-encodes the other axes' slices (tested in tests/session/test_volume.py): off here
    fast = ["--refine", "none", "--seed-axis", "largest"]
    assert main([*argv, *fast, "--nsd-tolerance", "1", "--no-progress", "-o", str(run)]) == 0
    res = json.loads((run / "summary.json").read_text())["results"]
    assert set(res) == {"imis-lite / box", "imis-lite / click", "imis-lite / text"}
    assert res["imis-lite / box"]["dice"] > 0.7, res
    assert 0.0 <= res["imis-lite / box"]["nsd"] <= 1.0 and np.isfinite(
        res["imis-lite / box"]["hd95_median_mm"]
    )
    assert "| imis-lite / box | 1 |" in capsys.readouterr().out
    # the seed is the largest section over z, y, x: on five axial slices that is an axial one, recorded
    rows = [json.loads(x) for x in (run / "volume_results.jsonl").read_text().splitlines()]
    assert {r["axis"] for r in rows} == {"z"} and all(0 <= r["seed"] < 5 for r in rows)
    it = tmp_path / "iter"
    argv = ["bench", "--models", "imis-lite", "--data", str(thalamus_msd), "--protocol", "volume-iterative"]
    assert main([*argv, "--refine", "none", "--max-interactions", "2", "--no-progress", "-o", str(it)]) == 0
    res = json.loads((it / "summary.json").read_text())["results"]["imis-lite / box"]
    assert len(res["dice_per_interaction"]) == 2 and res["dice_per_interaction"][0] > 0.7
