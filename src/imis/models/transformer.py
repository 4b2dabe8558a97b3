"""Two-way transformer of the SAM mask decoder: prompt tokens and image tokens attend to each other.

Parameter names follow the official Segment Anything ``TwoWayTransformer`` (``layers.{i}.self_attn``,
``norm1..4``, ``cross_attn_token_to_image``, ``mlp.lin1/lin2``, ``cross_attn_image_to_token``,
``final_attn_token_to_image``, ``norm_final_attn``; attention ``q_proj/k_proj/v_proj/out_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imis.models.common import MLPBlock

__all__ = ["Attention", "TwoWayAttentionBlock", "TwoWayTransformer"]


class Attention(nn.Module):
    """Multi-head attention whose q/k/v live in a (optionally) narrower space.

    ``downsample_rate`` r projects D -> D / r before splitting heads, which is how SAM keeps the
    token<->image cross-attention cheap. q: (B, Nq, D), k and v: (B, Nk, D) -> (B, Nq, D).
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"internal dim {self.internal_dim} is not divisible by num_heads {num_heads}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C / heads), a view."""
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on already projected q (B, Nq, C'), k, v (B, Nk, C') -> (B, Nq, D)."""
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C / heads), as SAM
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """One layer: token self-attention, token->image cross-attention, token MLP, image->token
    cross-attention; post-norm after each. Positional encodings are re-added to q/k at every
    attention (not to v), except that the first layer's self-attention sees the raw tokens and
    replaces them instead of adding a residual (SAM's ``skip_first_layer_pe``).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, Nq, D) tokens, keys (B, Nk, D) image tokens, with their positional codes."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        # The token->image keys and the image->token queries are both projections of keys + key_pe,
        # and keys do not change in between: one sum and one fused matmul over the 4096 image tokens.
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        keys_pe = keys + key_pe
        weight = torch.cat([t2i.k_proj.weight, i2t.q_proj.weight])
        bias = torch.cat([t2i.k_proj.bias, i2t.q_proj.bias])
        k_t2i, q_i2t = F.linear(keys_pe, weight, bias).split([t2i.internal_dim, i2t.internal_dim], dim=-1)

        q = queries + query_pe
        queries = self.norm2(queries + t2i.attend(t2i.q_proj(q), k_t2i, t2i.v_proj(keys)))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + i2t.attend(q_i2t, i2t.k_proj(q), i2t.v_proj(queries)))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token->image attention.

    forward(image_embedding (B, D, h, w), image_pe (B, D, h, w), point_embedding (B, N, D))
    -> (tokens (B, N, D), image tokens (B, h*w, D)).
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Token-major copies once: every later add, LayerNorm and projection on a transposed view
        # would run a strided kernel or copy again (those made up most of the decoder's CPU time).
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # (B, h*w, D)
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
