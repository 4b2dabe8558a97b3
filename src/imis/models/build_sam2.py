"""Builders of SAM 2 image models (randomly initialised; weights come from ``formats.sam2``).

The four released sizes differ only in the Hiera trunk (SAM 2 / 2.1 configs ``sam2[.1]_hiera_{t,s,b+,l}``);
neck, prompt encoder and decoder are shared: 256-d, stride-16 embedding of a 1024 px input, a two-layer
two-way transformer (8 heads, MLP 2048) and IoU head of width 256. Every size is a parameter so that the
small parity configuration builds with the same code.
"""

from __future__ import annotations

from typing import Any

from imis.models.hiera import Hiera
from imis.models.prompt_encoder import PromptEncoder
from imis.models.sam2_decoder import Sam2MaskDecoder
from imis.models.sam2_neck import FpnNeck, Sam2ImageEncoder
from imis.models.sam2_segmenter import Sam2Segmenter
from imis.models.transformer import TwoWayTransformer

__all__ = ["SAM2_SIZES", "build_sam2"]

# The trunk of each released size, as its official config sets it (others take Hiera's defaults).
SAM2_SIZES: dict[str, dict[str, Any]] = {
    "t": {
        "embed_dim": 96,
        "num_heads": 1,
        "stages": (1, 2, 7, 2),
        "global_att_blocks": (5, 7, 9),
        "window_pos_embed_bkg_spatial_size": (7, 7),
    },
    "s": {
        "embed_dim": 96,
        "num_heads": 1,
        "stages": (1, 2, 11, 2),
        "global_att_blocks": (7, 10, 13),
        "window_pos_embed_bkg_spatial_size": (7, 7),
    },
    "b+": {"embed_dim": 112, "num_heads": 2},
    "l": {
        "embed_dim": 144,
        "num_heads": 2,
        "stages": (2, 6, 36, 4),
        "global_att_blocks": (23, 33, 43),
        "window_spec": (8, 4, 16, 8),
        "window_pos_embed_bkg_spatial_size": (7, 7),
    },
}


def build_sam2(
    size: str | None = "b+",
    image_size: int = 1024,
    trunk: dict[str, Any] | None = None,
    d_model: int = 256,
    top_down_levels: tuple[int, ...] = (2, 3),
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
) -> Sam2Segmenter:
    """SAM 2 for images. size: "t", "s", "b+" or "l" (the released trunks); or None with ``trunk``,
    the keyword arguments of :class:`Hiera` (a custom, e.g. small, trunk)."""
    if size is not None:
        if size not in SAM2_SIZES:
            raise ValueError(f"unknown SAM 2 size {size!r} (known: {', '.join(SAM2_SIZES)})")
        trunk = {**SAM2_SIZES[size], **(trunk or {})}
    hiera = Hiera(**(trunk or {}))
    neck = FpnNeck(d_model, hiera.channels, top_down_levels=top_down_levels)
    grid = image_size // 16
    prompt_encoder = PromptEncoder(
        embed_dim=d_model,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=mask_in_chans,
    )
    decoder = Sam2MaskDecoder(
        d_model,
        TwoWayTransformer(
            depth=decoder_depth, embedding_dim=d_model, num_heads=decoder_num_heads, mlp_dim=decoder_mlp_dim
        ),
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return Sam2Segmenter(Sam2ImageEncoder(hiera, neck), prompt_encoder, decoder)
