"""The resumable state of a training run (``state.pt``): trainable weights, optimizer state and position,
written atomically, and the configuration key that a resume must match."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from imis.errors import ImisError
from imis.train.config import TrainConfig

STATE_FILE = "state.pt"


def trainable_state(net: torch.nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if k in names}


def save_state(path: Path, obj: dict[str, Any]) -> None:
    """Write a checkpoint atomically; on any failure the previous file at ``path`` stays as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint was written"
        raise ImisError(f"{path}: could not write the checkpoint ({exc.strerror or exc}); {kept}") from None


_KEY_DEFAULTS = {
    "text_lr_scale": 1.0,
    "click_output": "multimask",
    "variant_rotate": 10.0,
    "variant_scale": 0.1,
    "variant_shift": 0.05,
}


def config_key(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.to_json()
    # what only changes how a run is watched (not what it learns) never blocks a resume
    for k in (
        "epochs",
        "out",
        "num_threads",
        "device",
        "checkpoint_every",
        "max_nan_steps",
        "val_interactions",
        "select_on",
    ):
        d.pop(k, None)
    # options added after a run started, left at their default, do not make it "another configuration"
    for k, v in _KEY_DEFAULTS.items():
        if d.get(k) == v:
            d.pop(k)
    if not d.get("model", {}).get("train_encoder_tail"):
        d.get("model", {}).pop("train_encoder_tail", None)
    for spec in d.get("datasets", []) + d.get("val_datasets", []):
        for k, default in (
            ("variants", 0),
            ("zoom_variants", 0),
            ("cases", []),
            ("exclude_cases", []),
            ("label_cache", None),
            ("intensity_variants", 0),
            ("perturb", None),
        ):
            if spec.get(k) in (default, ()):
                spec.pop(k, None)
    return json.loads(json.dumps(d, default=str))
