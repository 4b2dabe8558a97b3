"""Padding a batch of token id lists into tensors, the same for both tokenizers (CLIP's BPE and BERT's
WordPiece): what differs between them is how one text becomes ids, not how a batch is padded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Padding = Literal["longest", "max_length"] | bool


def pad_batch(
    rows: Sequence[Sequence[int]], padding: Padding, max_length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, each (B, L) int64. padding: "longest" (or True) pads to the longest
    row, "max_length" to ``max_length``; False requires all rows to have the same length."""
    if not rows:
        raise ValueError("no texts to tokenise")
    if padding == "max_length":
        length = max_length
    elif padding in (True, "longest"):
        length = max(len(r) for r in rows)
    elif padding is False:
        length = len(rows[0])
        if any(len(r) != length for r in rows):
            raise ValueError("texts tokenise to different lengths; pass padding='longest'")
    else:
        raise ValueError(f"padding must be 'longest', 'max_length' or a bool, not {padding!r}")
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
