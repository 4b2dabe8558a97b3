"""LiteMedSAM: our TinyViT image encoder with the SAM prompt encoder and mask decoder (prompt dim 256)."""

from __future__ import annotations

from imis.models.mask_decoder import MaskDecoder
from imis.models.prompt_encoder import PromptEncoder
from imis.models.segmenter import PromptableSegmenter
from imis.models.tiny_vit import TinyViT
from imis.models.transformer import TwoWayTransformer

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
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(img_size, img_size),
        mask_in_chans=mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=prompt_dim,
        transformer=TwoWayTransformer(
            depth=decoder_depth, embedding_dim=prompt_dim, num_heads=decoder_heads, mlp_dim=decoder_mlp_dim
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )
    return PromptableSegmenter(
        image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder
    )
