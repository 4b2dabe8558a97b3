"""Helpers shared by the model tests."""

from __future__ import annotations


def small_sam_kwargs(c: dict) -> dict:
    """`build_sam_vit` arguments for the config of the `sam_small.pt` parity fixture."""
    dec = c["decoder"]
    return dict(
        encoder_embed_dim=c["embed_dim"],
        encoder_depth=c["depth"],
        encoder_num_heads=c["num_heads"],
        encoder_global_attn_indexes=tuple(c["global_attn_indexes"]),
        img_size=c["img_size"],
        prompt_dim=c["prompt_dim"],
        patch_size=c["patch_size"],
        window_size=c["window_size"],
        mlp_ratio=c["mlp_ratio"],
        mask_in_chans=c["mask_in_chans"],
        decoder_depth=dec["depth"],
        decoder_mlp_dim=dec["mlp_dim"],
        decoder_num_heads=dec["num_heads"],
        iou_head_depth=dec["iou_head_depth"],
        iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        num_multimask_outputs=dec["num_multimask_outputs"],
    )


def small_imis_kwargs(c: dict) -> dict:
    """`build_imis_net` arguments for the config of the `imisnet_small.pt` parity fixture.

    Decoder sizes the fixture's config leaves implicit follow from its tensor shapes (mlp.lin1 (64, 32),
    IoU head hidden 32) and from its outputs (4 decoder heads).
    """
    t = c["text"]
    return dict(
        img_size=c["img_size"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        global_attn_indexes=tuple(c["global_attn_indexes"]),
        window_size=c["window_size"],
        neck_out=c["neck_out"],
        prompt_dim=c["prompt_dim"],
        semantic_out_dim=c["semantic_out_dim"],
        decoder_mlp_dim=64,
        decoder_num_heads=4,
        iou_head_hidden_dim=32,
        text_hidden_size=t["hidden_size"],
        text_intermediate_size=t["intermediate_size"],
        text_num_layers=t["num_hidden_layers"],
        text_num_heads=t["num_attention_heads"],
    )
