"""LiteMedSAM: our TinyViT image encoder with the SAM prompt encoder and mask decoder (prompt dim 256)."""

from __future__ import annotations

from imis.models.build import _prompt_and_decoder
from imis.models.segmenter import PromptableSegmenter
from imis.models.tiny_vit import TinyViT

__all__ = ["build_litemedsam"]


def build_litemedsam(
    img_size: int = 256,
    prompt_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int = 256,
) -> PromptableSegmenter:
    """The LiteMedSAM network with random weights (load ``lite_medsam.pth`` through the registry).

    Shapes: image (B, 3, 256, 256) in [0, 1] -> embedding (B, 256, 64, 64); box/point prompts in the
    256x256 input frame; low-res mask logits (B, M, 256, 256).
    """
    encoder = TinyViT(img_size=img_size, out_chans=prompt_dim)
    grid = img_size // 4  # the stride-1 stem and merge strides (2, 2, 1) give a 4x smaller grid
    prompt_encoder, mask_decoder = _prompt_and_decoder(
        img_size,
        grid,
        prompt_dim,
        mask_in_chans,
        decoder_depth,
        decoder_mlp_dim,
        decoder_heads,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
        num_multimask_outputs=3,
    )
    return PromptableSegmenter(
        image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder
    )
