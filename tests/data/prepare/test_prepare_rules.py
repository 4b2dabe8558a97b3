"""The exclusion rules, components, intensities and configuration, on constructed edge cases."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from imis.data.prepare import PrepareConfig, load_config, prepare
from imis.data.prepare.filters import aspect_ratio_ok, exact, large_enough, split_components
from imis.data.prepare.intensity import IntensityWindow, choose_window, to_uint8
from imis.errors import InputError


def _source(root, cases, labels, modality="CT"):
    from imis.data.formats.msd import write_nnunet_raw

    write_nnunet_raw(root, cases, labels, modality)
    return root


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# -- filters -------------------------------------------------------------------------------------------
def test_aspect_ratio_exactly_one_and_a_half_is_kept():
    assert aspect_ratio_ok(200, 300) and aspect_ratio_ok(300, 200)
    assert not aspect_ratio_ok(200, 301) and not aspect_ratio_ok(301, 200)
    assert aspect_ratio_ok(1, 1) and aspect_ratio_ok(2, 3) and not aspect_ratio_ok(2, 4)
    assert aspect_ratio_ok(10, 20, max_ratio=2.0) and not aspect_ratio_ok(10, 21, max_ratio=2.0)


def test_foreground_exactly_one_thousandth_is_kept():
    assert exact(0.001) == Fraction(1, 1000)  # not the binary float just above 1/1000
    assert large_enough(10, 10_000) and not large_enough(9, 10_000)
    assert large_enough(1, 1000) and not large_enough(0, 1000)
    np.testing.assert_array_equal(large_enough(np.array([9, 10, 11]), 10_000), [False, True, True])
    assert large_enough(1, 10**9, 0.0) and not large_enough(0, 10, 0.0)


def test_split_components_order_and_connectivity():
    m = np.zeros((10, 10), dtype=bool)
    m[0:2, 0:2] = True  # 4 px
    m[5:9, 5:9] = True  # 16 px
    m[2, 2] = True  # touches the first blob diagonally only
    comps8 = split_components(m, 8)
    assert [int(c.sum()) for c in comps8] == [16, 5]
    comps4 = split_components(m, 4)
    assert [int(c.sum()) for c in comps4] == [16, 4, 1]
    assert split_components(np.zeros((3, 3), bool)) == []


def test_pipeline_aspect_ratio_edge(tmp_path):
    """(z, y, x) = (20, 20, 30): z and y slices are 20 x 30 (exactly 1.5, kept); 20 x 31 is excluded."""
    cases = []
    for name, nx in (("a15", 30), ("b155", 31)):
        img = np.full((20, 20, nx), 100, dtype=np.int16)
        lab = np.zeros((20, 20, nx), dtype=np.uint8)
        lab[2:18, 2:18, 2 : nx - 2] = 1
        cases.append((name, img, lab))
    src = _source(tmp_path / "src", cases, {1: "liver"})
    cfg = PrepareConfig(test_fraction=0.0)
    s = prepare(src, tmp_path / "out", cfg, progress=False)
    assert s.ok
    recs = _manifest(tmp_path / "out")
    per = {(r["case"], r["axis"]) for r in recs}
    assert {("a15", "z"), ("a15", "y"), ("a15", "x")} <= per
    assert ("b155", "z") not in per and ("b155", "y") not in per and ("b155", "x") in per
    # b155: 20 z + 20 y slices excluded for the ratio (20 x 31)
    assert s.counts["slices_excluded_aspect_ratio"] == 40


def test_pipeline_one_thousandth_edge_and_no_mask_slices(tmp_path):
    """100 x 100 slices: a 10-pixel mask is kept, a 9-pixel mask dropped; a slice left empty is excluded."""
    img = np.zeros((3, 100, 100), dtype=np.int16)
    img[:, 20:80, 20:80] = 50
    lab = np.zeros((3, 100, 100), dtype=np.uint8)
    lab[0, 10, 10:20] = 1  # 10 px: kept
    lab[0, 50, 10:19] = 2  # 9 px: dropped
    lab[1, 60, 10:19] = 1  # 9 px alone: slice 1 left without mask
    src = _source(tmp_path / "src", [("c", img, lab)], {1: "liver", 2: "spleen"})
    s = prepare(src, tmp_path / "out", PrepareConfig(axes=("z",)), progress=False)
    recs = _manifest(tmp_path / "out")
    assert [r["index"] for r in recs] == [0]
    assert recs[0]["masks"] == [{"label": 1, "value": 1, "pixels": 10}]
    assert s.counts["masks_excluded_small"] == 2
    assert s.counts["slices_excluded_no_mask"] == 2  # slice 1 (mask too small) and slice 2 (empty)
    # the threshold is configurable and exact: 9/10000 kept with min_mask_fraction 0.0009
    s2 = prepare(src, tmp_path / "out2", PrepareConfig(axes=("z",), min_mask_fraction=0.0009), progress=False)
    assert s2.counts["masks_kept"] == 3 and s2.counts["slices_kept"] == 2


def test_pipeline_connected_components(tmp_path):
    img = np.zeros((1, 100, 100), dtype=np.int16)
    lab = np.zeros((1, 100, 100), dtype=np.uint8)
    lab[0, 5:15, 5:15] = 1  # 100 px
    lab[0, 50:70, 50:70] = 1  # 400 px: component 1
    lab[0, 90, 90:95] = 1  # 5 px: below 1/1000
    lab[0, 30:40, 80:90] = 2  # not split
    src = _source(tmp_path / "src", [("c", img, lab)], {1: "lung nodule", 2: "liver"})
    cfg = PrepareConfig(axes=("z",), split_components=("pulmonary nodule",), max_components=3)
    # the configured name is a synonym: it matches the resolved target "lung nodule"
    s = prepare(src, tmp_path / "out", cfg, progress=False)
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["labels"] == {
        "0": "background",
        "1": "lung_nodule_1",
        "2": "lung_nodule_2",
        "3": "lung_nodule_3",
        "4": "liver",
    }
    (rec,) = _manifest(tmp_path / "out")
    assert [(m["label"], m["pixels"], m.get("component")) for m in rec["masks"]] == [
        (1, 400, 1),
        (2, 100, 2),
        (4, 100, None),
    ]
    assert s.counts["masks_excluded_small"] == 1 and s.counts["labels_split"] == 1
    cfg1 = PrepareConfig(axes=("z",), split_components=True, max_components=1)
    s1 = prepare(src, tmp_path / "out1", cfg1, progress=False)
    assert s1.counts["masks_excluded_component_limit"] == 1 and s1.counts["masks_kept"] == 2


def test_synonyms_merge_into_one_channel_and_restack_value(tmp_path):
    from imis.data.prepare import restack

    img = np.zeros((2, 40, 40), dtype=np.int16)
    lab = np.zeros((2, 40, 40), dtype=np.uint8)
    lab[:, 5:15, 5:15] = 1
    lab[:, 20:30, 20:30] = 3
    lab[:, 30:35, 5:10] = 2
    src = _source(
        tmp_path / "src", [("c", img, lab)], {1: "pulmonary nodule", 2: "Kidney_L", 3: "lung nodule"}
    )
    prepare(src, tmp_path / "out", PrepareConfig(axes=("z",)), progress=False)
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "lung_nodule", "2": "kidney_left"}
    assert meta["imis"]["targets"]["1"]["source_values"] == [1, 3]
    back = restack(tmp_path / "out", "c", "z")
    np.testing.assert_array_equal(back.labels, np.where(lab == 3, 1, lab))  # merged: smallest value


# -- intensities ---------------------------------------------------------------------------------------
def test_ct_window_presets():
    hu = np.array([-2000, -160, 40, 240, 3000], dtype=np.int16)
    cfg = PrepareConfig()
    win = choose_window(hu, cfg.window_for("ct"))
    assert (win.name, win.low, win.high) == ("soft_tissue", -160.0, 240.0)
    np.testing.assert_array_equal(to_uint8(hu, win), [0, 0, 128, 255, 255])  # 127.5 rounds to even
    lung = choose_window(hu, PrepareConfig(ct_window="lung").window_for("CT"))
    assert (lung.low, lung.high) == (-1350.0, 150.0)
    custom = PrepareConfig.from_mapping({"ct_window": {"width": 100, "level": 0}}).window_for("ct")
    assert custom == ("custom", 100.0, 0.0)
    for name, (w, level) in {"bone": (2500, 480), "brain": (80, 40), "liver": (150, 90)}.items():
        assert PrepareConfig(ct_window=name).window_for("ct") == (name, w, level)
    assert PrepareConfig(ct_window="percentile").window_for("ct") is None
    assert PrepareConfig().window_for("mr") is None


def test_percentile_scaling_and_dtypes():
    rng = np.random.default_rng(1)
    vol = rng.normal(300, 50, size=(8, 16, 16))
    win = choose_window(vol, None, (0.5, 99.5))
    lo, hi = np.percentile(vol, [0.5, 99.5])
    assert (win.low, win.high) == (lo, hi)
    u8 = to_uint8(vol, win)
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    ref = np.rint((np.clip(vol, lo, hi) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    np.testing.assert_array_equal(u8, ref)
    ints = vol.astype(np.int16)  # the look-up-table path gives the float path's result
    w2 = choose_window(ints, None)
    np.testing.assert_array_equal(to_uint8(ints, w2), to_uint8(ints.astype(np.float64), w2))
    flat = to_uint8(np.full((2, 2), 7.0), IntensityWindow("percentile", 7.0, 7.0))
    assert not flat.any()  # a constant image maps to 0


# -- configuration -------------------------------------------------------------------------------------
def test_config_unknown_key_and_bad_values(tmp_path):
    p = tmp_path / "prepare.yaml"
    p.write_text("axis: [z]\n")
    with pytest.raises(InputError, match=r"unknown key 'axis' \(did you mean 'axes'\?\)"):
        load_config(p)
    for text, msg in (
        ("axes: [z, q]\n", "axes"),
        ("ct_window: mediastinum\n", "ct_window"),
        ("percentiles: [99, 1]\n", "percentiles"),
        ("max_aspect_ratio: 0.5\n", "max_aspect_ratio"),
        ("connectivity: 6\n", "connectivity"),
        ("labels: {one: liver}\n", "labels"),
        ("seed: 1.5\n", "seed"),
        ("axes: [z\n", "not valid YAML"),
        ("- 1\n", "mapping"),
    ):
        p.write_text(text)
        with pytest.raises(InputError, match=msg):
            load_config(p)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_values_and_relative_paths(tmp_path):
    p = tmp_path / "cfg" / "prepare.yaml"
    p.parent.mkdir()
    p.write_text(
        "axes: z\nct_window: Soft Tissue\nsplit_components: [lung nodule]\nlabels: {1: liver}\n"
        "vocabulary: extra.yaml\nleakage_datasets: [../other]\nempty_labels: skip\n"
    )
    cfg = load_config(p)
    assert cfg.axes == ("z",) and cfg.ct_window == "soft_tissue" and cfg.labels == {1: "liver"}
    assert cfg.vocabulary == str(p.parent / "extra.yaml")
    assert cfg.leakage_datasets == (str(p.parent / "../other"),)
    assert cfg.splits_components("Lung_Nodule") and not cfg.splits_components("liver")
    assert load_config(None) == PrepareConfig()
    assert cfg.to_json()["labels"] == {"1": "liver"}


def test_two_dimensional_images_from_a_case_list(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("p1", "p2"):
        Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        lab = np.zeros((40, 50), dtype=np.uint8)
        lab[5:20, 5:30] = 1
        Image.fromarray(lab).save(tmp_path / f"{name}_seg.png")
    (tmp_path / "cases.yaml").write_text(
        "modality: dermoscopy\nlabels: {1: skin lesion}\ncases:\n"
        "  - {case: p1, image: p1.png, label: p1_seg.png}\n  - {case: p2, image: p2.png, label: p2_seg.png}\n"
    )
    s = prepare(tmp_path / "cases.yaml", tmp_path / "out", progress=False)
    assert s.ok and s.counts["slices_kept"] == 2
    recs = _manifest(tmp_path / "out")
    assert [r["id"] for r in recs] == ["p1", "p2"] and recs[0]["axis"] == "2d"
    assert recs[0]["window"]["method"] == "none"  # 8-bit colour is kept as it is
    from imis.data.formats import imed

    np.testing.assert_array_equal(
        imed.read_image(tmp_path / "out" / recs[0]["image"]), np.asarray(Image.open(tmp_path / "p1.png"))
    )


def test_several_input_channels(tmp_path):
    import shutil

    img, lab = np.zeros((2, 30, 30), np.int16), np.zeros((2, 30, 30), np.uint8)
    img[:, 10:20, 10:20] = 100
    lab[:, 5:25, 5:25] = 1
    src = _source(tmp_path / "src", [("c", img, lab)], {1: "brain"}, modality="T1")
    shutil.copy(src / "imagesTr" / "c_0000.nii.gz", src / "imagesTr" / "c_0001.nii.gz")
    s = prepare(src, tmp_path / "out", PrepareConfig(axes=("z",), channels=(0, 1)), progress=False)
    assert s.ok
    assert [r["id"] for r in _manifest(tmp_path / "out")] == [
        "c_z_0000_c0",
        "c_z_0001_c0",
        "c_z_0000_c1",
        "c_z_0001_c1",
    ]
    s = prepare(src, tmp_path / "out2", PrepareConfig(axes=("z",), channels=(2,)), progress=False)
    assert "channel 2 does not exist" in s.failures[0]["cause"]


def test_ignore_labels_by_name_or_value(tmp_path):
    img, lab = np.zeros((2, 30, 30), np.int16), np.zeros((2, 30, 30), np.uint8)
    lab[:, 2:10, 2:10] = 1
    lab[:, 12:20, 12:20] = 2
    lab[:, 22:28, 2:10] = 3
    src = _source(tmp_path / "src", [("c", img, lab)], {1: "liver", 2: "Spleen", 3: "kidney_left"})
    s = prepare(
        src, tmp_path / "out", PrepareConfig(axes=("z",), ignore_labels=("spleen", "3")), progress=False
    )
    assert s.ok
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver"}
    # a name without laterality ignores both sides
    s = prepare(
        src, tmp_path / "out2", PrepareConfig(axes=("z",), ignore_labels=("kidneys",)), progress=False
    )
    meta = json.loads((tmp_path / "out2" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "spleen"} and s.ok
