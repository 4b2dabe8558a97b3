"""Batched decoding of many single-click prompts against ONE image embedding (the automask grid).

`MaskDecoder` run on a batch of B prompts repeats the image embedding B times and updates all 4096
image tokens of 256 channels for every prompt. Here the image tokens of each prompt are kept in a
factored form instead (:class:`Factored`):

    keys_i = scale_i * base_i + coef_i . basis

``base`` (N, D) is shared by every prompt of the image; per prompt there is a scale per token, a few
coefficients per token (one per (token, head) pair of each image->token attention, plus one per
LayerNorm) and a small basis (K, D). That is exact, not an approximation:

* an image->token attention adds sum_{t,h} a_ith (W_o^h v_th + b_o / H) to token i: the weights a_i
  are new coefficients and the (t, h) update vectors a new part of the basis;
* a LayerNorm subtracts a per-token mean and divides by a per-token deviation; both are computed
  from the factors (the centred base's norm, its products with the basis, the basis' Gram matrix),
  and the result is again scale * base' + coef' . basis' with base' = centred base * gamma (shared)
  and basis' = [centred basis * gamma; beta];
* an attention that reads the image tokens needs their projections W (keys_i + pe_i): W base and
  W pe are per-image matrices computed once (:class:`Stage`), W basis is tiny, so per prompt only
  products of the (K, N) coefficients with (K, tokens x heads) matrices remain.

Per prompt the passes run over K x N coefficients (K = 114 for SAM's two layers: 2 x (7 tokens x 8
heads + 1)) instead of N x 256 image tokens, and the image tokens are formed only for the masks
that are asked for (`masks_for`: the 4x upscaling needs them). On a CPU the decode stays
memory-bound (elementwise passes and small batched products); measured side by side with the
previous path (image tokens updated per prompt) it takes 0.76-0.86x the CPU time per click (README).
Outputs equal the plain decoder's up to float rounding (tests bound it). The per-image part
(`SharedImage`) is about 13 embeddings' worth of memory (it was 3.5).

Only click (and box) prompts without mask or text input take this path; anything else goes through
`PromptableSegmenter.decode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imis.models.mask_decoder import MaskDecoder
from imis.models.transformer import Attention, TwoWayAttentionBlock

__all__ = ["Factored", "GridDecode", "SharedImage", "Stage", "decode_clicks", "masks_for", "shared_image"]


@dataclass
class Stage:
    """Per-image tensors of the image tokens entering one decoder layer (or the final attention):
    ``base`` (N, D), its per-token centred version and squared norm (for the LayerNorm that follows
    the layer), and the projections (no bias) of base and of the positional code through the
    attentions that read the image tokens, per head: (H, c, N), the values (H, N, c); None where the
    layer has no image->token attention."""

    base: torch.Tensor
    centred: torch.Tensor
    sqnorm: torch.Tensor  # (N,) float32
    t2i_k: torch.Tensor
    t2i_v: torch.Tensor
    pe_k: torch.Tensor
    i2t_q: torch.Tensor | None
    pe_q: torch.Tensor | None


@dataclass
class SharedImage:
    """Per-image tensors shared by every prompt: src = embedding + no-mask dense prompt (N, D), its
    positional code (N, D), the first layer's projections, the grid size, and one :class:`Stage`
    per later layer and for the final attention (``stages[l - 1]`` enters layer l)."""

    src: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor  # first layer token->image keys (N, C)
    v0: torch.Tensor  # first layer token->image values (N, C)
    q0: torch.Tensor  # first layer image->token queries (N, C)
    hw: tuple[int, int]
    stages: list[Stage] | None = None
    src_centred: torch.Tensor | None = None
    src_sqnorm: torch.Tensor | None = None
    q0_heads: torch.Tensor | None = None  # q0 as (H, c, N)


@dataclass
class Factored:
    """Image tokens of B prompts: keys[b, i] = scale[b, 0, i] * base[i] + coef[b, :, i] @ basis[b]."""

    scale: torch.Tensor  # (B, 1, N)
    coef: torch.Tensor  # (B, K, N)
    basis: torch.Tensor  # (B, K, D)
    base: torch.Tensor  # (N, D), shared

    def dense(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The (B or len(rows), N, D) image tokens."""
        s, c, b = self.scale, self.coef, self.basis
        if rows is not None:
            s, c, b = s[rows], c[rows], b[rows]
        return torch.baddbmm(s.transpose(1, 2) * self.base, c.transpose(1, 2), b)


