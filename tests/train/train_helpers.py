"""Helpers of the training tests: a tiny IMIS-Net-layout model on real btcv-demo slices."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_IMIS = dict(
    img_size=128,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    window_size=4,
    neck_out=32,
    prompt_dim=32,
    semantic_out_dim=16,
    decoder_mlp_dim=64,
    decoder_num_heads=4,
    iou_head_hidden_dim=32,
    text_hidden_size=32,
    text_intermediate_size=64,
    text_num_layers=1,
    text_num_heads=2,
)


def tiny_config(btcv: Path, out: Path, cache: Path, **over) -> dict:
    """A configuration mapping for a few fast steps of a random tiny IMIS-Net on btcv-demo."""
    cfg = {
        "name": "tiny",
        "out": str(out),
        "model": {"arch": "imis-net", "init": None, "arch_kwargs": dict(TINY_IMIS)},
        "datasets": [{"path": str(btcv), "split": "train", "max_images": 4}],
        "epochs": 1,
        "steps_per_epoch": 3,
        "batch_images": 2,
        "masks_per_image": 2,
        "imasks_per_image": 1,
        "interactions": 2,
        "lr": 1e-3,
        "warmup_steps": 0,
        "embedding_cache": str(cache),
        "checkpoint_every": 1,
        "num_threads": 1,
    }
    cfg.update(over)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path
