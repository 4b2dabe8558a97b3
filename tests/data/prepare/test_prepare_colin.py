"""Real data: Colin27 + AAL as an nnU-Net raw folder, prepared along 3 axes, then restacked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from prepare_helpers import CORNERS, crop

from imis.errors import InputError


def _expected_slice(aal_slice: np.ndarray) -> np.ndarray:
    """AAL slice with the labels the 1/1000 rule drops set to 0, computed independently of the pipeline."""
    values, counts = np.unique(aal_slice, return_counts=True)
    small = [v for v, n in zip(values, counts, strict=True) if v != 0 and n * 1000 < aal_slice.size]
    return np.where(np.isin(aal_slice, small), 0, aal_slice)


def test_prepare_then_restack_equals_aal_on_every_kept_slice(colin_prepared, colin_aal, tmp_path):
    from imis.data.prepare import restack_to_file
    from imis.io import AXES, read_image

    out, summary = colin_prepared
    assert summary.ok and summary.cases == 2 and summary.cases_done == 2
    _, aal, _ = colin_aal
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    checked = 0
    for k, case in enumerate(["colin_000", "colin_001"]):
        truth = crop(aal, CORNERS[k])
        for axis in ("z", "y", "x"):
            path = tmp_path / f"{case}_{axis}.nii.gz"
            res = restack_to_file(out, case, path, axis)
            back = read_image(path)
            # written in the source geometry: it overlays the source volume
            assert back.array.shape == truth.array.shape
            assert back.geometry.allclose(truth.geometry)
            kept = {r["index"] for r in records if r["case"] == case and r["axis"] == axis}
            assert res.slices == len(kept) > 0
            ax = AXES[axis]
            for i in range(truth.array.shape[ax]):
                got = np.take(back.array, i, axis=ax)
                want = _expected_slice(np.take(truth.array, i, axis=ax))
                if i in kept:
                    np.testing.assert_array_equal(got, want, err_msg=f"{case} {axis}={i}")
                    checked += 1
                else:  # an excluded slice: no mask survived the rules
                    assert not got.any() and not want.any(), f"{case} {axis}={i} wrongly excluded"
    assert checked == summary.counts["slices_kept"]


def test_dataset_is_imed_layout_with_provenance(colin_prepared):
    from imis.data.formats import imed

    out, summary = colin_prepared
    ds = imed.read_dataset(out)
    assert len(ds.entries) == summary.counts["slices_kept"]
    assert len(ds.labels) == 116
    assert ds.labels[77] == "thalamus_left" and ds.labels[78] == "thalamus_right"
    assert ds.modality == "mri"
    # case-level split: one of the two cases is the test split
    test_cases = {e.extra["case"] for e in ds.split("test")}
    train_cases = {e.extra["case"] for e in ds.split("train")}
    assert len(test_cases) == 1 and not test_cases & train_cases
    entry = ds.split("train")[0]
    sample = imed.read_sample(ds, entry)
    assert sample.image.dtype == np.uint8 and sample.image.ndim == 3
    assert (sample.image[..., 0] == sample.image[..., 2]).all()  # grey in RGB, as released
    assert sample.provenance["case"] == entry.extra["case"] and sample.provenance["axis"] in "zyx"
    assert sample.masks and all(m.sum() * 1000 >= m.size for m in sample.masks.values())
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["imis"]["targets"]["77"]["group"] == "Head and Neck"
    assert meta["imis"]["targets"]["77"]["laterality"] == "left"
    rec = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    for key in ("source", "case", "axis", "index", "spacing", "origin", "direction", "window", "split"):
        assert key in rec, key
    assert rec["window"]["method"] == "percentile" and rec["window"]["percentiles"] == [0.5, 99.5]
    summary_json = json.loads((out / "summary.json").read_text())
    assert summary_json["slices_kept"] == summary.counts["slices_kept"]
    assert summary_json["masks_excluded_small"] > 0  # the crop edges hold tiny parts of regions


def test_slices_follow_np_take_on_all_axes(colin_prepared, colin_aal):
    from imis.data.formats import imed

    out, _ = colin_prepared
    colin, _, _ = colin_aal
    img = crop(colin, CORNERS[0]).array
    rec = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    lo, hi = rec["colin_000_z_0030"]["window"]["low"], rec["colin_000_z_0030"]["window"]["high"]
    for stem, sl in (
        ("colin_000_z_0030", img[30]),
        ("colin_000_y_0035", img[:, 35]),
        ("colin_000_x_0030", img[:, :, 30]),
    ):
        png = imed.read_image(out / rec[stem]["image"])[..., 0]
        want = np.rint((np.clip(sl.astype(float), lo, hi) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
        np.testing.assert_array_equal(png, want)


def test_rerun_resumes_and_changes_nothing(colin_prepared, colin_source):
    from imis.data.prepare import prepare

    out, _ = colin_prepared
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    summary = prepare(colin_source, out, progress=False)
    assert summary.cases_resumed == 2 and summary.ok
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert before == after


def test_other_settings_refused_on_resume(colin_prepared, colin_source):
    from imis.data.prepare import PrepareConfig, prepare

    out, _ = colin_prepared
    with pytest.raises(InputError, match="different settings.*axes"):
        prepare(colin_source, out, PrepareConfig(axes=("z",)), progress=False)


def test_refuses_foreign_output_folder(colin_source, tmp_path):
    from imis.data.prepare import prepare

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a dataset made by `imis prepare`"):
        prepare(colin_source, tmp_path, progress=False)


def _parser():
    from imis.data.prepare.commands import register_prepare_commands

    parser = argparse.ArgumentParser(prog="imis")
    register_prepare_commands(parser.add_subparsers(dest="command"))
    return parser


def test_commands_help_and_restack_cli(colin_prepared, tmp_path, capsys):
    parser = _parser()
    for cmd in ("prepare", "restack"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text
    out, _ = colin_prepared
    target = tmp_path / "r.nii.gz"
    args = parser.parse_args(["restack", str(out), "--case", "colin_001", "--axis", "y", "-o", str(target)])
    assert args.func(args) == 0 and target.is_file()
    assert "y slice(s) placed" in capsys.readouterr().out
    args = parser.parse_args(["restack", str(out), "--case", "nope", "-o", str(target)])
    with pytest.raises(InputError, match="no case 'nope'; cases: colin_000, colin_001"):
        args.func(args)


def test_restack_predictions(colin_prepared, tmp_path):
    """Predictions named by image stem (PNG label maps of dataset ids) restack like the masks."""
    from PIL import Image

    from imis.data.formats import imed
    from imis.data.prepare import restack

    out, _ = colin_prepared
    ref = restack(out, "colin_000", "x")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    recs = [r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())]
    recs = [r for r in recs if r["case"] == "colin_000" and r["axis"] == "x"]
    for r in recs[:-3]:  # the last three have no prediction
        masks = imed.read_label(out / r["label"])
        ids = np.zeros(masks.shape[1:], dtype=np.uint8)
        for c in range(masks.shape[0]):
            ids[masks[c]] = c + 1
        Image.fromarray(ids).save(pred_dir / f"{r['id']}.png")
    res = restack(out, "colin_000", "x", predictions=pred_dir)
    assert res.missing == 3 and res.slices == len(recs) - 3
    done = [r["index"] for r in recs[:-3]]
    np.testing.assert_array_equal(res.labels[:, :, done], ref.labels[:, :, done])
    assert not res.labels[:, :, [r["index"] for r in recs[-3:]]].any()
    ids_res = restack(out, "colin_000", "x", values="dataset")
    assert ids_res.labels.max() <= 116


def test_write_slice_matches_imed_write_sample(tmp_path):
    """Our channel-map writer produces the IMed writer's bytes and entry."""
    from imis.data.formats import imed
    from imis.data.prepare.channels import write_slice

    rng = np.random.default_rng(0)
    chmap = rng.integers(-1, 7, size=(23, 31)).astype(np.int16)
    chmap[:, :3] = -1
    image = rng.integers(0, 256, size=(23, 31), dtype=np.uint8)
    masks = np.stack([chmap == c for c in range(9)])  # channels 7, 8 empty
    a = write_slice(tmp_path / "a", "s_z_0001", np.repeat(image[..., None], 3, 2), chmap, 9)
    b = imed.write_sample(tmp_path / "b", "s_z_0001", image, masks)
    assert a == b
    for rel in b.values():
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_settings_file_records_layout(colin_prepared):
    out, _ = colin_prepared
    settings = json.loads((out / "prepare.json").read_text())
    assert settings["config"]["axes"] == ["z", "y", "x"]
    assert len(settings["layout"]) == 116
    assert settings["layout"][76]["values"] == [77]
    assert Path(settings["source"]).name == "Dataset001_Colin"


def test_stats_on_btcv_and_the_prepared_colin_dataset(colin_prepared, btcv_dir, tmp_path):
    """`imis stats` over btcv-demo and a dataset made by `imis prepare`: counts computed independently."""
    from imis.cli import main
    from imis.data.formats import imed

    root = colin_prepared[0]
    out = tmp_path / "report"
    assert main(["stats", str(btcv_dir), str(root), "-o", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    for d in (btcv_dir, root):
        ds = imed.read_dataset(d)
        n_gt = sum(int(imed.read_label(e.label).any(axis=(1, 2)).sum()) for e in ds.entries)
        row = next(r for r in stats["datasets"] if r["images"] == len(ds.entries) and r["gt_masks"] == n_gt)
        assert row["failures"] == 0
    assert len(list(out.glob("*.png"))) >= 5 and (out / "report.md").is_file()
