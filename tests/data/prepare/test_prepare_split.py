"""Case-level split (90/10, at most 3000 test images) and the leakage check."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from imis.data.prepare import PrepareConfig, prepare
from imis.data.prepare.split import check_leakage, image_digest, split_cases


def test_one_case_only_goes_to_training():
    assert split_cases({"only": 120}) == (["only"], [])
    assert split_cases({}) == ([], [])


def test_two_cases_and_ninety_ten():
    train, test = split_cases({"a": 10, "b": 10})
    assert len(test) == 1 and len(train) == 1 and set(train) | set(test) == {"a", "b"}
    cases = {f"c{i:02d}": 50 for i in range(20)}
    train, test = split_cases(cases, seed=3)
    assert len(test) == 2 and len(train) == 18 and not set(train) & set(test)
    # deterministic: the same seed and case ids give the same split, whatever the mapping order
    assert split_cases(dict(reversed(list(cases.items()))), seed=3) == (train, test)
    assert any(split_cases(cases, seed=s)[1] != test for s in range(4, 10))
    assert split_cases(cases, test_fraction=0.0) == (sorted(cases), [])
    assert split_cases({"a": 5, "b": 0}) == (["a", "b"], [])  # a case without images is no test case


def test_more_than_3000_test_images_is_capped_at_case_level():
    cases = {f"c{i:02d}": 2000 for i in range(20)}  # 2 test cases wanted = 4000 images
    train, test = split_cases(cases, seed=0)
    assert len(test) == 1 and sum(cases[c] for c in test) <= 3000
    assert len(train) == 19
    # a single case larger than the limit never enters the test split; a smaller one is taken instead
    big = {"huge": 3500, "small": 100, "other": 100}
    for seed in range(10):
        train, test = split_cases(big, seed=seed)
        assert "huge" not in test and len(test) == 1
    train, test = split_cases({"huge": 3001, "also": 3002}, seed=0)
    assert test == [] and train == ["also", "huge"]
    assert split_cases({"a": 3000, "b": 1}, seed=1, max_test_images=3000)[1] in (["a"], ["b"])


def test_image_digest_grey_equals_rgb():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert image_digest(g) == image_digest(np.repeat(g[..., None], 3, 2))
    assert image_digest(g) != image_digest(g.T.copy())  # the shape counts
    rgb = np.repeat(g[..., None], 3, 2)
    rgb[0, 0, 1] = 99
    assert image_digest(rgb) != image_digest(g)


def test_leakage_rules():
    items = [
        ("a_z_0", "a", "train", "d1"),
        ("b_z_0", "b", "test", "d1"),  # same as a training image: moved
        ("b_z_1", "b", "test", "d2"),
        ("c_z_0", "c", "test", "d2"),  # identical test images of two test cases: not leakage
        ("c_z_1", "c", "test", "d3"),  # in another dataset: moved
        ("a_z_1", "a", "train", "d4"),
        ("a_z_2", "a", "train", "d4"),  # duplicates within training are counted only
    ]
    rep = check_leakage(items, {"d3": ["other:image/x.png"]})
    assert rep.moved == ["b_z_0", "c_z_1"]
    assert rep.details[0]["identical_to"] == ["a_z_0 (case a)"]
    assert rep.details[1]["identical_to"] == ["other:image/x.png"]
    assert rep.train_duplicate_groups == 1


def _duplicate_source(root):
    from imis.data.formats.msd import write_nnunet_raw

    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, size=(4, 32, 32)).astype(np.int16)
    lab = np.zeros((4, 32, 32), dtype=np.uint8)
    lab[:, 8:24, 8:24] = 1
    other = rng.integers(0, 1000, size=(4, 32, 32)).astype(np.int16)
    cases = [("dup_a", img, lab), ("dup_b", img.copy(), lab), ("dup_c", other, lab)]
    write_nnunet_raw(root, cases, {1: "liver"}, "CT")
    return root


def test_identical_cases_are_kept_out_of_test(tmp_path):
    """Two cases with identical volumes: whichever is drawn for test, its images move to training."""
    src = _duplicate_source(tmp_path / "src")
    cfg = PrepareConfig(axes=("z",), ct_window="percentile", test_fraction=0.34)
    found = False
    for seed in range(6):
        out = tmp_path / f"out{seed}"
        s = prepare(src, out, replace(cfg, seed=seed), progress=False)
        meta = json.loads((out / "dataset.json").read_text())
        test_cases = meta["imis"]["split"]["test_cases"]
        assert len(test_cases) == 1
        if test_cases[0] in ("dup_a", "dup_b"):
            found = True
            assert meta["numTest"] == 0 and s.leakage["test_images_moved_to_training"] == 4
            recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
            assert all(r["split"] == "train" for r in recs)
        else:
            assert meta["numTest"] == 4 and s.leakage["test_images_moved_to_training"] == 0
        assert s.leakage["train_duplicate_groups"] >= (4 if test_cases[0] == "dup_c" else 0)
    assert found


def test_leakage_against_another_dataset(tmp_path):
    src = _duplicate_source(tmp_path / "src")
    first = tmp_path / "first"
    prepare(src, first, PrepareConfig(axes=("z",), test_fraction=0.0), progress=False)
    cfg = PrepareConfig(axes=("z",), test_fraction=0.34, leakage_datasets=(str(first),))
    s = prepare(src, tmp_path / "second", cfg, progress=False)
    assert s.test_images == 0 and s.leakage["test_images_moved_to_training"] == 4
    detail = s.leakage["details"][0]["identical_to"]
    assert any(d.startswith("first:image/") for d in detail)
