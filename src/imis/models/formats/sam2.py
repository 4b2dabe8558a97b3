"""SAM 2 / SAM 2.1 released checkpoint layout (``sam2[.1]_hiera_{tiny,small,base_plus,large}.pt``).

The file is ``{"model": state_dict}`` of the whole video model. For single images we keep the image path
and drop, by name, the video memory (memory attention and encoder, object pointers, memory position
codes): a file without those parts loads too. Renaming:

- ``sam_prompt_encoder.*`` / ``sam_mask_decoder.*`` -> ``prompt_encoder.*`` / ``mask_decoder.*``;
- ``image_encoder.neck.convs.{n - k}.conv.*`` -> ``image_encoder.neck.lateral.{k}.*``: SAM 2 lists the
  lateral convolutions coarsest level first, we index them by level (0 = stride 4);
- ``mask_decoder.transformer.layers.{i}.mlp.layers.{0,1}`` -> ``...mlp.lin{1,2}`` (SAM 2 builds the
  two-way transformer's MLP with its generic MLP class; SAM's names, which our transformer uses, differ);
- everything else (``image_encoder.trunk.*``, ``no_mem_embed``) keeps its name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from imis.models.formats import unwrap as _unwrap

__all__ = ["VIDEO_ONLY", "to_foreign", "to_internal", "unwrap"]

# Top-level parts of the released model used only when tracking through video frames.
VIDEO_ONLY = (
    "memory_attention.",
    "memory_encoder.",
    "mask_downsample.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)
_RENAMED = (("sam_prompt_encoder.", "prompt_encoder."), ("sam_mask_decoder.", "mask_decoder."))
_NECK_FOREIGN = re.compile(r"^image_encoder\.neck\.convs\.(\d+)\.conv\.(.+)$")
_NECK_INTERNAL = re.compile(r"^image_encoder\.neck\.lateral\.(\d+)\.(.+)$")
_MLP_FOREIGN = re.compile(r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.layers\.([01])\.(.+)$")
_MLP_INTERNAL = re.compile(r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.lin([12])\.(.+)$")
NECK_LEVELS = 4  # the Hiera trunk has four stages, each with a lateral convolution


def unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """Flat state dict from the released ``{"model": sd}`` (or a flat / otherwise wrapped one)."""
    return _unwrap(obj)


def _is_video_only(key: str) -> bool:
    return any(key.startswith(p) if p.endswith(".") else key == p for p in VIDEO_ONLY)


def to_internal(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAM 2 names -> ours, without the video-only parts. Keys outside the layout pass through unchanged,
    for ``load_strict`` to report."""
    out = {}
    for key, value in state_dict.items():
        if _is_video_only(key):
            continue
        for old, new in _RENAMED:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        m = _NECK_FOREIGN.match(key)
        if m:
            key = f"image_encoder.neck.lateral.{NECK_LEVELS - 1 - int(m[1])}.{m[2]}"
        m = _MLP_FOREIGN.match(key)
        if m:
            key = f"{m[1]}.lin{int(m[2]) + 1}.{m[3]}"
        out[key] = value
    return out


def to_foreign(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> SAM 2's (the image path only; a released file also holds the video parts)."""
    out = {}
    for key, value in state_dict.items():
        m = _NECK_INTERNAL.match(key)
        if m:
            key = f"image_encoder.neck.convs.{NECK_LEVELS - 1 - int(m[1])}.conv.{m[2]}"
        m = _MLP_INTERNAL.match(key)
        if m:
            key = f"{m[1]}.layers.{int(m[2]) - 1}.{m[3]}"
        for old, new in _RENAMED:
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        out[key] = value
    return out
