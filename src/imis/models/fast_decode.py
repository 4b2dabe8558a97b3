"""The interactive decode path: one prompt against a cached embedding, the decoder split into an image
side and a prompt side.

A SAM-style `MaskDecoder` attends between a handful of prompt tokens (T: IoU, mask and prompt tokens,
7 for a click) and N = h x w image tokens of width D. Run as written, every attention projects all N
image tokens to the attention width for every prompt. Here, for one prompt:

* the first layer's image side (the embedding plus the dense prompt, its token->image keys and values,
  its image->token queries) does not depend on the sparse prompt (the first layer's self-attention
  ignores token positions): :func:`image_side` computes it, and :class:`ImageSideCache` keeps it for
  the few embeddings clicked last, since a user clicks many times on one slice;
* every later attention is re-associated so that the N image tokens meet only T x heads vectors:
  score(t, i) = q_t . (W_k x_i + b_k) = (W_k^T q_t) . x_i + const(t) (the constant cancels in the
  softmax over i), and sum_i a_ti (W_v x_i + b_v) = W_v (sum_i a_ti x_i) + b_v; the image->token
  update sum_{t,h} a_ith W_o^h v_th is one (N, T*H) x (T*H, D) product;
* the 4x upscaling, the costliest part, runs for the one output returned.

The same sums in another order: outputs equal `MaskDecoder`'s up to float rounding (the tests compare
both on every registry model that takes this path). A mask prompt (a correction feeding the previous
logits back) changes the dense prompt, so its image side is built for that prompt and not cached.
Text prompts, and models other than a `PromptableSegmenter` with the plain `MaskDecoder`, take
`PromptableSegmenter.decode`. (`imis.models.grid_decode` is the batched counterpart for the automask
click grid, with a costlier per-image part amortised over a thousand clicks.)
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imis.models.mask_decoder import MaskDecoder
from imis.models.segmenter import PromptableSegmenter
from imis.models.transformer import Attention, TwoWayAttentionBlock

__all__ = ["ImageSide", "ImageSideCache", "decode_one", "image_side", "supports_fast_decode"]


def supports_fast_decode(net: torch.nn.Module) -> bool:
    """Whether ``net`` is a SAM-layout segmenter whose first decoder layer ignores the token positions
    in its self-attention (the condition for its image side to be prompt-independent)."""
    if not isinstance(net, PromptableSegmenter) or type(net.mask_decoder) is not MaskDecoder:
        return False
    layers = net.mask_decoder.transformer.layers
    return len(layers) > 0 and bool(layers[0].skip_first_layer_pe)


@dataclass
class ImageSide:
    """The prompt-independent part of the decoder for one embedding and dense prompt.

    src: image tokens (N, D) = embedding + dense prompt; pe: their positional code (N, D); k0, v0:
    the first layer's token->image keys (of src + pe) and values (of src), (N, C); q0: its
    image->token queries (of src + pe), (N, C); hw: the token grid (h, w).
    """

    src: torch.Tensor
    pe: torch.Tensor
    k0: torch.Tensor
    v0: torch.Tensor
    q0: torch.Tensor
    hw: tuple[int, int]


def image_side(
    net: PromptableSegmenter, features: torch.Tensor, dense: torch.Tensor | None = None
) -> ImageSide:
    """The image side for embedding ``features`` (1, D, h, w) and a dense prompt (1, D, h, w); None:
    the no-mask embedding (clicks and boxes)."""
    pe_enc = net.prompt_encoder
    if dense is None:
        dense = pe_enc.no_mask_embed.weight.reshape(1, -1, 1, 1)
    _, _, h, w = features.shape
    src = (features + dense.to(features.dtype))[0].flatten(1).t().contiguous()
    pe = pe_enc.get_dense_pe().to(features.dtype)[0].flatten(1).t().contiguous()
    first: TwoWayAttentionBlock = net.mask_decoder.transformer.layers[0]
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    src_pe = src + pe
    # the two projections of src + pe in one matmul
    k0, q0 = F.linear(
        src_pe,
        torch.cat([t2i.k_proj.weight, i2t.q_proj.weight]),
        torch.cat([t2i.k_proj.bias, i2t.q_proj.bias]),
    ).split([t2i.internal_dim, i2t.internal_dim], dim=-1)
    return ImageSide(src, pe, k0, t2i.v_proj(src), q0, (h, w))


class ImageSideCache:
    """Thread-safe LRU of no-mask :class:`ImageSide` keyed by the identity of an embedding's features.

    A weak reference checks that the key still names the same tensor (an id can be reused once the
    tensor is freed). ``size`` entries of about 3x the embedding's memory each: a few, for the slice
    a user is clicking on and its neighbours, not the whole embedding cache of a volume session.
    """

    def __init__(self, size: int = 4) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._entries: OrderedDict[int, tuple[weakref.ref, ImageSide]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, net: PromptableSegmenter, features: torch.Tensor) -> ImageSide:
        key = id(features)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is features:
                self._entries.move_to_end(key)
                return hit[1]
        side = image_side(net, features)  # outside the lock: other users' clicks go on meanwhile
        with self._lock:
            self._entries[key] = (weakref.ref(features), side)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return side

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _heads(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _t2i_first(attn: Attention, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Token->image attention on precomputed keys/values (N, C): q_tok (T, D) -> (T, D)."""
    nh, c = _heads(attn)
    q = attn.q_proj(q_tok).view(-1, nh, c).transpose(0, 1)  # (H, T, c)
    kh, vh = (x.view(-1, nh, c).transpose(0, 1) for x in (k, v))  # (H, N, c)
    out = F.scaled_dot_product_attention(q[None], kh[None], vh[None])[0]  # (H, T, c)
    return attn.out_proj(out.transpose(0, 1).reshape(-1, nh * c))


