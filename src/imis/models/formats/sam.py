"""Official Segment Anything layout (also MedSAM and SAM-Med2D-style ViT checkpoints).

Keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` name exactly the parameters of our
``ImageEncoderViT`` / ``PromptEncoder`` / ``MaskDecoder``, so conversion is the identity, minus the
``pixel_mean`` / ``pixel_std`` buffers that some re-saved checkpoints carry (normalisation is part of our
preprocessing, not of the network).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from imis.models.formats import unwrap as _unwrap

__all__ = ["PREFIXES", "to_foreign", "to_internal", "unwrap"]

PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_DROPPED = ("pixel_mean", "pixel_std")


def unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """Flat state dict from a checkpoint object ({"model": sd}, {"state_dict": sd}, DDP prefixes, ...)."""
    return _unwrap(obj)


def to_internal(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAM names -> our names. Keys outside the layout pass through, for ``load_strict`` to report."""
    return {k: v for k, v in state_dict.items() if k not in _DROPPED}


def to_foreign(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> an official SAM state dict (the three SAM submodules only)."""
    return {k: v for k, v in state_dict.items() if k.startswith(PREFIXES)}
