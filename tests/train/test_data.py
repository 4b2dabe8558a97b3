"""Training targets on real btcv-demo slices: geometric variants warp the image and its masks alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imis.data.formats.imed import read_dataset, read_label
from imis.errors import InputError
from imis.models.registry import get_spec
from imis.train.config import DatasetSpec, TrainConfig
from imis.train.data import Geometry, load_images, read_train_image, to_lowres, variant_affine
from imis.train.state import config_key


def _pre():
    return get_spec("litemedsam").preprocess


def _spec(btcv, **kw) -> DatasetSpec:
    return DatasetSpec(str(btcv), split="train", max_images=2, imask=True, **kw)


def test_variant_affine_is_fixed_by_image_and_number_and_stays_in_bounds():
    g = Geometry(rotate=10.0, scale=0.1, shift=0.05)
    a = variant_affine("0123456789abcdef", 1, (512, 512), g)
    assert np.array_equal(a, variant_affine("0123456789abcdef", 1, (512, 512), g))
    assert not np.allclose(a, variant_affine("0123456789abcdef", 2, (512, 512), g))
    for v in range(1, 30):
        m = variant_affine("fedcba9876543210", v, (512, 512), g)
        zoom = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        angle = float(np.degrees(np.arctan2(-m[0, 1], m[0, 0])))
        centre = m[:, :2] @ np.array([256.0, 256.0]) + m[:, 2]
        assert 0.9 - 1e-9 <= zoom <= 1.1 + 1e-9 and abs(angle) <= 10 + 1e-9
        assert np.all(np.abs(centre - 256.0) <= 0.05 * 512 + 1e-6)
    # zero bounds: the identity
    ident = variant_affine("fedcba9876543210", 3, (512, 512), Geometry(0.0, 0.0, 0.0))
    assert np.allclose(ident, [[1, 0, 0], [0, 1, 0]])


def test_variants_follow_their_image_with_warped_targets(btcv_dir):
    pre = _pre()
    base = load_images(_spec(btcv_dir), pre, 256, geometry=Geometry())
    assert len(base) == 2 and all(im.affine is None for im in base)
    imgs = load_images(_spec(btcv_dir, variants=2), pre, 256, geometry=Geometry())
    assert len(imgs) == 6
    assert [im.affine is None for im in imgs] == [True, False, False] * 2
    assert len({im.key for im in imgs}) == 6  # every variant has its own cache key
    assert imgs[1].key.startswith(imgs[0].key + "-")
    first, variant = imgs[0], imgs[1]
    assert {t.name for t in variant.gt} <= {t.name for t in first.gt}
    # the variant's liver is the native liver warped by the variant's map, then taken to low-res
    entry = sorted(read_dataset(btcv_dir).split("train"), key=lambda e: e.stem)[0]
    label = read_label(entry.label)
    names = read_dataset(btcv_dir).label_names(label.shape[0])
    liver = label[names.index("liver")].astype(np.uint8)
    import cv2

    h, w = liver.shape
    warped = cv2.warpAffine(liver.astype(np.float32), variant.affine, (w, h)) >= 0.5
    expect = to_lowres(warped, variant.frame, 256)
    got = next(t.mask for t in variant.gt if t.name == "liver")
    assert np.array_equal(got, expect)
    assert not np.array_equal(got, next(t.mask for t in first.gt if t.name == "liver"))
    # image and masks move together: the liver's mean intensity is the same in the image and its variant
    img0 = read_train_image(first.path).astype(np.float64)
    img1 = read_train_image(variant.path, variant.affine).astype(np.float64)
    gray0, gray1 = (im if im.ndim == 2 else im.mean(axis=-1) for im in (img0, img1))
    inside0, inside1 = gray0[liver > 0].mean(), gray1[warped].mean()
    assert abs(inside0 - inside1) < 0.03 * 255, (inside0, inside1)
    # ... and not where the unwarped mask would put it
    shifted_off = abs(gray1[liver > 0].mean() - inside0)
    assert shifted_off > abs(inside0 - inside1)


def test_variants_only_for_training_and_config_checks(btcv_dir, tmp_path):
    pre = _pre()
    # without a geometry (validation images) the variants are not made
    assert len(load_images(_spec(btcv_dir, variants=3), pre, 256)) == 2
    base = {"datasets": [{"path": str(btcv_dir), "variants": -1}]}
    with pytest.raises(InputError, match="variants must be >= 0"):
        TrainConfig.from_mapping(base, "x.yaml", tmp_path)
    with pytest.raises(InputError, match=r"variant_rotate must be in \[0, 180\]"):
        TrainConfig.from_mapping({"datasets": [str(btcv_dir)], "variant_rotate": 200}, "x.yaml", tmp_path)
    # runs configured before variants existed keep their resume key; asking for variants changes it
    plain = TrainConfig.from_mapping({"datasets": [str(btcv_dir)]}, "x.yaml", tmp_path)
    assert "variants" not in config_key(plain)["datasets"][0] and "variant_scale" not in config_key(plain)
    with_v = TrainConfig.from_mapping(
        {"datasets": [{"path": str(btcv_dir), "variants": 2}]}, "x.yaml", tmp_path
    )
    assert config_key(with_v) != config_key(plain)


def test_whole_cases_kept_or_left_out(btcv_dir, tmp_path):
    """A validation split of held-out cases: `cases` keeps only their slices, `exclude_cases` drops them."""
    from imis.data.formats.imed import parse_stem

    pre = _pre()
    stems = [e.stem for e in read_dataset(btcv_dir).split("train")]
    held = load_images(
        DatasetSpec(str(btcv_dir), "train", imask=False, cases=("ABD_034", "ABD_035")), pre, 256
    )
    assert sorted(im.path.stem for im in held) == sorted(
        s for s in stems if parse_stem(s)[0] in ("ABD_034", "ABD_035")
    )
    rest = load_images(
        DatasetSpec(str(btcv_dir), "train", imask=False, exclude_cases=("ABD_001", "ABD_002"), max_images=3),
        pre,
        256,
    )
    # the first images (sorted) would be ABD_001's: they are left out
    assert [parse_stem(im.path.stem)[0] for im in rest] == ["ABD_003"] * 3
    with pytest.raises(InputError, match="has no case ABD_999"):
        load_images(DatasetSpec(str(btcv_dir), "train", cases=("ABD_999",)), pre, 256)
    with pytest.raises(InputError, match="are both kept and left out"):
        TrainConfig.from_mapping(
            {"datasets": [{"path": str(btcv_dir), "cases": ["ABD_034"], "exclude_cases": ["ABD_034"]}]},
            "x.yaml",
            tmp_path,
        )
    with pytest.raises(InputError, match="must be a list of case ids"):
        TrainConfig.from_mapping(
            {"datasets": [{"path": str(btcv_dir), "cases": "ABD_034"}]}, "x.yaml", tmp_path
        )
    # runs configured before these keys existed keep their resume key
    plain = TrainConfig.from_mapping({"datasets": [str(btcv_dir)]}, "x.yaml", tmp_path)
    assert "cases" not in config_key(plain)["datasets"][0]


def test_zoom_variants_are_crops_around_one_small_target_normalised_as_the_whole_image(btcv_dir):
    from imis.models.zoom import ZoomConfig
    from imis.train.data import TrainImage, train_input, zoom_window

    pre = _pre()
    imgs = load_images(_spec(btcv_dir, zoom_variants=3), pre, 256, geometry=Geometry())
    base = [im for im in imgs if im.affine is None]
    crops = [im for im in imgs if im.affine is not None]
    assert len(base) == 2 and 2 <= len(crops) <= 6 and len({im.key for im in imgs}) == len(imgs)
    # validation images (no geometry) get no zoom crops
    assert len(load_images(_spec(btcv_dir, zoom_variants=3), pre, 256)) == 2
    entry = sorted(read_dataset(btcv_dir).split("train"), key=lambda e: e.stem)[0]
    label = read_label(entry.label)
    names = read_dataset(btcv_dir).label_names(label.shape[0])
    allowed = [c for c in range(label.shape[0]) if label[c].any()]
    key = next(im.key for im in base if im.stem == entry.stem)
    drawn = [zoom_window(key, z, label, allowed) for z in (1, 2, 3)]
    mine = [c for c in crops if c.stem == entry.stem]
    assert len(mine) == sum(d is not None for d in drawn) >= 1
    for crop, (c, (x0, y0, x1, y1)) in zip(mine, [d for d in drawn if d is not None], strict=True):
        # a pure translation into a smaller square view whose frame is the crop's
        assert np.allclose(crop.affine, [[1, 0, -x0], [0, 1, -y0]]) and crop.whole_range
        h, w = crop.size
        assert (h, w) == (y1 - y0, x1 - x0) and h == w < label.shape[-1] and crop.frame.orig_hw == (h, w)
        # the drawn target is small, inside the view, and fills a larger share of it than of the image
        side = max(np.ptp(np.flatnonzero(label[c].any(1))), np.ptp(np.flatnonzero(label[c].any(0)))) + 1
        assert side <= ZoomConfig().max_object_frac * label.shape[-1]
        assert 3 * side - 1 <= h <= 5 * side + 1 or h == 96  # 3-5x the object, at least min_crop
        assert label[c][y0:y1, x0:x1].sum() == label[c].sum()
        focus = next(t for t in crop.gt if t.name == names[c])
        share = label[c].mean() * (label.shape[-1] / h) ** 2  # its share of the view at native size
        assert abs(focus.mask.mean() - share) <= 0.1 * share
    assert zoom_window(key, 1, label, allowed) == drawn[0]
    assert zoom_window(key, 1, label, []) is None
    # intensities: the crop normalised with the whole image's range, as imis.models.zoom encodes crops
    crop = crops[0]
    x = train_input(crop, pre)
    as_own = train_input(TrainImage(**{**crop.__dict__, "whole_range": False}), pre)
    from imis.data.formats.imed import read_image
    from imis.models.preprocess import prepare_image

    image = read_image(crop.path)
    cx0, cy0 = (-crop.affine[:, 2]).astype(int)
    h, w = crop.size
    expect, _ = prepare_image(
        image[cy0 : cy0 + h, cx0 : cx0 + w], pre, "crop", (float(image.min()), float(image.max()))
    )
    torch.testing.assert_close(x, expect, atol=1e-5, rtol=0)
    own = image[cy0 : cy0 + h, cx0 : cx0 + w]
    if (own.min(), own.max()) != (image.min(), image.max()):  # else both ranges are the same
        assert not torch.allclose(x, as_own)


def test_zoom_variants_config(btcv_dir, tmp_path):
    base = {"datasets": [{"path": str(btcv_dir), "zoom_variants": -1}]}
    with pytest.raises(InputError, match="zoom_variants must be >= 0"):
        TrainConfig.from_mapping(base, "x.yaml", tmp_path)
    plain = TrainConfig.from_mapping({"datasets": [str(btcv_dir)]}, "x.yaml", tmp_path)
    assert "zoom_variants" not in config_key(plain)["datasets"][0]
    with_z = TrainConfig.from_mapping(
        {"datasets": [{"path": str(btcv_dir), "zoom_variants": 2}]}, "x.yaml", tmp_path
    )
    assert config_key(with_z)["datasets"][0]["zoom_variants"] == 2


def test_intensity_variants_are_remapped_copies_with_their_own_cache_keys(btcv_dir):
    from imis.data.formats.imed import read_image
    from imis.train.data import remap_image, train_input

    pre = _pre()
    imgs = load_images(_spec(btcv_dir, intensity_variants=2), pre, 256, geometry=Geometry())
    plain = [im for im in imgs if im.remap is None]
    remapped = [im for im in imgs if im.remap is not None]
    assert len(plain) == 2 and len(remapped) == 4 and len({im.key for im in imgs}) == 6
    assert sorted({im.remap for im in remapped}) == ["random/1", "random/2"]
    one = next(im for im in remapped if im.stem == plain[0].stem)
    # same targets as the image itself (intensities only), another network input
    assert [t.name for t in one.gt] == [t.name for t in plain[0].gt]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(one.gt, plain[0].gt, strict=True))
    assert not torch.allclose(train_input(one, pre), train_input(plain[0], pre))
    image = read_image(one.path)
    assert np.array_equal(remap_image(image, one.remap, one.stem), remap_image(image, one.remap, one.stem))
    # validation images (no geometry) get no variants
    assert len(load_images(_spec(btcv_dir, intensity_variants=2), pre, 256)) == 2


def test_a_perturbed_validation_set_is_remapped_as_imis_bench_does_and_named_apart(btcv_dir):
    from imis.data.formats.imed import read_image
    from imis.data.perturb import perturb_image
    from imis.models.preprocess import prepare_image
    from imis.train.data import train_input

    pre = _pre()
    imgs = load_images(_spec(btcv_dir, perturb="invert"), pre, 256)
    plain = load_images(_spec(btcv_dir), pre, 256)
    assert [im.dataset for im in imgs] == [f"{p.dataset}+invert" for p in plain]
    assert len({im.key for im in imgs} | {p.key for p in plain}) == 4
    image = read_image(imgs[0].path)
    expect, _ = prepare_image(perturb_image(image, "invert", 0, imgs[0].stem), pre, "x")
    torch.testing.assert_close(train_input(imgs[0], pre), expect)


def test_intensity_variant_and_perturb_config(btcv_dir, tmp_path):
    for bad, msg in (
        ({"intensity_variants": -1}, "intensity_variants must be >= 0"),
        ({"perturb": "blur"}, "perturb must be one of invert, gamma, noise, t2like"),
    ):
        with pytest.raises(InputError, match=msg):
            TrainConfig.from_mapping({"datasets": [{"path": str(btcv_dir), **bad}]}, "x.yaml", tmp_path)
    plain = TrainConfig.from_mapping({"datasets": [str(btcv_dir)]}, "x.yaml", tmp_path)
    assert not {"intensity_variants", "perturb"} & set(config_key(plain)["datasets"][0])
    cfg = TrainConfig.from_mapping(
        {
            "datasets": [{"path": str(btcv_dir), "intensity_variants": 2}],
            "val_datasets": [{"path": str(btcv_dir), "perturb": "t2like"}],
        },
        "x.yaml",
        tmp_path,
    )
    assert cfg.datasets[0].intensity_variants == 2 and cfg.val_datasets[0].perturb == "t2like"
