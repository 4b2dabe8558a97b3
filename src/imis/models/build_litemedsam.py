"""LiteMedSAM: our TinyViT image encoder with the SAM prompt encoder and mask decoder (prompt dim 256)."""

from __future__ import annotations

from torch import nn

from imis.models.build import _prompt_and_decoder
from imis.models.segmenter import PromptableSegmenter
from imis.models.tiny_vit import TinyViT

__all__ = ["build_imis_lite", "build_litemedsam"]


def build_litemedsam(
    img_size: int = 256,
    prompt_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int = 256,
    text_to_mask: bool = False,
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
        text_to_mask=text_to_mask,
    )
    return PromptableSegmenter(
        image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder
    )


def build_imis_lite(text_feature_dim: int = 384, **kw) -> PromptableSegmenter:
    """imis-lite: LiteMedSAM's network plus a text prompt path (IMIS-Net's design on a 256-d decoder).

    A frozen sentence encoder (MiniLM, 384-d, outside this module and its state dict) embeds the
    prompt text; ``text_projection`` (384 -> 256) turns it into the text token and the decoder's
    text-to-mask term. Both new layers start at zero so that, before training, the network is exactly
    LiteMedSAM whatever the text says.
    """
    net = build_litemedsam(text_to_mask=True, **kw)
    prompt_dim = net.prompt_encoder.embed_dim
    net.text_projection = nn.Linear(text_feature_dim, prompt_dim)
    for layer in (net.text_projection, net.mask_decoder.text_output):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return net
