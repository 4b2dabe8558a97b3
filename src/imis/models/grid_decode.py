"""Batched decoding of many single-click prompts against ONE image embedding (the automask grid).

`MaskDecoder` run on a batch of B prompts repeats the image embedding B times and updates all 4096
image tokens of 256 channels for every prompt. Here the image tokens of each prompt are kept in a
factored form instead (:class:`Factored`):

    keys_i = scale_i * (base_i + coef_i . basis)

``base`` (N, D) is shared by every prompt of the image; per prompt there is a scale per token, a few
coefficients per token (one per (token, head) pair of each image->token attention, plus one per
LayerNorm) and a small basis (K, D). That is exact, not an approximation:

* an image->token attention adds sum_{t,h} a_ith (W_o^h v_th + b_o / H) to token i: the weights
  a_i / scale_i are new coefficients and the (t, h) update vectors a new part of the basis;
* a LayerNorm subtracts a per-token mean and divides by a per-token deviation; both are computed
  from the factors (the centred base's norm, its products with the basis, the basis' Gram matrix).
  The deviation only changes the scale (the coefficients are relative to it, so they are not
  rewritten), base' = centred base * gamma and basis' = centred basis * gamma, and beta joins the
  basis with coefficient 1 / scale';
* an attention that reads the image tokens needs their projections W (keys_i + pe_i): W base and
  W pe are per-image matrices computed once (:class:`Stage`), W basis is tiny, so per prompt only
  products of the (K, N) coefficients with (K, tokens x heads) matrices remain.

Per prompt the passes run over K x N coefficients (K = 114 for SAM's two layers: 2 x (7 tokens x 8
heads + 1)) instead of N x 256 image tokens, and the image tokens are formed only for the masks
that are asked for (`masks_for`: the 4x upscaling needs them). On a CPU the decode is bound by passes
over memory, so the layout avoids them: the coefficients are kept as one contiguous block per layer
(never concatenated), per-head products are one matrix product with block-diagonal queries (a product
over 16 channels per head is slow and its output needs a transposing copy), biases are folded into the
per-image matrices, the LayerNorms' products of the basis with the base come from the blocks' 16-channel
value vectors (`_cross_tables`), and the final token->image attention runs for the IoU token only (the
mask tokens' is finished in `masks_for`, for the prompts whose masks are kept). Outputs equal the plain decoder's up to float rounding (tests bound it). The
per-image part (`SharedImage`) is about 13 embeddings' worth of memory.

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

__all__ = [
    "Block",
    "Factored",
    "GridDecode",
    "SharedImage",
    "Stage",
    "decode_clicks",
    "masks_for",
    "shared_image",
]


@dataclass
class Stage:
    """Per-image tensors of the image tokens entering one decoder layer (or the final attention):
    ``base`` (N, D), its per-token centred version (transposed: (D, N), the layout of the LayerNorm's
    product with the basis) and squared norm (for the LayerNorm that follows the layer), and the projections of base and of the positional code through the attentions that
    read the image tokens: head-major channels by tokens (C, N) for scores, tokens by channels (N, C)
    for the values; the image->token queries of the positional code carry the query bias. None where
    the layer has no image->token attention."""

    base: torch.Tensor
    centred_t: torch.Tensor  # (D, N)
    sqnorm: torch.Tensor  # (N,) float32
    t2i_k: torch.Tensor  # (C, N)
    t2i_v: torch.Tensor  # (N, C)
    pe_k: torch.Tensor  # (C, N)
    i2t_q: torch.Tensor | None  # (C, N)
    pe_q: torch.Tensor | None  # (C, N), bias included


@dataclass
class SharedImage:
    """Per-image tensors shared by every prompt: src = embedding + no-mask dense prompt (N, D), its
    positional code (N, D), the first layer's projections, the grid size, and one :class:`Stage`
    per later layer and for the final attention (``stages[l - 1]`` enters layer l)."""

    src: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor  # first layer token->image keys (N, C)
    v0: torch.Tensor  # first layer token->image values (N, C)
    q0: torch.Tensor  # first layer image->token queries, bias included (C, N)
    hw: tuple[int, int]
    stages: list[Stage]
    src_centred_t: torch.Tensor  # (D, N)
    src_sqnorm: torch.Tensor
    cross: dict[tuple[int, int], torch.Tensor]  # (LayerNorm s, block l) -> (C + 2, N), see _cross_tables


@dataclass
class Block:
    """The coefficients one decoder layer's image->token attention added, for B prompts: coef (B, k, N)
    on basis (B, k, D), k = tokens x heads + 1 (the spare row takes the beta of the LayerNorm closing
    the layer). ``query`` (B, k, C + 2) is what the LayerNorms' products of the basis with the base are
    computed from: each row's value vector in its head's columns, then 1 for the output bias, then 1 on
    the spare row for the beta (`_cross_tables`)."""

    coef: torch.Tensor
    basis: torch.Tensor
    query: torch.Tensor


@dataclass
class Factored:
    """Image tokens of B prompts: keys[b, i] = scale[b, 0, i] * (base[i] + sum over the blocks of
    coef[b, :, i] @ basis[b]). One :class:`Block` per decoder layer, each contiguous (batched products
    would copy a slice of a larger tensor)."""

    scale: torch.Tensor  # (B, 1, N)
    blocks: list[Block]
    base: torch.Tensor  # (N, D), shared

    @property
    def rows(self) -> int:
        """Coefficients per image token."""
        return sum(blk.coef.shape[1] for blk in self.blocks)

    def select(self, rows: torch.Tensor) -> Factored:
        """The image tokens of prompts ``rows`` only."""
        blocks = [Block(b.coef[rows], b.basis[rows], b.query[rows]) for b in self.blocks]
        return Factored(self.scale[rows], blocks, self.base)

    def dense(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The (B or len(rows), N, D) image tokens."""
        s = self.scale if rows is None else self.scale[rows]
        x = self.base.expand(s.shape[0], -1, -1)
        for blk in self.blocks:
            coef, basis = blk.coef, blk.basis
            if rows is not None:
                coef, basis = coef[rows], basis[rows]
            x = torch.baddbmm(x, coef.transpose(1, 2), basis)
        return x * s.transpose(1, 2)


