"""`slice_step` (every Nth slice, centred on each axis), `drop_duplicate_slices`, and the forced splits
test_fraction 0 and 1."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from imis.data.prepare import PrepareConfig, load_config, prepare
from imis.data.prepare.slicing import iter_slices, slice_indices
from imis.data.prepare.split import split_cases
from imis.errors import InputError


def _source(root, cases, labels, modality="CT"):
    from imis.data.formats.msd import write_nnunet_raw

    write_nnunet_raw(root, cases, labels, modality)
    return root


def _manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _cube(shape=(11, 12, 13), value=1):
    img = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    lab = np.full(shape, value, dtype=np.uint8)  # every slice holds a mask
    return img, lab


# -- slice_step ---------------------------------------------------------------------------------------------
def test_slice_indices_are_centred_and_regular():
    assert list(slice_indices(5, 1)) == [0, 1, 2, 3, 4]
    assert list(slice_indices(181, 2)) == list(range(0, 181, 2))  # 180 % 2 == 0: both ends kept
    assert list(slice_indices(217, 10)) == list(range(3, 217, 10))  # 3 ... 213: 3 slices spare each side
    assert list(slice_indices(12, 4)) == [1, 5, 9]
    assert list(slice_indices(3, 10)) == [1]  # the middle slice
    assert list(slice_indices(0, 3)) == []
    for n in range(1, 40):
        for step in range(1, 12):
            idx = list(slice_indices(n, step))
            assert idx and all(b - a == step for a, b in zip(idx, idx[1:], strict=False))
            assert abs(idx[0] - (n - 1 - idx[-1])) <= 1  # symmetric about the middle
    with pytest.raises(ValueError):
        slice_indices(10, 0)
    assert list(iter_slices((4, 5, 6), ("z", "x"), step=3)) == [("z", 0), ("z", 3), ("x", 1), ("x", 4)]


def test_slice_step_is_validated(tmp_path):
    assert PrepareConfig().slice_step == 1
    for bad in (0, -2):
        with pytest.raises(InputError, match="'slice_step' must be a whole number >= 1"):
            PrepareConfig(slice_step=bad)
    cfg = tmp_path / "p.yaml"
    cfg.write_text("slice_step: 2.5\n")
    with pytest.raises(InputError, match=r"p\.yaml: 'slice_step' must be an integer"):
        load_config(cfg)
    cfg.write_text("slice_step: true\n")
    with pytest.raises(InputError, match="'slice_step' must be an integer"):
        load_config(cfg)
    cfg.write_text("slice_step: 4\n")
    assert load_config(cfg).slice_step == 4


def test_pipeline_keeps_every_nth_slice_along_each_axis(tmp_path):
    img, lab = _cube((11, 12, 13))
    src = _source(tmp_path / "src", [("c1", img, lab)], {1: "liver"})
    s = prepare(src, tmp_path / "out", PrepareConfig(slice_step=4, test_fraction=0.0), progress=False)
    assert s.ok
    got = {(r["axis"], r["index"]) for r in _manifest(tmp_path / "out")}
    want = {(a, i) for a, n in (("z", 11), ("y", 12), ("x", 13)) for i in slice_indices(n, 4)}
    assert got == want and len(want) == 3 + 3 + 4
    assert s.counts["slices"] == s.counts["slices_kept"] == len(want)  # only the visited slices count
    # the kept slices are the same slices as without a step (same pixels, same names)
    s1 = prepare(src, tmp_path / "all", PrepareConfig(test_fraction=0.0), progress=False)
    assert s1.counts["slices_kept"] == 11 + 12 + 13
    all_recs = {r["id"]: r["digest"] for r in _manifest(tmp_path / "all")}
    for r in _manifest(tmp_path / "out"):
        assert all_recs[r["id"]] == r["digest"]
    # a step is a per-case setting: resuming with another step is refused
    with pytest.raises(InputError, match="different settings.*slice_step"):
        prepare(src, tmp_path / "out", PrepareConfig(slice_step=2, test_fraction=0.0), progress=False)


def test_default_step_keeps_the_fingerprint_of_datasets_made_before_it(tmp_path):
    """A dataset prepared before slice_step existed (no key in prepare.json) still resumes."""
    img, lab = _cube((5, 6, 7))
    src = _source(tmp_path / "src", [("c1", img, lab)], {1: "liver"})
    out = tmp_path / "out"
    prepare(src, out, progress=False)
    settings = json.loads((out / "prepare.json").read_text())
    settings["config"].pop("slice_step")
    (out / "prepare.json").write_text(json.dumps(settings))
    s = prepare(src, out, progress=False)
    assert s.ok and s.cases_resumed == 1


# -- drop_duplicate_slices ----------------------------------------------------------------------------------
def test_mirror_slices_of_a_symmetric_volume_are_dropped_once_seen(tmp_path):
    """A left-right symmetric volume (like MNI152 2009a sym): x slice i equals slice n-1-i, masks too."""
    rng = np.random.default_rng(0)
    half = rng.integers(0, 1000, size=(6, 7, 4)).astype(np.int16)
    img = np.concatenate([half, rng.integers(0, 1000, size=(6, 7, 1)).astype(np.int16), half[:, :, ::-1]], 2)
    lab = np.ones(img.shape, dtype=np.uint8)
    lab[:, :3] = 2  # masks differ between y slices but not between mirrored x slices
    assert np.array_equal(img, img[:, :, ::-1]) and img.shape == (6, 7, 9)
    src = _source(tmp_path / "src", [("sym", img, lab)], {1: "gray matter", 2: "white matter"}, "MR")
    cfg = PrepareConfig(test_fraction=0.0, drop_duplicate_slices=True)
    s = prepare(src, tmp_path / "out", cfg, progress=False)
    kept = {(r["axis"], r["index"]) for r in _manifest(tmp_path / "out")}
    assert {i for a, i in kept if a == "x"} == {0, 1, 2, 3, 4}  # 5..8 repeat 3..0
    assert {i for a, i in kept if a == "z"} == set(range(6)) and {i for a, i in kept if a == "y"} == set(
        range(7)
    )
    assert s.counts["slices_excluded_duplicate"] == 4 and s.counts["slices_kept"] == 6 + 7 + 5
    assert any("4 duplicates" in line for line in s.lines())
    # off by default: every slice is kept
    s0 = prepare(src, tmp_path / "all", PrepareConfig(test_fraction=0.0), progress=False)
    assert s0.counts["slices_kept"] == 6 + 7 + 9 and s0.counts["slices_excluded_duplicate"] == 0
    assert s0.leakage["train_duplicate_groups"] == 4
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("drop_duplicate_slices: 1\n")
    with pytest.raises(InputError, match="'drop_duplicate_slices' must be true or false"):
        load_config(cfg_file)


# -- forced splits ------------------------------------------------------------------------------------------
def test_split_cases_at_zero_and_one():
    assert split_cases({"only": 7}, test_fraction=1.0) == ([], ["only"])
    assert split_cases({"only": 7}, test_fraction=0.0) == (["only"], [])
    assert split_cases({"only": 7}, test_fraction=0.99) == (["only"], [])  # below 1: a single case trains
    cases = {f"c{i}": 5 for i in range(6)}
    assert split_cases(cases, test_fraction=1.0, seed=random.Random(1).randrange(99)) == ([], sorted(cases))
    assert split_cases({"a": 5, "b": 0}, test_fraction=1.0) == (["b"], ["a"])  # no images: not a test case
    # max_test_images still applies
    assert split_cases({"a": 5, "b": 3000}, test_fraction=1.0) == (["b"], ["a"])


def test_test_fraction_bounds(tmp_path):
    PrepareConfig(test_fraction=0.0)
    PrepareConfig(test_fraction=1.0)
    for bad in (-0.1, 1.01):
        with pytest.raises(InputError, match=r"'test_fraction' must be in \[0, 1\]"):
            PrepareConfig(test_fraction=bad)


@pytest.mark.parametrize(("fraction", "split"), [(0.0, "train"), (1.0, "test")])
def test_single_case_source_forced_into_one_split(tmp_path, fraction, split):
    from imis.data.formats import imed

    img, lab = _cube((6, 6, 6))
    src = _source(tmp_path / "src", [("solo", img, lab)], {1: "liver"})
    out = tmp_path / "out"
    s = prepare(src, out, PrepareConfig(test_fraction=fraction, slice_step=2), progress=False)
    ds = imed.read_dataset(out)
    assert len(ds.entries) == s.counts["slices_kept"] == 9
    assert {e.split for e in ds.entries} == {split}
    assert (s.test_images, s.train_images) == ((9, 0) if split == "test" else (0, 9))
    assert {r["split"] for r in _manifest(out)} == {split}
    # the split is a finalize-only setting: a rerun may change it without redoing the case
    other = 1.0 - fraction
    s2 = prepare(src, out, PrepareConfig(test_fraction=other, slice_step=2), progress=False)
    assert s2.cases_resumed == 1 and {e.split for e in imed.read_dataset(out).entries} != {split}