def _t2i(attn: Attention, q_tok: torch.Tensor, x: torch.Tensor, x_pe: torch.Tensor) -> torch.Tensor:
    """Token->image attention re-associated: q_tok (T, D), image tokens x (N, D) and x + pe -> (T, D)."""
    nh, c = _heads(attn)
    d = x.shape[-1]
    t = q_tok.shape[0]
    q = attn.q_proj(q_tok).view(t, nh, c) * (1.0 / math.sqrt(c))
    qk = torch.einsum("thc,hcd->thd", q, attn.k_proj.weight.view(nh, c, d)).reshape(t * nh, d)
    a = (qk @ x_pe.t()).softmax(dim=-1)  # (T*H, N); the key bias is constant over N
    agg = (a @ x).view(t, nh, d)
    out = torch.einsum("thd,hcd->thc", agg, attn.v_proj.weight.view(nh, c, d)).reshape(t, nh * c)
    return attn.out_proj(out + attn.v_proj.bias)


def _softmax_over_tokens(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 1 of (N, T, H) logits, in place. Written out: torch's softmax over a last
    axis of ~7 is several times slower on a CPU than these passes."""
    scores.sub_(scores.amax(dim=1, keepdim=True)).exp_()
    return scores.div_(scores.sum(dim=1, keepdim=True))


def _i2t_update(attn: Attention, x: torch.Tensor, scores: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """x + the image->token attention output, from its logits (N, T, H) and the tokens (T, D).

    The output projection goes onto the few token values first: sum_{t,h} a_ith (W_o^h v_th); its
    bias is spread over the H heads (each head's weights sum to 1 over the tokens), so one matmul
    adds the whole update onto ``x``.
    """
    n, t, nh = scores.shape
    c = attn.internal_dim // nh
    v = attn.v_proj(tok).view(t, nh, c)
    u = torch.einsum("thc,dhc->thd", v, attn.out_proj.weight.view(-1, nh, c)).reshape(t * nh, -1)
    return torch.addmm(x, _softmax_over_tokens(scores).view(n, t * nh), u + attn.out_proj.bias / nh)


def _i2t_first(attn: Attention, side: ImageSide, tok_pe: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """src + the first layer's image->token update, on the precomputed queries q0."""
    nh, c = _heads(attn)
    t = tok.shape[0]
    k = attn.k_proj(tok_pe).view(t, nh, c) * (1.0 / math.sqrt(c))
    scores = torch.einsum("nhc,thc->nth", side.q0.view(-1, nh, c), k)  # (N, T, H)
    return _i2t_update(attn, side.src, scores.contiguous(), tok)


def _i2t(attn: Attention, x: torch.Tensor, x_pe: torch.Tensor, tok_pe: torch.Tensor, tok: torch.Tensor):
    """x + the image->token update re-associated: (W_q (x_i + p_i) + b_q) . k_t = (x_i + p_i) . (W_q^T k_t)
    + b_q . k_t."""
    nh, c = _heads(attn)
    t, d = tok.shape[0], x.shape[-1]
    k = attn.k_proj(tok_pe).view(t, nh, c) * (1.0 / math.sqrt(c))
    kq = torch.einsum("thc,hcd->thd", k, attn.q_proj.weight.view(nh, c, d)).reshape(t * nh, d)
    const = torch.einsum("thc,hc->th", k, attn.q_proj.bias.view(nh, c)).reshape(1, t * nh)
    scores = torch.addmm(const, x_pe, kq.t())  # (N, T*H)
    return _i2t_update(attn, x, scores.view(-1, t, nh), tok)


def _layer(
    layer: TwoWayAttentionBlock, queries: torch.Tensor, x: torch.Tensor | None, tok_pe, side: ImageSide
) -> tuple[torch.Tensor, torch.Tensor]:
    """One two-way block on (T, D) tokens; ``x`` None: the first layer, on the image side."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(queries[None], queries[None], queries[None])[0]
    else:
        q = (queries + tok_pe)[None]
        queries = queries + layer.self_attn(q, q, queries[None])[0]
    queries = layer.norm1(queries)
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    if x is None:
        queries = layer.norm2(queries + _t2i_first(t2i, queries + tok_pe, side.k0, side.v0))
        queries = layer.norm3(queries + layer.mlp(queries))
        return queries, layer.norm4(_i2t_first(i2t, side, queries + tok_pe, queries))
    x_pe = x + side.pe
    queries = layer.norm2(queries + _t2i(t2i, queries + tok_pe, x, x_pe))
    queries = layer.norm3(queries + layer.mlp(queries))
    return queries, layer.norm4(_i2t(i2t, x, x_pe, queries + tok_pe, queries))


def decode_one(
    net: PromptableSegmenter, side: ImageSide, sparse: torch.Tensor, multimask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one prompt (sparse tokens (1, P, D)) -> (low-res logits (1, 1, 4h, 4w), IoU (1, 1)).

    ``multimask``: the best of the multimask outputs by predicted IoU (SAM's rule for a lone click),
    else the single-mask output; the same choice as `MaskDecoder` followed by an argmax.
    """
    dec: MaskDecoder = net.mask_decoder
    tr = dec.transformer
    out_tokens = [dec.iou_token.weight, dec.mask_tokens.weight]
    if dec.semantic_tokens is not None:
        out_tokens.append(dec.semantic_tokens.weight)
    tok_pe = torch.cat([*out_tokens, sparse[0]]).to(sparse.dtype)  # (T, D)
    queries, x = tok_pe, None
    for layer in tr.layers:
        queries, x = _layer(layer, queries, x, tok_pe, side)
    n_out = 1 + dec.num_mask_tokens  # the IoU token and the mask tokens feed the heads
    q = queries[:n_out]
    attn = _t2i(tr.final_attn_token_to_image, q + tok_pe[:n_out], x, x + side.pe)
    q = tr.norm_final_attn(q + attn)
    iou = dec.iou_prediction_head(q[0])  # (1 + multimask outputs,)
    out = 1 + int(torch.argmax(iou[1:])) if multimask else 0
    hyper = dec.output_hypernetworks_mlps[out](q[1 + out])  # (D/8,)
    h, w = side.hw
    low_res = dec._upscale_and_project(x[None], h, w, hyper[None, None])
    return low_res, iou[out].reshape(1, 1)
