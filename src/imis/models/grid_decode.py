"""Batched decoding of many single-click prompts against ONE image embedding (the automask grid).

`MaskDecoder` run on a batch of B prompts repeats the image embedding B times and projects every
image token for every prompt, although the first layer's image side is the same for all of them.
Here, for one embedding:

* the first two-way layer's image-side projections (token->image keys/values, image->token queries)
  are computed once per image (:class:`SharedImage`);
* every later attention is re-associated so that the image tokens are multiplied by the few prompt
  tokens (heads x tokens columns) instead of being projected to the attention width: the same sums in
  another order (outputs equal the plain decoder's up to float rounding; the tests bound it);
* the IoU head runs for all prompts first, and the masks (the 4x upscaling, the costliest part) are
  computed only for the (prompt, output) pairs that the caller keeps (`masks_for`).

Only click prompts without mask or text input take this path; anything else goes through
`PromptableSegmenter.decode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imis.models.mask_decoder import MaskDecoder
from imis.models.transformer import Attention, TwoWayAttentionBlock

__all__ = ["GridDecode", "SharedImage", "decode_clicks", "shared_image"]


@dataclass
class SharedImage:
    """Per-image tensors shared by every prompt: src = embedding + no-mask dense prompt (N, D), its
    positional code (N, D), the first layer's projections, and the grid size."""

    src: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor  # first layer token->image keys (N, C)
    v0: torch.Tensor  # first layer token->image values (N, C)
    q0: torch.Tensor  # first layer image->token queries (N, C)
    hw: tuple[int, int]


@dataclass
class GridDecode:
    """Decoder state of a batch of prompts after the IoU head.

    iou: (B, T) predicted IoU of every output token; keys: (B, N, D) image tokens after the
    transformer; tokens: (B, T, D) the mask tokens' outputs.
    """

    iou: torch.Tensor
    keys: torch.Tensor
    tokens: torch.Tensor
    hw: tuple[int, int]


def shared_image(net, features: torch.Tensor) -> SharedImage:
    """The per-image part of the decoder for embedding ``features`` (1, D, h, w)."""
    pe_enc = net.prompt_encoder
    dense = pe_enc.no_mask_embed.weight.reshape(1, -1, 1, 1)
    _, d, h, w = features.shape
    src = (features + dense.to(features.dtype))[0].flatten(1).t().contiguous()
    pe = pe_enc.get_dense_pe().to(features.dtype)[0].flatten(1).t().contiguous()
    first: TwoWayAttentionBlock = net.mask_decoder.transformer.layers[0]
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    k0 = t2i.k_proj(src + pe)
    v0 = t2i.v_proj(src)
    q0 = i2t.q_proj(src + pe)
    return SharedImage(src, pe, k0, v0, q0, (h, w))


