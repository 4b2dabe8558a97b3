"""Helpers shared by the model tests."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import torch

#: `build_sam_vit` argument -> where the parity fixtures' configs keep it
_SAM_CONFIG_KEYS = {
    "encoder_embed_dim": ("embed_dim",),
    "encoder_depth": ("depth",),
    "encoder_num_heads": ("num_heads",),
    "encoder_global_attn_indexes": ("global_attn_indexes",),
    "img_size": ("img_size",),
    "prompt_dim": ("prompt_dim",),
    "patch_size": ("patch_size",),
    "window_size": ("window_size",),
    "mlp_ratio": ("mlp_ratio",),
    "mask_in_chans": ("mask_in_chans",),
    "decoder_depth": ("decoder", "depth"),
    "decoder_mlp_dim": ("decoder", "mlp_dim"),
    "decoder_num_heads": ("decoder", "num_heads"),
    "iou_head_depth": ("decoder", "iou_head_depth"),
    "iou_head_hidden_dim": ("decoder", "iou_head_hidden_dim"),
    "num_multimask_outputs": ("decoder", "num_multimask_outputs"),
}


def small_sam_kwargs(c: dict) -> dict:
    """`build_sam_vit` arguments for the config of a SAM-layout parity fixture (`sam_small.pt`,
    `sam_med2d_small.pt.gz`); what a config leaves out keeps the builder's default."""
    out = {}
    for arg, (key, *sub) in _SAM_CONFIG_KEYS.items():
        value = c.get(key)
        for k in sub:
            value = value.get(k) if isinstance(value, dict) else None
        if value is not None:
            out[arg] = tuple(value) if isinstance(value, list) else value
    return out


def load_gz_fixture(path: Path) -> dict:
    """A gzip-compressed parity fixture written by scripts/make_sam2_fixtures.py (our own file: it holds
    plain dicts and tensors, loaded with weights_only=False as the generator saved it)."""
    return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=False)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of two tensors of the same shape (compared in float32)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max())


def prompt_kwargs(inputs: dict, case: str, click: str = "click") -> dict:
    """The prompts a fixture case name asks for (``click``/``points``, ``box``, ``mask``), as decode's
    keyword arguments."""
    return {
        "points": (inputs["point_coords"], inputs["point_labels"]) if click in case else None,
        "boxes": inputs["box"] if "box" in case else None,
        "masks": inputs["mask_input"] if "mask" in case else None,
    }


def assert_decode_matches(out: dict, embeddings_ref: dict, masks_ref: dict, tol: float) -> None:
    """Prompt embeddings (sparse, dense), low-res masks and IoU of ``decode`` within ``tol``."""
    assert maxdiff(out["sparse"], embeddings_ref["sparse"]) <= tol
    assert maxdiff(out["dense"], embeddings_ref["dense"]) <= tol
    assert maxdiff(out["low_res_masks"], masks_ref["low_res_masks"]) <= tol
    assert maxdiff(out["iou_pred"], masks_ref["iou"]) <= tol


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


def small_registry_model(name: str):
    """(spec, model) of registry entry ``name`` at its architecture's small size, random weights
    (seeded); the spec's input size follows the small build."""
    import dataclasses

    from imis.models.registry import REGISTRY, model_from_spec

    spec = REGISTRY[name]
    small_kwargs = {**spec.arch_kwargs, **spec.architecture.small_kwargs}
    torch.manual_seed(0)
    net = spec.build(**small_kwargs)
    size = int(net.prompt_encoder.input_image_size[0])
    spec = dataclasses.replace(
        spec, arch_kwargs=small_kwargs, preprocess=dataclasses.replace(spec.preprocess, input_size=size)
    )
    return spec, model_from_spec(spec, net)
