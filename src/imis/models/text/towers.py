"""The one text path of every model that takes text: a target name or free text -> the sentence
(:func:`imis.prompts.text.text_prompt`) -> the frozen tower's features -> the network's projection.
Training (:mod:`imis.train.network`) computes its frozen features with :func:`tower_features` too, so a
name is embedded the same way in training and at inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

from imis.prompts.text import text_prompt


@lru_cache(maxsize=1)
def _minilm():
    # loaded on the first text prompt only, once per process
    from imis.models.text.minilm import load_minilm

    return load_minilm()[0]


def tower_features(tower: str, net: torch.nn.Module, sentences: Sequence[str]) -> torch.Tensor:
    """(len(sentences), T) features of the frozen text tower, before the network's trained projection:
    ``minilm`` the all-MiniLM-L6-v2 sentence vectors, ``clip`` the network's own CLIP text encoder."""
    if tower == "minilm":
        return _minilm().embed_texts(list(sentences))
    if tower == "clip":
        from imis.models.text.tokenizer import CLIPTokenizer

        tokenizer = CLIPTokenizer()
        device = next(net.parameters()).device
        return torch.cat(
            [net.text_encoder(torch.tensor([tokenizer.encode(s)], device=device)) for s in sentences]
        )
    raise ValueError(f"unknown text tower {tower!r} (known: clip, minilm)")


def text_function(
    tower: str | None, net: torch.nn.Module, template: str
) -> Callable[[str], torch.Tensor] | None:
    """str -> (1, D) text prompt embedding through ``tower`` and the network's projection, or None when
    the model takes no text (no tower, no projection, or a CLIP tower the network lacks)."""
    if tower is None or getattr(net, "text_projection", None) is None:
        return None
    if tower == "clip" and getattr(net, "text_encoder", None) is None:
        return None

    def encode(text: str) -> torch.Tensor:
        feats = tower_features(tower, net, [text_prompt(text, template)])
        device = next(net.parameters()).device
        return net.project_text(feats.to(device))

    return encode
