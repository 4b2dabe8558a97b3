"""imis.data.ood: the OOD validation set (lesion-like regions on unlabelled sample images)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion

from imis.data.formats.imed import read_image, read_label
from imis.data.ood import (
    BACKGROUNDS,
    OOD_SPLITS,
    Background,
    OodConfig,
    lesion_image,
    load_background,
    write_ood_datasets,
)
from imis.errors import InputError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_halves_split_the_backgrounds_by_file():
    halves = {s: {b.path for b in BACKGROUNDS if b.split == s} for s in OOD_SPLITS}
    assert halves["val"] and halves["test"]
    assert not halves["val"] & halves["test"]
    assert {b.split for b in BACKGROUNDS} == set(OOD_SPLITS)


@pytest.mark.parametrize("bg", BACKGROUNDS, ids=lambda b: b.name)
def test_every_background_reads(bg):
    img = load_background(bg, 256)
    assert max(img.shape[:2]) == 256 and min(img.shape[:2]) >= 32
    assert img.dtype == np.float32 and 0.0 <= img.min() < img.max() <= 1.0
    assert np.ptp(img) > 0.5  # a real image, not a blank frame


def test_written_sets_are_deterministic_and_readable(tmp_path):
    cfg = OodConfig(per_background=(1, 1))
    counts = write_ood_datasets(tmp_path / "a", cfg)
    write_ood_datasets(tmp_path / "b", cfg)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for half in OOD_SPLITS:
        root = tmp_path / "a" / f"ood-{half}"
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["numTraining"] == 0 and meta["numTest"] == counts[half]["images"]
        assert counts[half]["images"] == sum(b.split == half for b in BACKGROUNDS)
        regions = 0
        for entry in meta["test"]:
            labels = read_label(root / entry["label"])
            areas = labels.reshape(labels.shape[0], -1).sum(axis=1)
            assert areas[0] >= cfg.min_pixels  # every image has a region, the first channel filled first
            assert all(a == 0 or a >= cfg.min_pixels for a in areas)
            assert read_image(root / entry["image"]).shape[:2] == labels.shape[1:3]
            regions += int((areas > 0).sum())
        assert regions == counts[half]["regions"]
    other = write_ood_datasets(tmp_path / "c", OodConfig(per_background=(1, 1), seed=1))
    assert other["val"]["images"] == counts["val"]["images"]
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_a_region_is_added_to_the_anatomy_not_pasted_over_it():
    # a textured background: a region that replaced the pixels would lose this texture inside it
    background = np.clip(0.5 + 0.2 * np.sin(np.arange(256) / 3.0)[None, :] + np.zeros((256, 256)), 0, 1)
    cfg = OodConfig(edge_sigma=(0.01, 0.02), texture_sd=0.0, max_regions=1, min_cnr=0.0)
    for seed in range(20):
        image, targets = lesion_image(background.astype(np.float32), np.random.default_rng(seed), cfg)
        if not targets:
            continue
        m = targets[0]
        diff = image.astype(np.float32) / 255.0 - background
        others = np.any(targets[1:], axis=0) if len(targets) > 1 else np.zeros_like(m)
        inner = binary_erosion(m, iterations=2) & ~binary_dilation(others, iterations=2)
        if inner.sum() < 10:
            continue
        d = diff[inner]
        assert 0.08 - 0.01 <= abs(float(np.median(d))) <= 0.30 + 0.01
        assert np.ptp(d) < 0.02  # one offset over the region: the texture under it is kept
        assert np.corrcoef(image[inner].astype(float), background[inner])[0, 1] > 0.9
        far = ~binary_dilation(np.any(targets, axis=0), iterations=3)
        assert np.abs(diff[far]).max() <= 0.5 / 255 + 1e-6  # untouched outside the regions
        return
    pytest.fail("no region drawn in 20 seeds")


def test_a_region_fainter_than_the_texture_under_it_is_not_drawn():
    noisy = np.random.default_rng(0).uniform(0, 1, (128, 128)).astype(np.float32)  # sd 0.29
    cfg = OodConfig(contrast=(0.08, 0.1))
    for seed in range(10):
        _, targets = lesion_image(noisy, np.random.default_rng(seed), cfg)
        assert targets == []
    flat = np.full((128, 128), 0.5, np.float32)
    assert any(lesion_image(flat, np.random.default_rng(s), cfg)[1] for s in range(10))


@pytest.mark.parametrize(
    "cfg, match",
    [
        (OodConfig(per_background=(0, 3)), "per_background"),
        (OodConfig(size=32), "size"),
        (OodConfig(contrast=(0.3, 0.1)), "contrast"),
        (OodConfig(max_regions=0), "max_regions"),
    ],
)
def test_bad_settings_are_refused(tmp_path, cfg, match):
    with pytest.raises(InputError, match=match):
        write_ood_datasets(tmp_path, cfg)
    assert not any(tmp_path.iterdir())


def test_a_missing_background_file_is_named():
    with pytest.raises(InputError, match="no_such.dcm"):
        load_background(Background("x", "pydicom", "test_files/no_such.dcm", "ct", "val"), 256)


def test_cli_writes_both_halves(tmp_path):
    out = tmp_path / "ood"
    r = subprocess.run(
        [sys.executable, "-m", "imis.cli", "prepare-ood", "--out", str(out), "--per-background", "1", "1"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "ood-test" in r.stdout and (out / "ood-val" / "dataset.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "imis.cli", "prepare-ood", "--out", str(out), "--per-background", "0", "1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
