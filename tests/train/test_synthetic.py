"""Synthetic training data from the allowed label maps (btcv-demo train labels, Colin27 AAL/Brodmann,
MNI152 tissue) and pasted shapes: deterministic by seed, every target non-empty and matching the image,
held-out AAL structures never generated, and the trainer runs on it with a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from train_helpers import tiny_config, write_config

from imis.data.brain_templates import HELDOUT_AAL_STRUCTURES
from imis.data.synthetic import SOURCES, LabelMaps, SynthConfig, synth_sample
from imis.errors import InputError
from imis.train.config import load_train_config


@pytest.fixture(scope="module")
def maps(btcv_dir: Path) -> LabelMaps:
    if not Path("/usr/share/mricron/templates/aal.nii.gz").is_file():
        pytest.skip("mricron-data absent")
    return LabelMaps(btcv_dir)


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_is_seeded_and_its_targets_match_the_image(maps, btcv_dir, source) -> None:
    cfg = SynthConfig(
        btcv=btcv_dir,
        sources=(source,),
        noise_max=0.0,
        texture_max=0.0,
        blur_max=0.1,
        bias_max=0.0,
        lowres_max=1.0,
    )
    for i in range(3):
        a, b = synth_sample(maps, cfg, 7, i), synth_sample(maps, cfg, 7, i)
        assert a.source == source and np.array_equal(a.image, b.image)
        assert [n for n, _ in a.targets] == [n for n, _ in b.targets]
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a.targets, b.targets, strict=True))
        assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8
        assert a.targets and all(int(m.sum()) >= cfg.min_pixels for _, m in a.targets)
        grey = a.image[..., 0].astype(float)
        for name, m in a.targets:
            assert (name is None) == (source == "shapes")
            if source == "shapes":
                # a pasted shape differs from a ring just outside it
                ring = ndimage.binary_dilation(m, iterations=3) & ~m
                if ring.sum() > 20:
                    assert abs(grey[m].mean() - grey[ring].mean()) > 20, name
            elif name != "brain":
                # one label, one intensity (no texture, bias, noise or resolution loss here): flat inside
                inner = ndimage.binary_erosion(m, iterations=2)
                if inner.sum() > 20:
                    assert np.ptp(grey[inner]) <= 2, (name, np.ptp(grey[inner]))
        if source == "mni152":
            named = dict(a.targets)
            assert np.array_equal(named["brain"], named["grey matter"] | named["white matter"])
    other = synth_sample(maps, cfg, 8, 0)
    assert not np.array_equal(other.image, synth_sample(maps, cfg, 7, 0).image)


def test_label_targets_are_one_label_each_and_heldout_aal_absent(maps, btcv_dir) -> None:
    cfg = SynthConfig(btcv=btcv_dir, sources=("aal",), max_targets=200)
    held = {f"{s}_{side}" for s in HELDOUT_AAL_STRUCTURES for side in "LR"}
    seen: set[str] = set()
    for i in range(20):
        s = synth_sample(maps, cfg, 0, i)
        masks = [m for _, m in s.targets]
        total = np.sum(masks, axis=0)
        assert total.max() == 1  # one label per pixel: the targets partition the labelled pixels
        seen |= {n for n, _ in s.targets}
    assert seen and not seen & held
    # every AAL structure that is not held out can appear: the pool holds many of them
    assert len(seen) > 30


def test_config_kind_synthetic_loads_and_refuses_bad_keys(btcv_dir, tmp_path) -> None:
    base = tiny_config(btcv_dir, tmp_path / "run", tmp_path / "cache")
    entry = {"kind": "synthetic", "path": str(tmp_path / "syn"), "btcv": str(btcv_dir), "count": 3}
    cfg = load_train_config(write_config(tmp_path / "a.yaml", dict(base, datasets=[entry])))
    spec = cfg.datasets[0]
    assert spec.kind == "synthetic" and spec.count == 3 and spec.sources == SOURCES
    for bad, msg in (
        (dict(entry, sources=["ct"]), "sources must be"),
        (dict(entry, split="test"), "kind synthetic takes"),
        (dict(entry, kind="npz"), "kind must be imed or synthetic"),
        ({k: v for k, v in entry.items() if k != "btcv"}, "needs 'btcv'"),
    ):
        with pytest.raises(InputError, match=msg):
            load_train_config(write_config(tmp_path / "b.yaml", dict(base, datasets=[bad])))
    with pytest.raises(InputError, match="keys of kind: synthetic only"):
        plain = {"path": str(btcv_dir), "count": 3}
        load_train_config(write_config(tmp_path / "c.yaml", dict(base, datasets=[plain])))


def test_trainer_runs_on_synthetic_data(maps, btcv_dir, tmp_path) -> None:
    from imis.train.trainer import train

    entry = {"kind": "synthetic", "path": str(tmp_path / "syn"), "btcv": str(btcv_dir), "count": 4}
    over = dict(datasets=[entry], steps_per_epoch=2, batch_images=2)
    cfg = tiny_config(btcv_dir, tmp_path / "run", tmp_path / "cache", **over)
    res = train(load_train_config(write_config(tmp_path / "t.yaml", cfg)), progress=False)
    assert res.steps == 2 and res.skipped_steps == 0
    pngs = sorted((tmp_path / "syn").glob("*.png"))
    assert len(pngs) == 4 and not list((tmp_path / "syn").glob(".*"))
    before = [p.read_bytes() for p in pngs]
    from imis.models.preprocess import Preprocess
    from imis.train.data import load_synthetic

    again = load_synthetic(
        load_train_config(write_config(tmp_path / "t.yaml", cfg)).datasets[0], Preprocess(), 64
    )
    assert [p.read_bytes() for p in pngs] == before and len(again) == 4


def test_validation_cases_left_out_of_labels_and_backgrounds(btcv_dir) -> None:
    val = ("ABD_034", "ABD_035", "ABD_036")
    maps = LabelMaps(btcv_dir, val)
    assert maps.backgrounds and not any(p.name.startswith(val) for p in maps.backgrounds)
    full = LabelMaps(btcv_dir)
    n_val = sum(p.name.startswith(val) for p in full.backgrounds)
    assert n_val > 0 and len(maps.of("btcv")) == len(full.of("btcv")) - n_val


def test_a_config_keeps_the_validation_cases_out_of_the_synthetic_data(btcv_dir, tmp_path) -> None:
    """exclude_cases of a synthetic entry reaches the generator (it was once dropped by the parser)."""
    base = tiny_config(btcv_dir, tmp_path / "run", tmp_path / "cache")
    entry = {
        "kind": "synthetic",
        "path": str(tmp_path / "syn"),
        "btcv": str(btcv_dir),
        "exclude_cases": ["ABD_034", "ABD_035"],
        "label_cache": "labels.npz",
    }
    spec = load_train_config(write_config(tmp_path / "a.yaml", dict(base, datasets=[entry]))).datasets[0]
    assert spec.exclude_cases == ("ABD_034", "ABD_035")
    assert spec.label_cache == str((tmp_path / "labels.npz").resolve())


def test_the_brain_label_cache_generates_the_same_images(maps, btcv_dir, tmp_path) -> None:
    """A lent GPU has no mricron-data, nilearn or NIfTI reader: the cache must stand in exactly."""
    from imis.data.synthetic import write_brain_cache

    path = write_brain_cache(maps, tmp_path / "labels.npz")
    assert path.stat().st_size < 2_000_000
    cached = LabelMaps(btcv_dir, (), path)
    for source in ("aal", "brodmann", "mni152"):
        a, b = maps.of(source), cached.of(source)
        assert len(a) == len(b) and all(
            np.array_equal(x, y) and nx == ny for (x, nx), (y, ny) in zip(a, b, strict=True)
        )
    cfg = SynthConfig(btcv=btcv_dir, sources=("aal", "brodmann", "mni152"))
    for i in range(4):
        s1, s2 = synth_sample(maps, cfg, 5, i), synth_sample(cached, cfg, 5, i)
        assert np.array_equal(s1.image, s2.image)
        assert [(n, m.tobytes()) for n, m in s1.targets] == [(n, m.tobytes()) for n, m in s2.targets]
    with pytest.raises(InputError, match="label cache not found"):
        LabelMaps(btcv_dir, (), tmp_path / "missing.npz").of("aal")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a synthetic label cache"):
        LabelMaps(btcv_dir, (), tmp_path / "bad.npz").of("aal")
