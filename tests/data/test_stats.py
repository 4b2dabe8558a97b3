"""`imis stats` on btcv-demo + a small Colin27/AAL dataset: report, figures and counts (computed here apart)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import sparse

from imis.data.commands import register_stats_command
from imis.data.formats import imed
from imis.data.stats_report import FIGURES
from imis.io import read_image

TEMPLATES = Path("/usr/share/mricron/templates")
SLICES = (60, 90, 120)


@pytest.fixture(scope="module")
def colin_dataset(tmp_path_factory):
    """A small IMed-361M dataset of Colin27 axial slices with AAL masks; imask = AAL ids // 4."""
    paths = [TEMPLATES / n for n in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")]
    if not all(p.is_file() for p in paths):
        pytest.skip(
            "Colin27/AAL absent at /usr/share/mricron/templates (install the Debian package mricron-data)"
        )
    ch2, aal = read_image(paths[0]).array, read_image(paths[1]).array
    names = {int(p[0]): p[1] for p in (ln.split() for ln in paths[2].read_text().splitlines()) if len(p) >= 2}
    root = tmp_path_factory.mktemp("colin_ds")
    entries = []
    for z in SLICES:
        lab = aal[z]
        masks = np.stack([lab == v for v in sorted(names)])
        entries.append(imed.write_sample(root, f"colin_{z}", ch2[z], masks, lab // 4))
    broken = {"image": entries[0]["image"], "label": "label/x___missing.(116, 217, 181, 1).npz"}
    imed.write_dataset_json(
        root, "Colin27", "mr_Colin27", {0: "mr"}, names, entries[:2], [entries[2], broken]
    )
    return root, aal, names


def _parser():
    parser = argparse.ArgumentParser(prog="imis")
    register_stats_command(parser.add_subparsers(dest="command"))
    return parser


def test_stats_help_has_example(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["stats", "--help"])
    out = capsys.readouterr().out
    assert "REPORT_DIR" in out and "imis stats ../shared/data/btcv-demo -o" in out


def _expected_btcv(btcv_dir: Path):
    meta = json.loads((btcv_dir / "dataset.json").read_text())
    entries = meta["training"] + meta["test"]
    gt = imask = 0
    per_name: dict[str, int] = {}
    for e in entries:
        mat = sparse.load_npz(btcv_dir / e["label"])
        nonempty = mat.getnnz(axis=1) > 0
        gt += int(nonempty.sum())
        for c in np.flatnonzero(nonempty):
            per_name[meta["labels"][str(c + 1)]] = per_name.get(meta["labels"][str(c + 1)], 0) + 1
        ids = np.load((btcv_dir / e["imask"]).with_suffix(".npz"))["imask"].ravel()
        imask += int(np.count_nonzero(np.bincount(ids)[1:]))
    return len(entries), gt, imask, per_name


def test_stats_report_counts(btcv_dir, colin_dataset, tmp_path, capsys):
    colin_root, aal, names = colin_dataset
    out = tmp_path / "report"
    args = _parser().parse_args(["stats", str(btcv_dir), str(colin_root), "-o", str(out), "--no-progress"])
    rc = args.func(args)
    assert rc == 1  # the broken Colin entry is reported; everything else is counted
    printed = capsys.readouterr().out
    assert "BTCV" in printed and "Colin27" in printed and "report.md" in printed

    assert (out / "report.md").is_file() and "(b) Targets per anatomical group" in (
        out / "report.md"
    ).read_text()
    for name in FIGURES.values():
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    stats = json.loads((out / "stats.json").read_text())

    n_btcv, gt_btcv, im_btcv, per_name = _expected_btcv(btcv_dir)
    # Colin: distinct AAL labels per slice; imask ids = distinct non-zero (AAL // 4); the broken 4th entry fails
    gt_colin = sum(len(np.unique(aal[z])) - 1 for z in SLICES)
    im_colin = sum(len(set(np.unique(aal[z] // 4).tolist()) - {0}) for z in SLICES)
    btcv, colin = stats["datasets"]
    assert (btcv["name"], btcv["format"], btcv["images"], btcv["gt_masks"], btcv["imask_masks"]) == (
        "BTCV",
        "imed",
        n_btcv,
        gt_btcv,
        im_btcv,
    )
    assert btcv["splits"] == {"test": 14, "train": 178} and btcv["failures"] == 0
    assert (colin["images"], colin["gt_masks"], colin["imask_masks"], colin["failures"]) == (
        3,
        gt_colin,
        im_colin,
        1,
    )
    assert stats["failures"][0]["dataset"] == "Colin27" and "not found" in stats["failures"][0]["error"]
    t = stats["totals"]
    assert (t["images"], t["gt_masks"], t["imask_masks"], t["failures"]) == (
        n_btcv + 3,
        gt_btcv + gt_colin,
        im_btcv + im_colin,
        1,
    )
    assert stats["modalities"]["ct"] == {
        "images": n_btcv,
        "gt_masks": gt_btcv,
        "imask_masks": im_btcv,
        "images_with_imask": n_btcv,
    }
    assert stats["modalities"]["mr"]["gt_masks"] == gt_colin

    mpi = stats["masks_per_image"]
    assert mpi["gt"]["total"] == gt_btcv + gt_colin and sum(mpi["gt"]["histogram"].values()) == n_btcv + 3
    assert mpi["imask"]["total"] == im_btcv + im_colin

    res = stats["resolution"]
    assert res["sizes"] == {"512x512": n_btcv, "181x217": 3}  # width x height
    assert (
        res["counts"][res["bins"].index("512-1023")] == n_btcv
        and res["counts"][res["bins"].index("128-255")] == 3
    )

    cov = stats["coverage"]
    assert sum(cov["gt"]) == gt_btcv + gt_colin and sum(cov["imask"]) == im_btcv + im_colin
    smallest = min(int((aal[z] == v).sum()) for z in SLICES for v in np.unique(aal[z]) if v)
    assert cov["gt"][0] >= (1 if smallest < 0.001 * 181 * 217 else 0)

    groups = stats["groups"]
    assert list(groups)[:6] == ["Head and Neck", "Thorax", "Skeleton", "Abdomen", "Pelvis", "Lesions"]
    assert groups["Thorax"] == {
        "targets": ["esophagus"],
        "n_targets": 1,
        "gt_masks": per_name.get("esophagus", 0),
        "images": per_name.get("esophagus", 0),
    }
    assert groups["Abdomen"]["gt_masks"] == gt_btcv - per_name.get("esophagus", 0)
    assert (
        groups["Abdomen"]["n_targets"] == 10
    )  # 13 BTCV labels, kidney and adrenal gland sides merged, esophagus in Thorax
    aal_regions = {
        names[int(v)].removesuffix("_L").removesuffix("_R") for z in SLICES for v in np.unique(aal[z]) if v
    }
    assert groups["Head and Neck"]["gt_masks"] == gt_colin and groups["Head and Neck"]["n_targets"] == len(
        aal_regions
    )
    assert stats["targets"]["kidney"]["masks"] == per_name.get("kidney_left", 0) + per_name.get(
        "kidney_right", 0
    )
    assert stats["unknown_names"] == {}
