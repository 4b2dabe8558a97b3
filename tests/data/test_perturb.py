"""The benchmark's intensity remaps on real btcv-demo CT slices: each changes intensities as intended,
is deterministic by seed, and leaves the geometry (and so the labels) alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imis.data.formats.imed import read_dataset, read_image, read_label
from imis.data.perturb import AIR_LEVEL, PERTURBATIONS, gamma_of, perturb_image
from imis.errors import InputError


@pytest.fixture(scope="module")
def slices(btcv_dir: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    ds = read_dataset(btcv_dir)
    entries = sorted(ds.split("test"), key=lambda e: e.stem)[:3]
    return [(e.stem, read_image(e.image), read_label(e.label)) for e in entries]


def _organ_means(img: np.ndarray, label: np.ndarray) -> list[float]:
    grey = img[..., 0].astype(float)
    return [grey[label[c] > 0].mean() for c in range(label.shape[0]) if (label[c] > 0).sum() > 50]


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_deterministic_shape_dtype_and_changed(slices, name: str) -> None:
    for stem, img, _ in slices:
        a = perturb_image(img, name, 0, stem)
        assert a.shape == img.shape and a.dtype == img.dtype
        assert np.array_equal(a, perturb_image(img, name, 0, stem))
        assert np.abs(a.astype(int) - img.astype(int)).mean() > 5, f"{name} barely changed {stem}"
        # a grey (3 equal channels) image stays grey
        assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])


def test_invert_reverses_organ_order(slices) -> None:
    for stem, img, label in slices:
        out = perturb_image(img, "invert", 0, stem)
        assert np.array_equal(out.astype(int), int(img.max()) + int(img.min()) - img.astype(int))
        before, after = _organ_means(img, label), _organ_means(out, label)
        assert len(before) >= 2
        assert np.corrcoef(before, after)[0, 1] < -0.99


def test_gamma_is_monotone_and_seeded(slices) -> None:
    gammas = {gamma_of(s, "ABD_037_100") for s in range(8)}
    assert len(gammas) > 4 and all(0.4 <= g <= 0.6 or 1.7 <= g <= 2.5 for g in gammas)
    for stem, img, _ in slices:
        out = perturb_image(img, "gamma", 0, stem)[..., 0].astype(int).ravel()
        x = img[..., 0].astype(int).ravel()
        order = np.argsort(x, kind="stable")
        assert (np.diff(out[order]) >= 0).all(), "gamma must keep the intensity order"
        assert not np.array_equal(out, perturb_image(img, "gamma", 1, stem)[..., 0].ravel()) or (
            gamma_of(0, stem) == gamma_of(1, stem)
        )


def test_noise_is_zero_mean_with_the_stated_spread(slices) -> None:
    stem, img, _ = slices[0]
    grey = img[..., 0].astype(float)
    mid = (grey > 40) & (grey < 215)  # away from the clip at both ends
    diff = perturb_image(img, "noise", 0, stem)[..., 0].astype(float) - grey
    rng = float(img.max()) - float(img.min())
    assert abs(diff[mid].mean()) < 1.0
    assert diff[mid].std() == pytest.approx(0.08 * rng, rel=0.1)
    assert not np.array_equal(perturb_image(img, "noise", 1, stem), perturb_image(img, "noise", 0, stem))


def test_t2like_keeps_air_dark_and_reverses_tissue(slices) -> None:
    for stem, img, label in slices:
        out = perturb_image(img, "t2like", 0, stem)
        grey, o = img[..., 0].astype(float), out[..., 0].astype(float)
        lo, hi = grey.min(), grey.max()
        air = grey < lo + AIR_LEVEL * (hi - lo)
        assert air.any() and np.array_equal(o[air], grey[air])
        before, after = _organ_means(img, label), _organ_means(out, label)
        # the brighter organ before is the darker one after (tissue order reversed)
        assert np.corrcoef(before, after)[0, 1] < -0.9


class _Seer:
    """A box-filling model that records the pixels it is given."""

    name, prompt_types = "seer", frozenset({"box", "point"})

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def encode(self, image):
        self.seen.append(image)
        return image.shape[:2]

    def decode(self, emb, spec, multimask=False):
        from imis.models.interactive import Prediction

        mask = np.zeros(emb, dtype=bool)
        if spec.box is not None:
            x0, y0, x1, y1 = (int(v) for v in spec.box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        return Prediction(mask, mask.astype(np.float32), torch.zeros(1, 1, 64, 64), 1.0)


def test_bench_feeds_perturbed_pixels_and_keeps_labels(btcv_dir: Path, tmp_path: Path) -> None:
    import json

    from imis.bench.config import BenchConfig
    from imis.bench.records import read_rows
    from imis.bench.report import merge_runs, write_report
    from imis.bench.runner import run_bench

    runs = {}
    for name in (None, "t2like"):
        seer = _Seer()
        cfg = BenchConfig(
            models=("seer",), data=btcv_dir, limit_images=1, perturb=name, model_loader=lambda n, s=seer: s
        )
        out = tmp_path / str(name)
        run_bench(cfg, out, progress=False, report=False)
        assert json.loads((out / "config.json").read_text())["perturb"] == name
        write_report(out)
        board = (out / "leaderboard.md").read_text()
        assert ("--perturb t2like" in board) == (name == "t2like")
        assert {r["protocol"] for r in merge_runs([out])} == {"single" if name is None else "single (t2like)"}
        runs[name] = (seer.seen[0], read_rows(out / "predictions.jsonl"))
    (plain, rows0), (pert, rows1) = runs[None], runs["t2like"]
    stem = sorted(read_dataset(btcv_dir).split("test"), key=lambda e: e.stem)[0].stem
    assert np.array_equal(pert, perturb_image(plain, "t2like", 0, stem))
    # the box-filling model ignores pixels: same masks, same prompts, so the same scores
    box0 = {(r["target"], r["dice"]) for r in rows0 if r["kind"] == "box"}
    box1 = {(r["target"], r["dice"]) for r in rows1 if r["kind"] == "box"}
    assert box0 and box0 == box1
    cfg = BenchConfig(
        models=("seer",), data=btcv_dir, limit_images=1, perturb="invert", model_loader=lambda n: _Seer()
    )
    with pytest.raises(InputError, match="--perturb t2like, not invert"):
        run_bench(cfg, tmp_path / "t2like", progress=False, report=False)


def test_bad_name_is_refused(btcv_dir: Path) -> None:
    from imis.bench.config import BenchConfig

    with pytest.raises(InputError, match="--perturb must be one of"):
        BenchConfig(models=("x",), data=btcv_dir, perturb="sepia").validate()
    with pytest.raises(InputError, match="perturbation must be one of"):
        perturb_image(np.zeros((4, 4), np.uint8), "sepia", 0, "k")


def test_random_remap_is_a_seeded_intensity_map_of_varied_kinds(slices) -> None:
    from imis.data.perturb import random_remap

    stem, img, label = slices[0]
    outs = [random_remap(img, 0, f"{stem}/random/{v}") for v in range(1, 13)]
    for v, a in enumerate(outs, start=1):
        assert a.shape == img.shape and a.dtype == img.dtype
        assert np.array_equal(a, random_remap(img, 0, f"{stem}/random/{v}"))
        assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    # (a plain inversion has no parameter: two variants may both be one)
    assert len({a.tobytes() for a in outs}) >= 9
    # a family, not one map: some keep the organs' order, some reverse or shuffle it
    base = np.argsort(_organ_means(img, label))
    orders = {tuple(np.argsort(_organ_means(a, label))) for a in outs}
    assert tuple(base) in orders and len(orders) >= 3
