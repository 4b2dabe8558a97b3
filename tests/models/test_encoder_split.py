"""An image encoder split into a frozen trunk and a trainable head computes the same embedding."""

from __future__ import annotations

import pytest
import torch

from imis.models.image_encoder import ImageEncoderViT
from imis.models.tiny_vit import TinyViT


def _tiny_vit() -> TinyViT:
    return TinyViT(embed_dims=(8, 16, 16, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), out_chans=16)


def _vit() -> ImageEncoderViT:
    return ImageEncoderViT(
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=2,
        window_size=2,
        global_attn_indexes=(1, 3),
        out_chans=16,
    )


@pytest.mark.parametrize("make, size, n", [(_tiny_vit, 64, 4), (_vit, 64, 4)])
def test_head_of_trunk_is_the_encoder(make, size, n):
    torch.manual_seed(0)
    enc = make().eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        want = enc(x)
        for tail in range(1, n + 1):
            trunk, head = enc.split(tail)
            assert torch.allclose(head(trunk(x)), want, atol=1e-5), tail
            # the parts share the encoder's tensors and do not overlap
            ids = {id(p) for p in enc.parameters()}
            t, h = {id(p) for p in trunk.parameters()}, {id(p) for p in head.parameters()}
            assert t <= ids and h <= ids and not t & h
    with pytest.raises(ValueError, match="tail must be 1"):
        enc.split(n + 1)
    with pytest.raises(ValueError, match="tail must be 1"):
        enc.split(0)


def test_head_trains_alone():
    torch.manual_seed(0)
    enc = _tiny_vit()
    trunk, head = enc.split(1)
    with torch.no_grad():
        feats = trunk.eval()(torch.rand(1, 3, 64, 64))
    head.train()(feats).square().mean().backward()
    assert all(p.grad is None for p in trunk.parameters())
    assert all(p.grad is not None for p in head.parameters())
