"""The input recipes added for SAM 2 (antialiased bilinear) and Huang et al. (percentile clipping)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from imis.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, percentile_uint8, prepare_image


def _imagenet(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_antialias_only_changes_shrinking():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3)).astype(np.uint8)
    aa = Preprocess(96, "square", "bilinear_antialias", "imagenet", False)
    plain = Preprocess(96, "square", "bilinear", "imagenet", False)
    assert torch.allclose(prepare_image(image, aa)[0], prepare_image(image, plain)[0], atol=1e-5)
    big = rng.integers(0, 256, (300, 200, 3)).astype(np.uint8)
    x, _ = prepare_image(big, aa)
    raw = torch.from_numpy(big.astype(np.float32)).permute(2, 0, 1)[None]
    expected = _imagenet(
        F.interpolate(raw, size=(96, 96), mode="bilinear", align_corners=False, antialias=True)
    )
    assert torch.allclose(x, expected, atol=1e-4)
    assert not torch.allclose(x, prepare_image(big, plain)[0], atol=1e-2)


def test_percentile_recipe():
    rng = np.random.default_rng(1)
    ct = rng.normal(40, 300, (64, 64)).astype(np.float32)
    ct[:8] = 0.0
    rgb = np.repeat(ct[..., None], 3, axis=-1)
    out = percentile_uint8(rgb)
    lo, hi = np.percentile(rgb, 0.95), np.percentile(rgb, 99.5)
    c = np.clip(rgb, lo, hi)
    expected = np.uint8((c - c.min()) / (c.max() - c.min()) * 255.0)
    expected[rgb == 0] = 0
    assert np.array_equal(out, expected.astype(np.float32))
    assert out[:8].max() == 0 and out.max() == 255
    x, frame = prepare_image(ct, Preprocess(128, "longest_side", "bilinear", "percentile_imagenet", False))
    assert x.shape == (1, 3, 128, 128) and frame.valid_hw == (128, 128)
    ref = F.interpolate(
        torch.from_numpy(out).permute(2, 0, 1)[None], size=(128, 128), mode="bilinear", align_corners=False
    )
    assert torch.allclose(x, _imagenet(ref), atol=1e-4)