@dataclass
class GridDecode:
    """Decoder state of a batch of prompts after the IoU head.

    iou: (B, T) predicted IoU of every output token; image: the image tokens after the transformer,
    factored (``keys`` forms them: (B, N, D)). The IoU head reads only the IoU token, so the final
    token->image attention runs for it alone; the mask tokens' (``pending`` (B, T, D) and their
    prompt part ``pending_pe``) is finished in `masks_for`, for the few prompts whose masks are asked
    for. ``final`` is the per-image side of that attention.
    """

    iou: torch.Tensor
    hw: tuple[int, int]
    image: Factored
    pending: torch.Tensor
    pending_pe: torch.Tensor
    final: Stage

    @property
    def keys(self) -> torch.Tensor:
        return self.image.dense()


def _split(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) tokens -> each centred over its channels, transposed (D, N), and its squared norm (N,)."""
    xc = x - x.mean(dim=-1, keepdim=True)
    return xc.t().contiguous(), xc.float().square().sum(-1)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous()


def _stage(base: torch.Tensor, pe: torch.Tensor, t2i: Attention, i2t: Attention | None) -> Stage:
    centred_t, sqnorm = _centre(base)
    wk = t2i.k_proj.weight
    return Stage(
        base=base,
        centred_t=centred_t,
        sqnorm=sqnorm,
        t2i_k=_channels_first(base @ wk.t()),
        t2i_v=(base @ t2i.v_proj.weight.t()).contiguous(),
        pe_k=_channels_first(pe @ wk.t()),
        i2t_q=None if i2t is None else _channels_first(base @ i2t.q_proj.weight.t()),
        pe_q=None if i2t is None else _channels_first(i2t.q_proj(pe)),
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
    q0 = _channels_first(i2t.q_proj(src + pe))
    src_centred_t, src_sqnorm = _centre(src)
    stages, centred_t = [], src_centred_t
    for i in range(1, len(layers) + 1):
        base = centred_t.t() * layers[i - 1].norm4.weight  # the LayerNorm closing layer i - 1, its gain
        if i < len(layers):
            st = _stage(base, pe, layers[i].cross_attn_token_to_image, layers[i].cross_attn_image_to_token)
        else:
            st = _stage(base, pe, dec.transformer.final_attn_token_to_image, None)
        stages.append(st)
        centred_t = st.centred_t
    centred_in = [src_centred_t] + [st.centred_t for st in stages[:-1]]  # entering LayerNorm s
    cross = _cross_tables(layers, centred_in, src.dtype)
    return SharedImage(src, pe, k0, v0, q0, (h, w), stages, src_centred_t, src_sqnorm, cross)


def _cross_tables(layers, centred_in: list[torch.Tensor], dtype) -> dict[tuple[int, int], torch.Tensor]:
    """Per-image tables for the LayerNorms' products basis . base_c (B x k x N per block, the largest
    product of the decode) from the blocks' value vectors (B x k x C, C = 128 < D = 256).

    A row of block l is u = W_o^h v + b_o / H (the update of (token, head) with value v), mapped by each
    later LayerNorm j < s to T_j(u) = centre(u) * gamma_j, a linear map whose adjoint is
    y -> centre(y * gamma_j). So at LayerNorm s, with q_l = T_l^T ... T_{s-1}^T base_c (N, D):
    T(u) . base_c = v . (W_o^h^T q_l) + (b_o / H) . q_l, and the spare row's beta_l (set by LayerNorm l)
    gives beta_l . q_{l+1}. Table (s, l) stacks q_l W_o (C rows), q_l . b_o / H and beta_l . q_{l+1}
    (zeros while s == l: the spare row is still empty) as (C + 2, N)."""
    tables = {}
    for s, centred_t in enumerate(centred_in):
        q = {s: centred_t.t().float()}
        for j in range(s - 1, -1, -1):
            y = q[j + 1] * layers[j].norm4.weight.float()
            q[j] = y - y.mean(dim=-1, keepdim=True)
        for blk in range(s + 1):
            attn = layers[blk].cross_attn_image_to_token
            out = attn.out_proj
            spare = q[blk + 1] @ layers[blk].norm4.bias.float() if blk < s else q[blk].new_zeros(len(q[blk]))
            rows = [
                q[blk] @ out.weight.float(),
                (q[blk] @ out.bias.float() / attn.num_heads)[:, None],
                spare[:, None],
            ]
            tables[(s, blk)] = torch.cat(rows, dim=1).t().to(dtype).contiguous()
    return tables


def _t2i_shared(attn: Attention, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Token->image attention on keys/values shared by the batch: q_tok (B, T, D) -> (B, T, D)."""
    b, t, _ = q_tok.shape
    nh, c = _split(attn)
    q = attn.q_proj(q_tok).view(b * t, nh, c).transpose(0, 1)  # (H, B*T, c)
    kh = k.view(-1, nh, c).transpose(0, 1)  # (H, N, c)
    vh = v.view(-1, nh, c).transpose(0, 1)
    out = F.scaled_dot_product_attention(q[None], kh[None], vh[None])[0]  # (H, B*T, c)
    return attn.out_proj(out.transpose(0, 1).reshape(b, t, nh * c))


