"""Our SAM modules reproduce the official Segment Anything outputs (fixtures/parity/sam_small.pt), and the
fast attention path equals a plain re-statement of SAM's attention on other shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import assert_decode_matches, maxdiff, prompt_kwargs, small_sam_kwargs

import imis.models.image_encoder as ie
from imis.models.build import build_sam_vit
from imis.models.formats import load_strict, sam

TOL = 1e-4
CASES = ["points", "box", "points_box_mask"]


def build_from_config(c: dict):
    return build_sam_vit(**small_sam_kwargs(c)).eval()


@pytest.fixture(scope="module")
def fixture(parity_dir):
    return torch.load(parity_dir / "sam_small.pt", weights_only=False)


@pytest.fixture(scope="module")
def net(fixture):
    model = build_from_config(fixture["config"])
    official = {f"{m}{k}": v for m in sam.PREFIXES for k, v in fixture[m.rstrip(".")].items()}
    load_strict(model, sam.to_internal(sam.unwrap(official)), "sam")
    return model


def test_image_encoder_matches(net, fixture):
    with torch.no_grad():
        emb = net.encode_image(fixture["inputs"]["image"])
    assert maxdiff(emb, fixture["image_embeddings"]) <= TOL


@pytest.mark.parametrize("budget", [70_000, 400_000])
def test_image_encoder_matches_with_chunked_bias(net, fixture, monkeypatch, budget):
    # Small budgets force the per-head / per-window-group chunking that ViT-B at 1024 px uses (chunks of
    # query rows are checked in test_attention_matches_direct_formula, on smaller grids).
    monkeypatch.setitem(ie._BIAS_BUDGET, "cpu", budget)
    with torch.no_grad():
        emb = net.encode_image(fixture["inputs"]["image"])
    assert maxdiff(emb, fixture["image_embeddings"]) <= TOL


def test_image_encoder_chunked_bias_with_autograd(net, fixture, monkeypatch):
    monkeypatch.setitem(ie._BIAS_BUDGET, "cpu", 70_000)
    x = fixture["inputs"]["image"].clone().requires_grad_(True)
    emb = net.encode_image(x)
    assert maxdiff(emb.detach(), fixture["image_embeddings"]) <= TOL
    emb.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert net.image_encoder.blocks[1].attn.rel_pos_h.grad is not None
    net.zero_grad(set_to_none=True)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_prompt_encoder_and_decoder_match(net, fixture, case, multimask):
    inp = fixture["inputs"]
    ref = fixture["outputs"][f"{case}/multimask={multimask}"]
    with torch.no_grad():
        out = net.decode(
            fixture["image_embeddings"],
            **prompt_kwargs(inp, case, click="points"),
            multimask_output=multimask,
        )
    assert_decode_matches(out, ref, ref, TOL)
    assert out["semantic_pred"] is None


def test_decoder_batches_prompts_against_one_embedding(net, fixture):
    inp = fixture["inputs"]
    ref = fixture["outputs"]["box/multimask=True"]
    boxes = inp["box"].repeat(3, 1)
    with torch.no_grad():
        out = net.decode(fixture["image_embeddings"], boxes=boxes)  # embedding batch 1, prompts batch 3
        same = net.decode(fixture["image_embeddings"].expand(3, -1, -1, -1), boxes=boxes)
    assert out["low_res_masks"].shape == (3, 3, 64, 64)
    for i in range(3):
        assert maxdiff(out["low_res_masks"][i : i + 1], ref["low_res_masks"]) <= TOL
    assert maxdiff(same["low_res_masks"], out["low_res_masks"]) <= TOL
    with pytest.raises(ValueError, match="batch"):
        net.decode(fixture["image_embeddings"].expand(2, -1, -1, -1), boxes=boxes)


# ---- the attention of the image encoder against a direct statement of SAM's, on other shapes ----


def naive_attention(attn: ie.Attention, x: torch.Tensor, window: int) -> torch.Tensor:
    """Softmax(q k^T * scale + rel_h + rel_w) v with SAM's zero padding of the normalised tokens."""
    b, h, w, c = x.shape
    if window:
        ph, pw = (-h) % window, (-w) % window
        xp = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        win = xp.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
        win = win.reshape(-1, window, window, c)
        out = naive_attention(attn, win, 0)
        out = out.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, hp, wp, c)[:, :h, :w]
    nh, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).view(b, h * w, 3, nh, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q @ k.transpose(-1, -2)) * d**-0.5  # (b, nh, N, N)
    rh = ie.get_rel_pos(h, h, attn.rel_pos_h)  # (h, h, d)
    rw = ie.get_rel_pos(w, w, attn.rel_pos_w)
    qg = q.reshape(b, nh, h, w, d)
    rel_h = torch.einsum("bnyxc,ykc->bnyxk", qg, rh)
    rel_w = torch.einsum("bnyxc,xkc->bnyxk", qg, rw)
    bias = rel_h[..., :, None] + rel_w[..., None, :]
    logits = logits + bias.reshape(b, nh, h * w, h * w)
    out = logits.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


@pytest.mark.parametrize("budget", [1 << 20, 3000])
@pytest.mark.parametrize(
    "hw,window,table",
    [((9, 13), 4, (4, 4)), ((8, 8), 4, (4, 4)), ((7, 11), 0, (7, 11)), ((10, 6), 0, (16, 16))],
)
def test_attention_matches_direct_formula(monkeypatch, hw, window, table, budget):
    # Non-square grids, padded windows and (last case) rel-pos tables resampled to another grid.
    monkeypatch.setitem(ie._BIAS_BUDGET, "cpu", budget)
    torch.manual_seed(0)
    attn = ie.Attention(24, num_heads=3, use_rel_pos=True, input_size=table)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
        attn.qkv.bias.normal_()
        x = torch.randn(2, *hw, 24)
        assert maxdiff(attn(x, window), naive_attention(attn, x, window)) <= 1e-5


def test_get_rel_pos_resamples_linearly():
    table = torch.arange(7, dtype=torch.float32)[:, None].repeat(1, 2)  # learned for size 4
    same = ie.get_rel_pos(4, 4, table)
    assert same.shape == (4, 4, 2)
    assert torch.equal(same[..., 0], torch.arange(4)[:, None] - torch.arange(4)[None, :] + 3.0)
    big = ie.get_rel_pos(6, 6, table)  # needs 11 entries: linear resampling of the ramp
    assert big.shape == (6, 6, 2)
    assert torch.all(big[:, :-1, 0] >= big[:, 1:, 0])  # still decreasing along keys


def test_encoder_runs_at_other_sizes_with_resampled_pos_embed(net):
    enc = net.image_encoder
    with torch.no_grad():
        for size in [(224, 224), (160, 288)]:
            out = enc(torch.randn(1, 3, *size))
            assert out.shape == (1, 32, size[0] // 16, size[1] // 16)
            assert torch.isfinite(out).all()
    pos = torch.randn(1, 16, 16, 8)
    assert ie.resample_pos_embed(pos, (16, 16)) is pos
    up = ie.resample_pos_embed(torch.full((1, 4, 4, 3), 2.5), (9, 7))
    assert up.shape == (1, 9, 7, 3) and torch.allclose(up, torch.full_like(up, 2.5))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        enc(torch.randn(1, 3, 100, 100))