@dataclass
class GridDecode:
    """Decoder state of a batch of prompts after the IoU head.

    iou: (B, T) predicted IoU of every output token; tokens: (B, T, D) the mask tokens' outputs;
    image: the image tokens after the transformer, factored (``keys`` forms them: (B, N, D)).
    """

    iou: torch.Tensor
    tokens: torch.Tensor
    hw: tuple[int, int]
    image: Factored

    @property
    def keys(self) -> torch.Tensor:
        return self.image.dense()


def _split(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xc = x - x.mean(dim=-1, keepdim=True)
    return xc, xc.float().square().sum(-1)


def _heads_last(x: torch.Tensor, nh: int) -> torch.Tensor:
    """(N, H*c) projections -> (H, c, N) contiguous: the layout the per-head products read."""
    return x.view(x.shape[0], nh, -1).permute(1, 2, 0).contiguous()


def _stage(base: torch.Tensor, pe: torch.Tensor, t2i: Attention, i2t: Attention | None) -> Stage:
    centred, sqnorm = _centre(base)
    nh = t2i.num_heads
    wq = i2t.q_proj.weight if i2t is not None else None
    return Stage(
        base=base,
        centred=centred,
        sqnorm=sqnorm,
        t2i_k=_heads_last(base @ t2i.k_proj.weight.t(), nh),
        t2i_v=(base @ t2i.v_proj.weight.t()).view(base.shape[0], nh, -1).transpose(0, 1).contiguous(),
        pe_k=_heads_last(pe @ t2i.k_proj.weight.t(), nh),
        i2t_q=None if wq is None else _heads_last(base @ wq.t(), i2t.num_heads),
        pe_q=None if wq is None else _heads_last(pe @ wq.t(), i2t.num_heads),
    )


def shared_image(net, features: torch.Tensor) -> SharedImage:
    """The per-image part of the decoder for embedding ``features`` (1, D, h, w)."""
    pe_enc = net.prompt_encoder
    dec: MaskDecoder = net.mask_decoder
    layers = dec.transformer.layers
    dense = pe_enc.no_mask_embed.weight.reshape(1, -1, 1, 1)
    _, d, h, w = features.shape
    src = (features + dense.to(features.dtype))[0].flatten(1).t().contiguous()
    pe = pe_enc.get_dense_pe().to(features.dtype)[0].flatten(1).t().contiguous()
    first: TwoWayAttentionBlock = layers[0]
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    k0 = t2i.k_proj(src + pe)
    v0 = t2i.v_proj(src)
    q0 = i2t.q_proj(src + pe)
    src_centred, src_sqnorm = _centre(src)
    stages, centred = [], src_centred
    for i in range(1, len(layers) + 1):
        base = centred * layers[i - 1].norm4.weight  # the LayerNorm closing layer i - 1, its gain
        if i < len(layers):
            st = _stage(base, pe, layers[i].cross_attn_token_to_image, layers[i].cross_attn_image_to_token)
        else:
            st = _stage(base, pe, dec.transformer.final_attn_token_to_image, None)
        stages.append(st)
        centred = st.centred
    q0_heads = _heads_last(q0, i2t.num_heads)
    return SharedImage(src, pe, k0, v0, q0, (h, w), stages, src_centred, src_sqnorm, q0_heads)


def _t2i_shared(attn: Attention, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Token->image attention on keys/values shared by the batch: q_tok (B, T, D) -> (B, T, D)."""
    b, t, _ = q_tok.shape
    nh, c = _split(attn)
    q = attn.q_proj(q_tok).view(b * t, nh, c).transpose(0, 1)  # (H, B*T, c)
    kh = k.view(-1, nh, c).transpose(0, 1)  # (H, N, c)
    vh = v.view(-1, nh, c).transpose(0, 1)
    out = F.scaled_dot_product_attention(q[None], kh[None], vh[None])[0]  # (H, B*T, c)
    return attn.out_proj(out.transpose(0, 1).reshape(b, t, nh * c))


def _per_head(shared: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """Per-head products of shared (H, c, N) projections with per-prompt (B, T, H, c) vectors ->
    (B, T, H, N) (a view of a head-major result)."""
    b, t, nh, c = vecs.shape
    out = torch.bmm(vecs.permute(2, 0, 1, 3).reshape(nh, b * t, c), shared)  # (H, B*T, N)
    return out.view(nh, b, t, -1).permute(1, 2, 0, 3)


def _add_via_coef(
    scores: torch.Tensor, state: Factored, weight: torch.Tensor, vecs: torch.Tensor
) -> torch.Tensor:
    """scores (B, T, H, N) + coef_i . (basis W_h^T v_th) for every image token i, as (B, T*H, N)
    ((t, h) rows), with (B, T, H, c) vectors v."""
    b, t, nh, c = vecs.shape
    proj = (state.basis @ weight.t()).view(b, -1, nh, c)  # (B, K, H, c)
    m = torch.einsum("bkhc,bthc->bthk", proj, vecs).reshape(b, t * nh, -1)
    return torch.baddbmm(scores.reshape(b, t * nh, -1), m, state.coef)


def _t2i(attn: Attention, q_tok: torch.Tensor, state: Factored, stage: Stage) -> torch.Tensor:
    """Token->image attention on factored image tokens (keys + pe as keys, keys as values)."""
    b, t, _ = q_tok.shape
    nh, c = _split(attn)
    q = attn.q_proj(q_tok).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    # key bias and pe-free constants are the same for every image token: they cancel in the softmax
    scores = torch.addcmul(_per_head(stage.pe_k, q), state.scale.unsqueeze(1), _per_head(stage.t2i_k, q))
    a = _add_via_coef(scores, state, attn.k_proj.weight, q).softmax(dim=-1)  # (B, T*H, N)
    # values: sum_i a_i (scale_i W_v base_i + coef_i W_v basis) + b_v
    a_s = (a * state.scale).view(b, t, nh, -1).permute(2, 0, 1, 3).reshape(nh, b * t, -1)
    out = torch.bmm(a_s, stage.t2i_v).view(nh, b, t, c).permute(1, 2, 0, 3)  # (B, T, H, c)
    ac = torch.bmm(a, state.coef.transpose(1, 2)).view(b, t, nh, -1)  # (B, T, H, K)
    fv = (state.basis @ attn.v_proj.weight.t()).view(b, -1, nh, c)
    out = out + torch.einsum("bthk,bkhc->bthc", ac, fv)
    return attn.out_proj(out.reshape(b, t, nh * c) + attn.v_proj.bias)


def _update_vectors(attn: Attention, tok: torch.Tensor) -> torch.Tensor:
    """(B, T*H, D): what a unit of attention from image token to (token t, head h) adds to it,
    W_o^h v_th plus the output bias spread over the heads (each head's weights sum to 1)."""
    b, t, _ = tok.shape
    nh, c = _split(attn)
    wo = attn.out_proj.weight.view(-1, nh, c)  # (D, H, c)
    u = torch.einsum("bthc,dhc->bthd", attn.v_proj(tok).view(b, t, nh, c), wo).reshape(b, t * nh, -1)
    return u + attn.out_proj.bias / nh


def _i2t_weights(attn: Attention, tok_pe: torch.Tensor, state: Factored, stage: Stage) -> torch.Tensor:
    """Image->token attention weights (B, T*H, N) of factored image tokens (keys + pe as queries)."""
    b, t, _ = tok_pe.shape
    nh, c = _split(attn)
    k = attn.k_proj(tok_pe).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    scores = torch.addcmul(_per_head(stage.pe_q, k), state.scale.unsqueeze(1), _per_head(stage.i2t_q, k))
    scores = _add_via_coef(scores, state, attn.q_proj.weight, k)
    scores += torch.einsum("bthc,hc->bth", k, attn.q_proj.bias.view(nh, c)).reshape(b, t * nh, 1)
    return _softmax_tokens(scores, nh)


def _softmax_tokens(scores: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax over the tokens of (B, T*H, N) logits ((t, h) rows), in place. Written out: torch's
    softmax over a small non-last axis is several times slower on a CPU than these passes."""
    b, r, n = scores.shape
    x = scores.view(b, r // heads, heads, n)
    x.sub_(x.amax(dim=1, keepdim=True)).exp_()
    x.div_(x.sum(dim=1, keepdim=True))
    return scores


def _layer_norm(state: Factored, norm: torch.nn.LayerNorm, centred, sqnorm, next_base) -> Factored:
    """LayerNorm of factored image tokens. With x_i = s_i base_i + e_i . basis and the base centred
    per token (base_c): x_i - mean = s_i base_c_i + e_i . basis_c, and its squared norm is
    s^2 |base_c|^2 + 2 s e . (basis base_c) + e^T (basis_c basis_c^T) e (basis_c . base_c = basis .
    base_c, base_c summing to 0). The result: scale s / sigma on next_base = base_c * gamma, coef
    [e / sigma, 1] on basis [basis_c * gamma, beta]."""
    b, k, n = state.coef.shape
    d = state.basis.shape[-1]
    basis_c = state.basis - state.basis.mean(dim=-1, keepdim=True)
    # 2 s e . cross + e^T G e = e . (2 s cross + G e): one product with the coefficients
    cross = (state.basis.reshape(b * k, d) @ centred.t()).view(b, k, n).mul_(2 * state.scale)
    gram = torch.bmm(basis_c, basis_c.transpose(1, 2))
    rest = torch.baddbmm(cross, gram, state.coef).mul_(state.coef).sum(1).float()  # (B, N)
    s = state.scale[:, 0].float()
    var = (s.square() * sqnorm + rest) / d
    inv = torch.rsqrt(var.clamp(min=0) + norm.eps).to(state.coef.dtype).unsqueeze(1)  # (B, 1, N)
    coef = torch.empty(b, k + 1, n, dtype=state.coef.dtype, device=state.coef.device)
    torch.mul(state.coef, inv, out=coef[:, :k])  # one pass: scaled and moved into the grown tensor
    coef[:, k] = 1
    beta = norm.bias.to(state.basis.dtype).expand(b, 1, d)
    basis = torch.cat([basis_c * norm.weight, beta], dim=1)
    return Factored(state.scale * inv, coef, basis, next_base)


def _append(coef: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Coefficients (B, k, N) followed by ``rows`` (B, r, N), contiguous (the batched products
    that read them would copy a strided view each time)."""
    return torch.cat([coef, rows], dim=1)


def _tokens_first_layer(layer: TwoWayAttentionBlock, tok_pe: torch.Tensor, shared: SharedImage):
    """First block: its image side is shared; returns the tokens and the image tokens' update weights
    (B, T*H, N) and vectors (B, T*H, D)."""
    queries = layer.norm1(layer.self_attn(tok_pe, tok_pe, tok_pe))
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    queries = layer.norm2(queries + _t2i_shared(t2i, queries + tok_pe, shared.k0, shared.v0))
    queries = layer.norm3(queries + layer.mlp(queries))
    b, t, _ = queries.shape
    nh, c = _split(i2t)
    k = i2t.k_proj(queries + tok_pe).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    weights = _softmax_tokens(_per_head(shared.q0_heads, k).reshape(b, t * nh, -1), nh)
    return queries, weights, _update_vectors(i2t, queries)


def decode_clicks(net, shared: SharedImage, sparse: torch.Tensor) -> GridDecode:
    """Run the transformer and the IoU head for a batch of click prompts (sparse (B, P, D) tokens).

    The first layer must skip the positional code of its self-attention (SAM's layout), which is
    what makes its image side independent of the prompts.
    """
    dec: MaskDecoder = net.mask_decoder
    tr = dec.transformer
    if not len(tr.layers) or not tr.layers[0].skip_first_layer_pe:
        raise ValueError("grid decoding needs SAM's first decoder layer (skip_first_layer_pe)")
    b = sparse.shape[0]
    out_tokens = [dec.iou_token.weight, dec.mask_tokens.weight]
    if dec.semantic_tokens is not None:
        out_tokens.append(dec.semantic_tokens.weight)
    out_tokens = torch.cat(out_tokens).to(sparse.dtype)
    tok_pe = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    queries, weights, update = _tokens_first_layer(tr.layers[0], tok_pe, shared)
    ones = torch.ones(b, 1, weights.shape[-1], dtype=sparse.dtype, device=sparse.device)
    depth = len(tr.layers)
    state = Factored(ones, weights, update, shared.src)
    centred, sqnorm = shared.src_centred, shared.src_sqnorm
    for i in range(1, depth + 1):
        stage = shared.stages[i - 1]  # the image tokens entering layer i (i == depth: the final attention)
        state = _layer_norm(state, tr.layers[i - 1].norm4, centred, sqnorm, stage.base)
        if i == depth:
            break
        layer = tr.layers[i]
        queries = _later_layer(layer, queries, tok_pe, state, stage)
        i2t = layer.cross_attn_image_to_token
        weights = _i2t_weights(i2t, queries + tok_pe, state, stage)
        basis = torch.cat([state.basis, _update_vectors(i2t, queries)], dim=1)
        state = Factored(state.scale, _append(state.coef, weights), basis, state.base)
        centred, sqnorm = stage.centred, stage.sqnorm
    n_out = 1 + dec.num_mask_tokens  # the IoU token and the mask tokens feed the heads
    q = queries[:, :n_out]
    final = shared.stages[-1]
    attn = _t2i(tr.final_attn_token_to_image, q + tok_pe[:, :n_out], state, final)
    q = tr.norm_final_attn(q + attn)
    iou = dec.iou_prediction_head(q[:, 0])
    return GridDecode(iou=iou, tokens=q[:, 1:], hw=shared.hw, image=state)


def _later_layer(layer: TwoWayAttentionBlock, queries, tok_pe, state: Factored, stage: Stage):
    """The token side of a block after the first: self-attention, token->image attention, MLP."""
    q = queries + tok_pe
    queries = layer.norm1(queries + layer.self_attn(q, q, queries))
    queries = layer.norm2(queries + _t2i(layer.cross_attn_token_to_image, queries + tok_pe, state, stage))
    return layer.norm3(queries + layer.mlp(queries))


def masks_for(net, state: GridDecode, rows: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Low-res mask logits (K, 4h, 4w) of output ``outputs[k]`` of prompt ``rows[k]`` (same frame as
    `MaskDecoder`'s ``low_res_masks``)."""
    dec: MaskDecoder = net.mask_decoder
    mlps = dec.output_hypernetworks_mlps
    tokens = state.tokens[rows, outputs]  # (K, D)
    hyper = torch.empty(len(rows), dec.transformer_dim // 8, dtype=tokens.dtype, device=tokens.device)
    for o in outputs.unique().tolist():
        sel = outputs == o
        hyper[sel] = mlps[o](tokens[sel])
    h, w = state.hw
    return dec._upscale_and_project(state.image.dense(rows), h, w, hyper[:, None])[:, 0]