def _block_diagonal(vecs: torch.Tensor) -> torch.Tensor:
    """(B, T, H, c) per-head vectors -> (B*T*H, H*c): row (b, t, h) holds vecs[b, t, h] in head h's
    columns and zeros elsewhere, so one product with (H*c, N) head-major projections gives every
    (token, head) row without a per-head batched product (slow over c = 16 on a CPU) or a transpose."""
    b, t, nh, c = vecs.shape
    eye = torch.eye(nh, dtype=vecs.dtype, device=vecs.device)
    return (vecs.unsqueeze(3) * eye[:, :, None]).reshape(b * t * nh, nh * c)


def _head_scores(shared: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """Per-head products of shared (C, N) projections with (B, T, H, c) vectors -> (B, T*H, N)."""
    b, t, nh, _ = vecs.shape
    return (_block_diagonal(vecs) @ shared).view(b, t * nh, -1)


def _head_values(weights: torch.Tensor, values: torch.Tensor, t: int, nh: int) -> torch.Tensor:
    """(B, T*H, N) attention weights of (token, head) rows over shared (N, C) values -> (B, T, H, c):
    one product over all heads, then each row's own head."""
    b = weights.shape[0]
    full = (weights.reshape(b * t * nh, -1) @ values).view(b, t, nh, nh, -1)
    return full.diagonal(dim1=2, dim2=3).transpose(2, 3)


def _scores(state: Factored, pe_part: torch.Tensor, base_part: torch.Tensor, weight, vecs) -> torch.Tensor:
    """pe_part + scale * (base_part + sum_blocks coef . (basis W_h^T v_th)) for (B, T*H, N) parts and
    (B, T, H, c) vectors v, in place in the parts."""
    b, t, nh, c = vecs.shape
    for blk in state.blocks:
        proj = (blk.basis @ weight.t()).view(b, -1, nh, c)  # (B, k, H, c)
        m = torch.einsum("bkhc,bthc->bthk", proj, vecs).reshape(b, t * nh, -1)
        base_part.baddbmm_(m, blk.coef)
    return pe_part.addcmul_(state.scale, base_part)


def _t2i(attn: Attention, q_tok: torch.Tensor, state: Factored, stage: Stage) -> torch.Tensor:
    """Token->image attention on factored image tokens (keys + pe as keys, keys as values)."""
    b, t, _ = q_tok.shape
    nh, c = _split(attn)
    q = attn.q_proj(q_tok).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    # the key bias is the same for every image token: it cancels in the softmax
    bd = _block_diagonal(q)
    scores = _scores(
        state,
        (bd @ stage.pe_k).view(b, t * nh, -1),
        (bd @ stage.t2i_k).view(b, t * nh, -1),
        attn.k_proj.weight,
        q,
    )
    a = scores.softmax(dim=-1).mul_(state.scale)  # weights times the scale: both value parts need it
    # values: sum_i a_i s_i (W_v base_i + coef_i . W_v basis) + b_v (the weights sum to 1)
    out = _head_values(a, stage.t2i_v, t, nh)
    for blk in state.blocks:
        ac = torch.bmm(a, blk.coef.transpose(1, 2)).view(b, t, nh, -1)  # (B, T, H, k)
        fv = (blk.basis @ attn.v_proj.weight.t()).view(b, -1, nh, c)
        out = out + torch.einsum("bthk,bkhc->bthc", ac, fv)
    return attn.out_proj(out.reshape(b, t, nh * c) + attn.v_proj.bias)


def _update_vectors(attn: Attention, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T*H, D): what a unit of attention from image token to (token t, head h) adds to it,
    W_o^h v_th plus the output bias spread over the heads (each head's weights sum to 1); and the
    values v (B, T, H, c)."""
    b, t, _ = tok.shape
    nh, c = _split(attn)
    wo = attn.out_proj.weight.view(-1, nh, c)  # (D, H, c)
    v = attn.v_proj(tok).view(b, t, nh, c)
    u = torch.einsum("bthc,dhc->bthd", v, wo).reshape(b, t * nh, -1)
    return u + attn.out_proj.bias / nh, v


def _softmax_tokens(scores_fn, heads: int, out: torch.Tensor, scale=None) -> None:
    """Softmax over the tokens of the (B, T*H, N) logits that ``scores_fn()`` makes ((t, h) rows),
    divided by ``scale`` (B, 1, N) when given (coefficients are relative to it), written to ``out``.
    Written out: torch's softmax over a small non-last axis is several times slower on a CPU than
    these passes. The exponentials are taken without subtracting the maximum first (two passes over
    the logits fewer); where that overflows, or every token of a head underflows, the sums show it
    and the logits are made again and normalised the safe way."""
    scores = scores_fn()
    b, r, n = scores.shape
    x = scores.view(b, r // heads, heads, n)
    den = x.exp_().sum(dim=1, keepdim=True)
    if not (torch.isfinite(den).all() and (den > 0).all()):
        x = scores_fn().view(b, r // heads, heads, n)
        den = x.sub_(x.amax(dim=1, keepdim=True)).exp_().sum(dim=1, keepdim=True)
    if scale is not None:
        den.mul_(scale.view(b, 1, 1, n))
    torch.div(x, den, out=out.view(b, r // heads, heads, n))


def _new_block(attn: Attention, tokens: torch.Tensor, n: int) -> Block:
    """An empty block for one layer's image->token attention: tokens x heads coefficient rows to fill,
    then one zero row that the LayerNorm closing the layer sets to its beta (basis) and 1 / scale
    (coefficient)."""
    update, v = _update_vectors(attn, tokens)
    b, r, d = update.shape
    coef = torch.empty(b, r + 1, n, dtype=update.dtype, device=update.device)
    coef[:, -1] = 0
    basis = torch.cat([update, update.new_zeros(b, 1, d)], dim=1)
    cw = v.shape[-1] * v.shape[-2]
    query = update.new_zeros(b, r + 1, cw + 2)
    query[:, :r, :cw] = _block_diagonal(v).view(b, r, cw)
    query[:, :r, cw] = 1
    query[:, r, cw + 1] = 1
    return Block(coef, basis, query)


def _layer_norm(
    state: Factored, norm: torch.nn.LayerNorm, cross: list[torch.Tensor], sqnorm, next_base
) -> Factored:
    """LayerNorm of factored image tokens. With x_i = s_i (base_i + e_i . basis) and the base centred
    per token (base_c): x_i - mean = s_i (base_c_i + e_i . basis_c), whose squared norm over s_i^2 is
    |base_c|^2 + 2 e . (basis base_c) + e^T (basis_c basis_c^T) e (basis_c . base_c = basis . base_c,
    base_c summing to 0; ``cross`` holds each block's table for basis . base_c, `_cross_tables`). The
    result: scale s / sigma on next_base = base_c * gamma and basis_c * gamma with the coefficients
    unchanged, and beta in the last block's spare row with coefficient 1 / (s / sigma)."""
    b, n = state.scale.shape[0], state.scale.shape[-1]
    d = next_base.shape[-1]
    blocks = state.blocks
    centred_basis = [blk.basis - blk.basis.mean(dim=-1, keepdim=True) for blk in blocks]
    rest = torch.zeros(b, n, dtype=torch.float32, device=state.scale.device)
    for i, (blk, table) in enumerate(zip(blocks, cross, strict=True)):
        # 2 e . cross + e^T G e = sum over blocks i of e_i . (2 cross_i + G_ii e_i + 2 sum_{j > i} G_ij e_j)
        # (G symmetric: each pair of blocks once)
        z = (blk.query.view(-1, table.shape[0]) @ table).view(b, -1, n)
        for j in range(i, len(blocks)):
            gram = torch.bmm(centred_basis[i], centred_basis[j].transpose(1, 2))
            z.baddbmm_(gram, blocks[j].coef, beta=2.0 if j == i else 1.0, alpha=1.0 if j == i else 2.0)
        rest += z.mul_(blk.coef).sum(1)
    s = state.scale[:, 0].float()
    inv = torch.rsqrt((s.square() * (sqnorm + rest) / d).clamp(min=0) + norm.eps)
    scale = (s * inv).to(state.scale.dtype).unsqueeze(1)  # (B, 1, N)
    new_blocks = [
        Block(blk.coef, cb * norm.weight, blk.query) for blk, cb in zip(blocks, centred_basis, strict=True)
    ]
    last = new_blocks[-1]
    torch.reciprocal(scale[:, 0], out=last.coef[:, -1])
    last.basis[:, -1] = norm.bias.to(last.basis.dtype)
    return Factored(scale, new_blocks, next_base)


def _tokens_first_layer(layer: TwoWayAttentionBlock, tok_pe: torch.Tensor, shared: SharedImage):
    """First block: its image side is shared; returns the tokens and the image tokens' first block
    (the image->token weights as coefficients, the update vectors as basis)."""
    queries = layer.norm1(layer.self_attn(tok_pe, tok_pe, tok_pe))
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    queries = layer.norm2(queries + _t2i_shared(t2i, queries + tok_pe, shared.k0, shared.v0))
    queries = layer.norm3(queries + layer.mlp(queries))
    b, t, _ = queries.shape
    nh, c = _split(i2t)
    k = i2t.k_proj(queries + tok_pe).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    block = _new_block(i2t, queries, shared.q0.shape[-1])
    _softmax_tokens(lambda: _head_scores(shared.q0, k), nh, block.coef[:, :-1])
    return queries, block


def _i2t_block(attn: Attention, queries, tok_pe, state: Factored, stage: Stage):
    """Image->token attention of a later layer on factored image tokens (keys + pe as queries): its
    weights over the scale as a new block of coefficients, its update vectors as the block's basis."""
    b, t, _ = queries.shape
    nh, c = _split(attn)
    k = attn.k_proj(queries + tok_pe).view(b, t, nh, c) * (1.0 / math.sqrt(c))
    bd = _block_diagonal(k)

    def scores():
        pe_part = (bd @ stage.pe_q).view(b, t * nh, -1)  # the query bias is in pe_q
        return _scores(state, pe_part, (bd @ stage.i2t_q).view(b, t * nh, -1), attn.q_proj.weight, k)

    block = _new_block(attn, queries, state.scale.shape[-1])
    _softmax_tokens(scores, nh, block.coef[:, :-1], state.scale)
    return block


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
    queries, block = _tokens_first_layer(tr.layers[0], tok_pe, shared)
    ones = torch.ones(b, 1, shared.src.shape[0], dtype=sparse.dtype, device=sparse.device)
    depth = len(tr.layers)
    state = Factored(ones, [block], shared.src)
    sqnorm = shared.src_sqnorm
    for i in range(1, depth + 1):
        stage = shared.stages[i - 1]  # the image tokens entering layer i (i == depth: the final attention)
        cross = [shared.cross[(i - 1, blk)] for blk in range(i)]
        state = _layer_norm(state, tr.layers[i - 1].norm4, cross, sqnorm, stage.base)
        if i == depth:
            break
        layer = tr.layers[i]
        queries = _later_layer(layer, queries, tok_pe, state, stage)
        block = _i2t_block(layer.cross_attn_image_to_token, queries, tok_pe, state, stage)
        state = Factored(state.scale, [*state.blocks, block], state.base)
        sqnorm = stage.sqnorm
    final = shared.stages[-1]
    q = queries[:, :1]  # the IoU token: all the IoU head reads
    q = tr.norm_final_attn(q + _t2i(tr.final_attn_token_to_image, q + tok_pe[:, :1], state, final))
    iou = dec.iou_prediction_head(q[:, 0])
    n_out = 1 + dec.num_mask_tokens
    return GridDecode(iou, shared.hw, state, queries[:, 1:n_out], tok_pe[:, 1:n_out], final)


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
    tr = dec.transformer
    mlps = dec.output_hypernetworks_mlps
    prompts, back = rows.unique(return_inverse=True)
    image = state.image.select(prompts)
    q, q_pe = state.pending[prompts], state.pending_pe[prompts]
    q = tr.norm_final_attn(q + _t2i(tr.final_attn_token_to_image, q + q_pe, image, state.final))
    tokens = q[back, outputs]  # (K, D)
    hyper = torch.empty(len(rows), dec.transformer_dim // 8, dtype=tokens.dtype, device=tokens.device)
    for o in outputs.unique().tolist():
        sel = outputs == o
        hyper[sel] = mlps[o](tokens[sel])
    h, w = state.hw
    return dec._upscale_and_project(image.dense(back), h, w, hyper[:, None])[:, 0]