def _split(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _t2i_shared(attn: Attention, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Token->image attention on keys/values shared by the batch: q_tok (B, T, D) -> (B, T, D)."""
    b, t, _ = q_tok.shape
    nh, c = _split(attn)
    q = attn.q_proj(q_tok).view(b * t, nh, c).transpose(0, 1)  # (H, B*T, c)
    kh = k.view(-1, nh, c).transpose(0, 1)  # (H, N, c)
    vh = v.view(-1, nh, c).transpose(0, 1)
    out = F.scaled_dot_product_attention(q[None], kh[None], vh[None])[0]  # (H, B*T, c)
    return attn.out_proj(out.transpose(0, 1).reshape(b, t, nh * c))


def _t2i_batched(attn: Attention, q_tok: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Token->image attention on per-prompt image tokens keys (B, N, D) with the shared positional
    code pe (N, D) added to the keys, re-associated.

    score(t, i) = q_t . (W_k (x_i + p_i) + b_k) = (W_k^T q_t) . x_i + (W_k^T q_t) . p_i + const(t): the
    constant cancels in the softmax over i, and the p_i part is one matmul against the shared pe (so
    keys + pe, a (B, N, D) tensor, is never formed). The values: sum_i a_ti (W_v x_i + b_v) =
    W_v (sum_i a_ti x_i) + b_v.
    """
    b, t, _ = q_tok.shape
    nh, c = _split(attn)
    d = keys.shape[-1]
    q = attn.q_proj(q_tok).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    wk = attn.k_proj.weight.view(nh, c, d)
    qk = torch.einsum("bthc,hcd->bthd", q, wk).reshape(b, t * nh, d)
    scores = torch.baddbmm(_with_pe(qk, pe), qk, keys.transpose(1, 2))  # (B, T*H, N), already scaled
    agg = torch.bmm(scores.softmax(dim=-1), keys).view(b, t, nh, d)
    wv = attn.v_proj.weight.view(nh, c, d)
    out = torch.einsum("bthd,hcd->bthc", agg, wv).reshape(b, t, nh * c) + attn.v_proj.bias
    return attn.out_proj(out)


def _with_pe(vecs: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """(B, R, D) vectors against the shared positional code pe (N, D) -> (B, R, N): one matmul."""
    b, r, d = vecs.shape
    return (vecs.reshape(b * r, d) @ pe.t()).view(b, r, -1)


def _softmax_tokens(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the token axis of (B, N, T, H) logits. Written out: torch's softmax over a last
    axis of ~7 is several times slower on a CPU than these three passes over (T, H) blocks."""
    e = (scores - scores.amax(dim=-2, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-2, keepdim=True))


def _i2t_update(attn: Attention, keys: torch.Tensor, scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """keys + image->token attention output, from its logits (B, N, T, H) and token values (B, T, H*c).

    The output projection is applied to the few token values first: sum_{t,h} a_ith (W_o^h v_th); its
    bias is spread over the T*H rows (each head's weights sum to 1 over the tokens), so that one
    batched matmul adds the whole update onto ``keys``.
    """
    b, n, t, nh = scores.shape
    c = v.shape[-1] // nh
    a = _softmax_tokens(scores).reshape(b, n, t * nh)
    wo = attn.out_proj.weight.view(-1, nh, c)  # (D, H, c)
    u = torch.einsum("bthc,dhc->bthd", v.view(b, t, nh, c), wo).reshape(b, t * nh, -1)
    return torch.baddbmm(keys, a, u + attn.out_proj.bias / nh)


def _i2t_shared(
    attn: Attention, src, q0: torch.Tensor, tok_pe: torch.Tensor, tok: torch.Tensor
) -> torch.Tensor:
    """src + the image->token update of image tokens shared by the batch (queries q0 (N, C) precomputed)."""
    b, t, _ = tok.shape
    nh, c = _split(attn)
    k = attn.k_proj(tok_pe).view(b * t, nh, c).permute(1, 2, 0) * (1.0 / math.sqrt(c))  # (H, c, B*T)
    scores = torch.bmm(q0.view(-1, nh, c).transpose(0, 1), k)  # (H, N, B*T)
    scores = scores.view(nh, -1, b, t).permute(2, 1, 3, 0).contiguous()  # (B, N, T, H)
    return _i2t_update(attn, src.expand(b, -1, -1), scores, attn.v_proj(tok))


def _i2t_batched(
    attn: Attention, keys, pe: torch.Tensor, tok_pe: torch.Tensor, tok: torch.Tensor
) -> torch.Tensor:
    """keys + the image->token update: (W_q (x_i + p_i) + b_q) . k_t = x_i . (W_q^T k_t) + p_i . (W_q^T k_t)
    + b_q . k_t (the p_i part one matmul against the shared pe, see `_t2i_batched`)."""
    b, t, _ = tok.shape
    nh, c = _split(attn)
    d = keys.shape[-1]
    k = attn.k_proj(tok_pe).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    kq = torch.einsum("bthc,hcd->bthd", k, attn.q_proj.weight.view(nh, c, d)).reshape(b, t * nh, d)
    const = torch.einsum("bthc,hc->bth", k, attn.q_proj.bias.view(nh, c)).reshape(b, t * nh, 1)
    base = (_with_pe(kq, pe) + const).transpose(1, 2)  # (B, N, T*H)
    scores = torch.baddbmm(base, keys, kq.transpose(1, 2))
    return _i2t_update(attn, keys, scores.view(b, -1, t, nh), attn.v_proj(tok))


def _layer(
    layer: TwoWayAttentionBlock, queries, keys, tok_pe, shared: SharedImage
) -> tuple[torch.Tensor, torch.Tensor]:
    """One two-way block; ``keys`` None means the shared first-layer image tokens."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(queries, queries, queries)
    else:
        q = queries + tok_pe
        queries = queries + layer.self_attn(q, q, queries)
    queries = layer.norm1(queries)
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    if keys is None:
        queries = layer.norm2(queries + _t2i_shared(t2i, queries + tok_pe, shared.k0, shared.v0))
        queries = layer.norm3(queries + layer.mlp(queries))
        return queries, layer.norm4(_i2t_shared(i2t, shared.src, shared.q0, queries + tok_pe, queries))
    queries = layer.norm2(queries + _t2i_batched(t2i, queries + tok_pe, keys, shared.pe))
    queries = layer.norm3(queries + layer.mlp(queries))
    return queries, layer.norm4(_i2t_batched(i2t, keys, shared.pe, queries + tok_pe, queries))


def decode_clicks(net, shared: SharedImage, sparse: torch.Tensor) -> GridDecode:
    """Run the transformer and the IoU head for a batch of click prompts (sparse (B, P, D) tokens).

    The first layer must skip the positional code of its self-attention (SAM's layout), which is
    what makes its image side independent of the prompts.
    """
    dec: MaskDecoder = net.mask_decoder
    tr = dec.transformer
    if not tr.layers[0].skip_first_layer_pe:
        raise ValueError("grid decoding needs SAM's first decoder layer (skip_first_layer_pe)")
    b = sparse.shape[0]
    out_tokens = [dec.iou_token.weight, dec.mask_tokens.weight]
    if dec.semantic_tokens is not None:
        out_tokens.append(dec.semantic_tokens.weight)
    out_tokens = torch.cat(out_tokens).to(sparse.dtype)
    tok_pe = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    queries, keys = tok_pe, None
    for layer in tr.layers:
        queries, keys = _layer(layer, queries, keys, tok_pe, shared)
    if keys is None:  # a transformer of depth 0
        keys = shared.src.unsqueeze(0).expand(b, -1, -1)
    n_out = 1 + dec.num_mask_tokens  # the IoU token and the mask tokens feed the heads
    q = queries[:, :n_out]
    attn = _t2i_batched(tr.final_attn_token_to_image, q + tok_pe[:, :n_out], keys, shared.pe)
    q = tr.norm_final_attn(q + attn)
    iou = dec.iou_prediction_head(q[:, 0])
    return GridDecode(iou=iou, keys=keys, tokens=q[:, 1:], hw=shared.hw)


def masks_for(net, state: GridDecode, rows: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Low-res mask logits (K, 4h, 4w) of output ``outputs[k]`` of prompt ``rows[k]`` (same frame as
    `MaskDecoder`'s ``low_res_masks``)."""
    dec: MaskDecoder = net.mask_decoder
    mlps = dec.output_hypernetworks_mlps
    tokens = state.tokens[rows, outputs]  # (K, D)
    hyper = torch.empty(len(rows), dec.transformer_dim // 8, dtype=tokens.dtype)
    for o in outputs.unique().tolist():
        sel = outputs == o
        hyper[sel] = mlps[o](tokens[sel])
    h, w = state.hw
    return dec._upscale_and_project(state.keys[rows], h, w, hyper[:, None])[:, 0]
