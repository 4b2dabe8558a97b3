"""Prompt files: determinism, order independence, fingerprints, and real btcv-demo labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imis.errors import InputError
from imis.prompts import dataset_fingerprint, generate_prompts, load_prompts, save_prompts, text_prompt


def synthetic_samples():
    rng = np.random.default_rng(123)
    out = []
    for i in range(3):
        for name in ("liver", "spleen"):
            m = np.zeros((64, 64), dtype=bool)
            y, x = rng.integers(5, 30, size=2)
            m[y : y + 20, x : x + 25] = True
            out.append((f"img_{i}", name, m))
    out.append(("img_9", "liver", np.zeros((64, 64), dtype=bool)))
    return out


def test_same_seed_byte_identical_different_seed_differs(tmp_path):
    samples = synthetic_samples()
    a = save_prompts(tmp_path / "a.json", generate_prompts(samples, "single", 0))
    b = save_prompts(tmp_path / "b.json", generate_prompts(samples, "single", 0))
    c = save_prompts(tmp_path / "c.json", generate_prompts(samples, "single", 1))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    # canonical JSON: sorted keys, compact separators, one trailing newline
    text = a.read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) + "\n"
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]


def test_order_independent_and_per_target_streams():
    samples = synthetic_samples()
    fwd = generate_prompts(samples, "single", 5)
    rev = generate_prompts(list(reversed(samples)), "single", 5)
    assert fwd == rev
    # a target's prompts do not depend on the other targets
    alone = generate_prompts(samples[:1], "single", 5)
    assert alone["targets"][0] == fwd["targets"][0]
    assert alone["dataset_fingerprint"] != fwd["dataset_fingerprint"]


def test_prompt_content(tmp_path):
    samples = synthetic_samples()
    obj = generate_prompts(samples, "box-offset", 0)
    masks = {(i, t): m for i, t, m in samples}
    assert obj["dataset_fingerprint"] == dataset_fingerprint(samples)
    assert [(r["image_id"], r["target"]) for r in obj["targets"]] == sorted(masks)
    for rec in obj["targets"]:
        m = masks[(rec["image_id"], rec["target"])]
        if not m.any():
            assert rec["skip_reason"] == "empty ground-truth mask" and "clicks" not in rec
            continue
        for x, y in rec["clicks"].values():
            assert m[y, x]
        tight = np.array(rec["boxes"]["tight"])
        assert rec["boxes"]["offset_0"] == rec["boxes"]["tight"]
        h, w = m.shape
        for off in (5, 10, 20):  # exactness away from borders is tested in test_clicks.py
            x0, y0, x1, y1 = b = rec["boxes"][f"offset_{off}"]
            assert (np.abs(np.array(b) - tight) <= 2 * off).all()
            assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
        assert rec["text"] == text_prompt(rec["target"])
    back = load_prompts(save_prompts(tmp_path / "p.json", obj), dataset_fingerprint(samples))
    assert back == obj


def test_other_dataset_and_bad_files_fail_clearly(tmp_path):
    samples = synthetic_samples()
    path = save_prompts(tmp_path / "p.json", generate_prompts(samples, "single", 0))
    other = dataset_fingerprint(samples[:-2])
    with pytest.raises(InputError, match="another dataset"):
        load_prompts(path, other)
    with pytest.raises(InputError, match="not found"):
        load_prompts(tmp_path / "missing.json", other)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a valid prompt file"):
        load_prompts(bad, other)
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not an imis prompt file"):
        load_prompts(bad, other)
    with pytest.raises(InputError, match="appears twice"):
        generate_prompts(samples + samples[:1], "single", 0)
    with pytest.raises(ValueError, match="seed"):
        generate_prompts(samples, "single", -1)


def test_btcv_demo_test_labels(btcv_dir, tmp_path):
    from imis.data.formats.imed import read_dataset, read_label

    ds = read_dataset(btcv_dir)
    entries = ds.split("test")
    assert entries

    def samples():
        for e in entries:
            lab = read_label(e.label)
            for name, m in zip(ds.label_names(lab.shape[0]), lab, strict=True):
                yield e.stem, name, m

    obj = generate_prompts(samples(), "single", 2024)
    p1 = save_prompts(tmp_path / "btcv_single_2024.json", obj)
    p2 = save_prompts(tmp_path / "again.json", generate_prompts(samples(), "single", 2024))
    assert p1.read_bytes() == p2.read_bytes()
    back = load_prompts(p1, dataset_fingerprint(samples()))
    assert back == obj
    kept = [r for r in back["targets"] if "skip_reason" not in r]
    assert kept and len(kept) < len(back["targets"])  # btcv slices miss some organs
    labels = {e.stem: read_label(e.label) for e in entries}
    names = ds.label_names(next(iter(labels.values())).shape[0])
    for rec in kept:
        m = labels[rec["image_id"]][names.index(rec["target"])]
        for x, y in rec["clicks"].values():
            assert m[y, x]
    with pytest.raises(InputError, match="another dataset"):
        load_prompts(p1, dataset_fingerprint(synthetic_samples()))


def test_version_1_files_read_with_the_text_their_runs_fed(tmp_path):
    """Version 1 recorded the template filled with the bare target name while the models read its display
    name; such a file reads as the version 2 object whose ``text`` is what was fed."""
    samples = [(i, t, m) for i, t, m in synthetic_samples()]
    samples.append(("img9", "kidney_right", np.pad(np.ones((6, 6), bool), 5)))
    new = generate_prompts(samples, "single", 0)
    old = dict(new, version=1)
    old["targets"] = [
        {**r, "text": f"A segmentation area of a {r['target']}."} if "text" in r else r
        for r in new["targets"]
    ]
    back = load_prompts(save_prompts(tmp_path / "v1.json", old), dataset_fingerprint(samples))
    assert back == new
    assert [r["text"] for r in back["targets"] if r["target"] == "kidney_right"] == [
        "A segmentation area of a right kidney."
    ]
    with pytest.raises(InputError, match="version 3 unsupported"):
        load_prompts(save_prompts(tmp_path / "v3.json", dict(new, version=3)), None)
