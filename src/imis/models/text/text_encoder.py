"""CLIP text transformer (the text tower of CLIP ViT-B/32, as IMIS-Net embeds it), built from its config.

Parameter names are those of the HF ``CLIPTextModel``'s inner ``text_model`` without that prefix
(``embeddings.token_embedding.weight``, ``encoder.layers.{i}.self_attn.q_proj.weight``, ...,
``final_layer_norm.weight``), so IMIS-Net's ``text_model.*`` entries load after stripping the prefix.

Computation: token + learned absolute position embeddings; ``num_layers`` pre-norm blocks of causal
multi-head self-attention (scaled dot product, optional key-padding mask) and a quick-GELU MLP
(``x * sigmoid(1.702 x)``); a final LayerNorm. The pooled output is the final hidden state at the first
``eos_token_id`` of each row (HF's rule for non-legacy EOS ids; with the legacy id 2 it is the argmax id).
"""

from __future__ import annotations

import torch
from torch import nn

from imis.models.common import FeedForward, SelfAttention

__all__ = ["CLIPTextEncoder"]


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_positions, hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[-1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class CLIPEncoderLayer(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(hidden_size, num_heads, causal=True)
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = FeedForward(hidden_size, intermediate_size, _QuickGELU())
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, num_layers: int, hidden_size: int, intermediate_size: int, num_heads: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(hidden_size, intermediate_size, num_heads, eps) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextEncoder(nn.Module):
    """CLIP text transformer.

    Shapes: ``input_ids`` (B, L) int64 with L <= ``max_positions``, optional ``attention_mask`` (B, L)
    (1 = token, 0 = padding) -> ``forward``: pooled (B, hidden_size); ``hidden_states``: (B, L, hidden_size)
    after the final LayerNorm.

    Defaults are CLIP ViT-B/32's text tower (HF ``CLIPTextConfig()``), as used by IMIS-Net.
    """

    def __init__(
        self,
        vocab_size: int = 49408,
        hidden_size: int = 512,
        intermediate_size: int = 2048,
        num_layers: int = 12,
        num_heads: int = 8,
        max_positions: int = 77,
        eos_token_id: int = 49407,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.max_positions = max_positions
        self.eos_token_id = eos_token_id
        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden_size, max_positions)
        self.encoder = CLIPEncoder(num_layers, hidden_size, intermediate_size, num_heads, layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    @classmethod
    def from_config(cls, config: dict) -> CLIPTextEncoder:
        """Build from an HF-style ``CLIPTextConfig`` dict (missing entries take CLIPTextConfig defaults)."""
        return cls(
            vocab_size=config.get("vocab_size", 49408),
            hidden_size=config.get("hidden_size", 512),
            intermediate_size=config.get("intermediate_size", 2048),
            num_layers=config.get("num_hidden_layers", config.get("num_layers", 12)),
            num_heads=config.get("num_attention_heads", config.get("num_heads", 8)),
            max_positions=config.get("max_position_embeddings", config.get("max_positions", 77)),
            eos_token_id=config.get("eos_token_id", 49407),
            layer_norm_eps=config.get("layer_norm_eps", 1e-5),
        )

    def _mask(
        self, attention_mask: torch.Tensor | None, length: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """None when only the causal mask applies, else an additive (B, 1, L, L) causal + padding mask."""
        if attention_mask is None or bool(attention_mask.all()):
            return None
        device = attention_mask.device
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
        # Large finite negative, not -inf: a row with every key masked (a left-padded first position)
        # stays finite, as in HF.
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) ids -> (B, L, hidden_size) final-layer-normed hidden states."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens; the maximum is {self.max_positions}"
            )
        x = self.embeddings(input_ids)
        mask = self._mask(attention_mask, input_ids.shape[1], x.dtype)
        x = self.encoder(x, mask)
        return self.final_layer_norm(x)

    def pool_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) position read by the pooled output: the first EOS of each row (0 when a row has none)."""
        if self.eos_token_id == 2:  # legacy CLIP configs: the EOS has the largest id
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids == self.eos_token_id).to(torch.int).argmax(dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids [, (B, L) mask] -> (B, hidden_size) pooled text embedding (CLIP ``pooler_output``)."""
        hidden = self.hidden_states(input_ids, attention_mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, self.pool_index(input_ids).to(hidden.device)]
