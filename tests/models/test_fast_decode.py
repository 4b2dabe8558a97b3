"""The interactive decode path with the per-image half of the decoder cached gives the plain decoder's
masks, on every registry model that takes it (small random builds) and on real LiteMedSAM weights."""

from __future__ import annotations

import functools
import gc

import numpy as np
import pytest
import torch
from model_helpers import small_registry_model

from imis.models.fast_decode import ImageSideCache, supports_fast_decode
from imis.models.interactive import InteractiveModel, PromptSpec, requested_prompt_types
from imis.models.registry import REGISTRY

PROMPTS = {
    "click": PromptSpec(points=np.array([[40.0, 52.0]], np.float32), labels=np.array([1])),
    "clicks": PromptSpec(
        points=np.array([[40.0, 52.0], [70.0, 20.0], [10.0, 90.0]], np.float32), labels=np.array([1, 0, 1])
    ),
    "box": PromptSpec(box=np.array([12.0, 20.0, 80.0, 75.0], np.float32)),
    "box_click": PromptSpec(
        points=np.array([[50.0, 50.0]], np.float32), labels=np.array([0]), box=np.array([12, 20, 80, 75.0])
    ),
}


@functools.cache
def _small(name: str) -> InteractiveModel:
    return small_registry_model(name)[1]


def _plain(model: InteractiveModel) -> InteractiveModel:
    """The same model without the cached path (the decoder as `PromptableSegmenter.decode` runs it)."""
    plain = InteractiveModel(
        model.name, model.net, model.preprocess, model.multimask, model.prompt_types, model.license
    )
    plain.image_sides = None
    return plain


FAST = [n for n in sorted(REGISTRY) if supports_fast_decode(_small(n).net)]


def test_the_sam_layout_models_take_the_cached_path():
    # the SAM-layout decoders do; SAM 2 (its own decoder with high-resolution skips) does not
    assert {"sam-vit-b", "litemedsam", "imis-lite"} <= set(FAST)
    assert not any(n.startswith("sam2") for n in FAST)


@pytest.mark.parametrize("name", FAST)
def test_cached_path_equals_the_plain_decoder(name):
    model = _small(name)
    model.image_sides = ImageSideCache()
    rng = np.random.default_rng(1)
    image = (rng.random((100, 96, 3)) * 255).astype(np.uint8)
    emb = model.encode(image)
    cases = [p for p in PROMPTS.values() if not (requested_prompt_types(p) - model.prompt_types)]
    assert cases
    for prompts in cases:
        for policy in ("single", "best_iou"):
            got = model.decode(emb, prompts, multimask=policy)
            ref = _plain(model).decode(emb, prompts, multimask=policy)
            np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
            assert got.quality == pytest.approx(ref.quality, abs=1e-5)
            torch.testing.assert_close(got.low_res_logits, ref.low_res_logits, atol=1e-4, rtol=1e-4)
    assert len(model.image_sides) == 1  # the cached path ran, once for the embedding


@pytest.mark.parametrize("name", ["imis-lite", "sam-vit-b"])
def test_a_mask_prompt_gives_the_plain_decoders_masks_and_leaves_the_cache(name):
    model = _small(name)
    model.image_sides = ImageSideCache()
    emb = model.encode(np.zeros((64, 64), np.float32) + np.arange(64, dtype=np.float32))
    first = model.decode(emb, PROMPTS["click"])
    cached = model.image_sides.get(model.net, emb.features)
    for prompts in (PROMPTS["clicks"], PROMPTS["box_click"]):
        again = PromptSpec(
            points=prompts.points, labels=prompts.labels, box=prompts.box, mask_logits=first.low_res_logits
        )
        got = model.decode(emb, again)
        ref = _plain(model).decode(emb, again)
        np.testing.assert_allclose(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
        assert got.quality == pytest.approx(ref.quality, abs=1e-5)
    # the per-image entry is the no-mask one still
    assert len(model.image_sides) == 1 and model.image_sides.get(model.net, emb.features) is cached


def test_cache_is_bounded_and_keyed_by_the_tensor():
    model = _small("imis-lite")
    cache = ImageSideCache(size=2)
    feats = [torch.randn(1, *f.shape[1:]) for f in [model.encode(np.eye(32, dtype=np.float32)).features] * 3]
    a = cache.get(model.net, feats[0])
    assert cache.get(model.net, feats[0]) is a
    cache.get(model.net, feats[1])
    cache.get(model.net, feats[2])
    assert len(cache) == 2 and cache.get(model.net, feats[2]) is not a
    # an entry whose tensor is gone is never returned for a new tensor that reuses its id
    other = torch.randn_like(feats[2])
    del feats
    gc.collect()
    assert not torch.equal(cache.get(model.net, other).src, a.src)
    with pytest.raises(ValueError):
        ImageSideCache(size=0)


def test_litemedsam_real_weights_same_masks_on_btcv(btcv_dir):
    from imis.data.formats import imed
    from imis.models.registry import load_model

    model = load_model("litemedsam")
    entry = imed.read_dataset(btcv_dir).split("test")[0]
    image = imed.read_image(entry.image)
    emb = model.encode(image)
    for prompts in (
        PromptSpec(box=np.array([100.0, 150.0, 300.0, 380.0], np.float32)),
        PromptSpec(points=np.array([[250.0, 300.0]], np.float32), labels=np.array([1])),
    ):
        got, ref = model.decode(emb, prompts), _plain(model).decode(emb, prompts)
        agree = (got.mask == ref.mask).mean()
        assert agree > 0.9999 and got.mask.any()
        assert np.abs(got.logits - ref.logits).max() < 1e-3
