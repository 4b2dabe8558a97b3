"""Builders of the SAM-family networks we load checkpoints into (randomly initialised).

``build_sam_vit``: the official Segment Anything ViT layout (SAM, MedSAM, SAM-Med2D-style checkpoints);
``build_imis_net``: IMIS-Net (SAM ViT trunk + 768-channel neck, 768-d prompt encoder and decoder with
semantic tokens and text-to-mask path, CLIP text tower and its 512 -> 768 projection). Every size is a
parameter so that small configurations (the parity fixtures) build with the same code.
"""

from __future__ import annotations

from torch import nn

from imis.models.image_encoder import ImageEncoderViT
from imis.models.mask_decoder import MaskDecoder
from imis.models.prompt_encoder import PromptEncoder
from imis.models.segmenter import PromptableSegmenter
from imis.models.transformer import TwoWayTransformer

__all__ = ["build_imis_net", "build_imis_net_b", "build_sam_vit", "build_sam_vit_b"]


def _prompt_and_decoder(
    img_size: int,
    grid: int,
    prompt_dim: int,
    mask_in_chans: int,
    decoder_depth: int,
    decoder_mlp_dim: int,
    decoder_num_heads: int,
    iou_head_depth: int,
    iou_head_hidden_dim: int,
    num_multimask_outputs: int,
    semantic_out_dim: int | None = None,
    text_to_mask: bool = False,
) -> tuple[PromptEncoder, MaskDecoder]:
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(img_size, img_size),
        mask_in_chans=mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=prompt_dim,
        transformer=TwoWayTransformer(
            depth=decoder_depth,
            embedding_dim=prompt_dim,
            num_heads=decoder_num_heads,
            mlp_dim=decoder_mlp_dim,
        ),
        num_multimask_outputs=num_multimask_outputs,
        iou_head_depth=iou_head_depth,
        iou_head_hidden_dim=iou_head_hidden_dim,
        semantic_out_dim=semantic_out_dim,
        text_to_mask=text_to_mask,
    )
    return prompt_encoder, mask_decoder


def build_sam_vit(
    encoder_embed_dim: int = 768,
    encoder_depth: int = 12,
    encoder_num_heads: int = 12,
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    img_size: int = 1024,
    prompt_dim: int = 256,
    patch_size: int = 16,
    window_size: int = 14,
    mlp_ratio: float = 4.0,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_depth: int = 3,
    iou_head_hidden_dim: int = 256,
    num_multimask_outputs: int = 3,
) -> PromptableSegmenter:
    """Segment Anything with a ViT encoder (defaults: ViT-B at 1024 px, 256-d prompts)."""
    grid = img_size // patch_size
    image_encoder = ImageEncoderViT(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=encoder_embed_dim,
        depth=encoder_depth,
        num_heads=encoder_num_heads,
        mlp_ratio=mlp_ratio,
        out_chans=prompt_dim,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=tuple(encoder_global_attn_indexes),
    )
    prompt_encoder, mask_decoder = _prompt_and_decoder(
        img_size,
        grid,
        prompt_dim,
        mask_in_chans,
        decoder_depth,
        decoder_mlp_dim,
        decoder_num_heads,
        iou_head_depth,
        iou_head_hidden_dim,
        num_multimask_outputs,
    )
    return PromptableSegmenter(image_encoder, prompt_encoder, mask_decoder)


def build_sam_vit_b() -> PromptableSegmenter:
    """The official SAM ViT-B layout (also MedSAM's)."""
    return build_sam_vit()


def build_imis_net(
    img_size: int = 1024,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    window_size: int = 14,
    neck_out: int = 768,
    prompt_dim: int = 768,
    patch_size: int = 16,
    mlp_ratio: float = 4.0,
    trunk_img_size: int | None = None,
    encoder_norm_eps: float = 1e-5,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_depth: int = 3,
    iou_head_hidden_dim: int = 256,
    num_multimask_outputs: int = 3,
    semantic_out_dim: int = 512,
    with_text: bool = True,
    text_vocab_size: int = 49408,
    text_hidden_size: int = 512,
    text_intermediate_size: int = 2048,
    text_num_layers: int = 12,
    text_num_heads: int = 8,
    text_max_positions: int = 77,
    text_eos_token_id: int = 49407,
) -> PromptableSegmenter:
    """IMIS-Net (defaults: the released ViT-B model at 1024 px).

    img_size: the model input size S (prompt frame, embedding grid S/16). trunk_img_size: the size the
    ViT trunk was trained at, which fixes its stored position grid and global rel-pos tables (the
    release: 1024, also when run at another S; default: ``img_size``). encoder_norm_eps: the trunk's
    LayerNorm epsilon (timm's samvit uses torch's default 1e-5, SAM's own 1e-6).
    with_text: build the CLIP text tower and its projection (False: a text-less decoder-compatible net).
    """
    grid = img_size // patch_size
    image_encoder = ImageEncoderViT(
        img_size=trunk_img_size or img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        out_chans=neck_out,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=tuple(global_attn_indexes),
        norm_eps=encoder_norm_eps,
    )
    prompt_encoder, mask_decoder = _prompt_and_decoder(
        img_size,
        grid,
        prompt_dim,
        mask_in_chans,
        decoder_depth,
        decoder_mlp_dim,
        decoder_num_heads,
        iou_head_depth,
        iou_head_hidden_dim,
        num_multimask_outputs,
        semantic_out_dim=semantic_out_dim,
        text_to_mask=with_text,
    )
    text_encoder: nn.Module | None = None
    text_projection: nn.Linear | None = None
    if with_text:
        # Imported here: the text tower is optional and lives in its own module.
        from imis.models.text.text_encoder import CLIPTextEncoder

        text_encoder = CLIPTextEncoder(
            vocab_size=text_vocab_size,
            hidden_size=text_hidden_size,
            intermediate_size=text_intermediate_size,
            num_layers=text_num_layers,
            num_heads=text_num_heads,
            max_positions=text_max_positions,
            eos_token_id=text_eos_token_id,
        )
        text_projection = nn.Linear(text_hidden_size, prompt_dim)
    return PromptableSegmenter(image_encoder, prompt_encoder, mask_decoder, text_encoder, text_projection)


def build_imis_net_b() -> PromptableSegmenter:
    """The released IMIS-Net ViT-B layout (1024 px, 768-d prompts, CLIP ViT-B/32 text tower)."""
    return build_imis_net()
