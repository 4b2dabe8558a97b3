"""Released IMIS-Net layout (IMIS-Bench ``IMISNet-B.pth`` and its training checkpoints).

Released name                                   -> ours
``image_encoder.sam_encoder.X`` (timm samvit)     -> ``image_encoder.X``, ``blocks.{i}.mlp.fc1/fc2`` -> ``lin1/lin2``
``image_encoder.sam_encoder.neck.*`` (timm neck)  -> dropped: built and saved by timm, never used in forward
``image_encoder.neck.*`` (IMIS neck, used)        -> ``image_encoder.neck.*``
``text_model.text_model.X`` or ``text_model.X``   -> ``text_encoder.X`` (HF CLIPTextModel internals)
``text_model.*embeddings.position_ids``           -> dropped (a buffer old ``transformers`` versions saved)
``text_out_dim.*``                                -> ``text_projection.*``
``prompt_encoder.*``, ``mask_decoder.*``          -> unchanged

Training checkpoints (``{"model_state_dict": sd, "optimizer_state_dict": ...}``) and DDP prefixes are
unwrapped first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from imis.errors import CheckpointError
from imis.models.formats import describe_keys, unwrap

__all__ = ["TIMM_NECK_CHANNELS", "to_foreign", "to_internal", "unwrap"]

TRUNK = "image_encoder.sam_encoder."
TIMM_NECK = TRUNK + "neck."
IMIS_NECK = "image_encoder.neck."
# timm's samvit builds its own 256-channel neck (the SAM one); IMIS-Net keeps it in the state dict.
TIMM_NECK_CHANNELS = 256

_TIMM_MLP = re.compile(r"^(blocks\.\d+\.mlp\.)fc([12])\.")
_OUR_MLP = re.compile(r"^(blocks\.\d+\.mlp\.)lin([12])\.")
_SAM_TRUNK = ("image_encoder.blocks.", "image_encoder.patch_embed.", "image_encoder.pos_embed")


def to_internal(obj: Any) -> dict[str, torch.Tensor]:
    """Released IMIS-Net names (any wrapper) -> our names.

    Raises CheckpointError naming the keys that the IMIS-Net layout does not have (e.g. an official
    SAM checkpoint, whose trunk is not under ``image_encoder.sam_encoder``).
    """
    sd = unwrap(obj)
    out: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in sd.items():
        if key.startswith(TIMM_NECK):
            continue
        if key.startswith(TRUNK):
            out["image_encoder." + _TIMM_MLP.sub(r"\1lin\2.", key[len(TRUNK) :])] = value
        elif key.startswith(("text_model.", "text_out_dim.")):
            if key.startswith("text_out_dim."):
                out["text_projection." + key[len("text_out_dim.") :]] = value
                continue
            rest = key[len("text_model.") :]
            rest = rest.removeprefix("text_model.")  # HF CLIPTextModel wraps its transformer as .text_model
            if rest.endswith("embeddings.position_ids"):
                continue
            out["text_encoder." + rest] = value
        elif key.startswith((IMIS_NECK, "prompt_encoder.", "mask_decoder.")):
            out[key] = value
        elif key in ("pixel_mean", "pixel_std"):
            continue
        else:
            foreign.append(key)
    if foreign:
        hint = ""
        if any(k.startswith(_SAM_TRUNK) for k in foreign):
            hint = " (its image encoder is in the official SAM layout: load it as a SAM-layout model)"
        raise CheckpointError(
            f"checkpoint does not match the expected layout imis-net (released IMIS-Net: "
            f"image_encoder.sam_encoder.*, text_model.*, text_out_dim.*): "
            f"{describe_keys(foreign, 'unexpected key')}{hint}"
        )
    return out


def to_foreign(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> the released IMIS-Net names and shapes (a checkpoint IMIS-Bench loads strictly).

    The unused timm neck is written as zeros of its shapes (256 channels, from the trunk width): IMIS-Bench
    loads its checkpoint with ``strict=True``, so the keys must exist, and their values never reach the
    output (its forward skips that neck).
    """
    out: dict[str, torch.Tensor] = {}
    timm_neck_done = False
    for key, value in state_dict.items():
        if key.startswith("image_encoder."):
            rest = key[len("image_encoder.") :]
            if rest.startswith("neck."):
                if not timm_neck_done:
                    out.update(_timm_neck(state_dict))
                    timm_neck_done = True
                out[key] = value
            else:
                out[TRUNK + _OUR_MLP.sub(r"\1fc\2.", rest)] = value
        elif key.startswith("text_encoder."):
            out["text_model." + key[len("text_encoder.") :]] = value
        elif key.startswith("text_projection."):
            out["text_out_dim." + key[len("text_projection.") :]] = value
        else:
            out[key] = value
    if not timm_neck_done and "image_encoder.patch_embed.proj.weight" in state_dict:
        out.update(_timm_neck(state_dict))
    return out


def _timm_neck(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ref = state_dict["image_encoder.patch_embed.proj.weight"]
    embed_dim, c = ref.shape[0], TIMM_NECK_CHANNELS

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=ref.dtype, device=ref.device)

    return {
        TIMM_NECK + "0.weight": zeros(c, embed_dim, 1, 1),
        TIMM_NECK + "1.weight": zeros(c),
        TIMM_NECK + "1.bias": zeros(c),
        TIMM_NECK + "2.weight": zeros(c, c, 3, 3),
        TIMM_NECK + "3.weight": zeros(c),
        TIMM_NECK + "3.bias": zeros(c),
    }
