"""Hugging Face BERT layout (``BertModel`` as saved for all-MiniLM-L6-v2) <-> our ``MiniLMEncoder`` names.

HF name                                                   -> ours
``embeddings.word_embeddings.weight``                       -> ``embeddings.word.weight``
``embeddings.position_embeddings.weight``                   -> ``embeddings.position.weight``
``embeddings.token_type_embeddings.weight``                 -> ``embeddings.token_type.weight``
``embeddings.LayerNorm.{weight,bias}``                      -> ``embeddings.norm.*``
``encoder.layer.{i}.attention.self.{query,key,value}.*``    -> ``layers.{i}.attn.{q,k,v}_proj.*``
``encoder.layer.{i}.attention.output.dense.*``              -> ``layers.{i}.attn.out_proj.*``
``encoder.layer.{i}.attention.output.LayerNorm.*``          -> ``layers.{i}.attn_norm.*``
``encoder.layer.{i}.intermediate.dense.*``                  -> ``layers.{i}.mlp.fc1.*``
``encoder.layer.{i}.output.dense.*``                        -> ``layers.{i}.mlp.fc2.*``
``encoder.layer.{i}.output.LayerNorm.*``                    -> ``layers.{i}.mlp_norm.*``
``embeddings.position_ids``, ``embeddings.token_type_ids``  -> dropped (index buffers, not weights)
``pooler.dense.*``                                          -> dropped (BERT's [CLS] pooler; sentence
                                                               embeddings mean-pool the hidden states)

A ``bert.`` prefix on every key (``BertFor*`` heads saved whole) is removed first, and the legacy
LayerNorm names ``gamma``/``beta`` are read as ``weight``/``bias``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from imis.errors import CheckpointError
from imis.models.formats import describe_keys, strip_prefix, unwrap

__all__ = ["LAYOUT_NAME", "to_foreign", "to_internal"]

LAYOUT_NAME = "minilm (Hugging Face BertModel: embeddings.*, encoder.layer.N.*)"

_EMBEDDINGS = {
    "word_embeddings": "word",
    "position_embeddings": "position",
    "token_type_embeddings": "token_type",
    "LayerNorm": "norm",
}
_LAYER = {
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.out_proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "mlp_norm",
}
_DROPPED = ("embeddings.position_ids", "embeddings.token_type_ids")
_LEGACY_PARAM = {"gamma": "weight", "beta": "bias"}

_HF_EMBEDDING = re.compile(r"^embeddings\.(\w+)\.(weight|bias|gamma|beta)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.([\w.]+)\.(weight|bias|gamma|beta)$")
_OUR_EMBEDDING = re.compile(r"^embeddings\.(\w+)\.(weight|bias)$")
_OUR_LAYER = re.compile(r"^layers\.(\d+)\.([\w.]+)\.(weight|bias)$")


def _internal_name(key: str) -> str | None:
    """Our name for one HF key, or None when the key is not part of the HF BERT encoder layout."""
    m = _HF_EMBEDDING.match(key)
    if m and m.group(1) in _EMBEDDINGS:
        return f"embeddings.{_EMBEDDINGS[m.group(1)]}.{_LEGACY_PARAM.get(m.group(2), m.group(2))}"
    m = _HF_LAYER.match(key)
    if m and m.group(2) in _LAYER:
        return f"layers.{m.group(1)}.{_LAYER[m.group(2)]}.{_LEGACY_PARAM.get(m.group(3), m.group(3))}"
    return None


def to_internal(obj: Any) -> dict[str, torch.Tensor]:
    """HF ``BertModel`` state dict (any wrapper, optional ``bert.`` prefix) -> our ``MiniLMEncoder`` names.

    Raises CheckpointError naming the keys that the layout does not have.
    """
    sd = strip_prefix(unwrap(obj), "bert.")
    out: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in sd.items():
        if key in _DROPPED or key.startswith("pooler."):
            continue
        name = _internal_name(key)
        if name is None:
            foreign.append(key)
        else:
            out[name] = value
    if foreign:
        raise CheckpointError(
            f"checkpoint does not match the expected layout {LAYOUT_NAME}: "
            f"{describe_keys(foreign, 'unexpected key')}"
        )
    return out


def to_foreign(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``MiniLMEncoder`` names -> HF ``BertModel`` names (without the unused ``pooler.*``).

    Raises CheckpointError for keys that are not ``MiniLMEncoder`` parameters.
    """
    embeddings = {v: k for k, v in _EMBEDDINGS.items()}
    layers = {v: k for k, v in _LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in state_dict.items():
        m = _OUR_EMBEDDING.match(key)
        if m and m.group(1) in embeddings:
            out[f"embeddings.{embeddings[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = _OUR_LAYER.match(key)
        if m and m.group(2) in layers:
            out[f"encoder.layer.{m.group(1)}.{layers[m.group(2)]}.{m.group(3)}"] = value
            continue
        foreign.append(key)
    if foreign:
        raise CheckpointError(f"not MiniLMEncoder parameters: {describe_keys(foreign, 'unexpected key')}")
    return out
