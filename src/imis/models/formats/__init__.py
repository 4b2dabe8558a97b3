"""Checkpoint layouts: converters between foreign state-dict names and our internal ones, and strict loading.

Each layout module (``sam``, ``imis``, ``litemedsam``) offers ``to_internal(state_dict)`` (foreign names
-> the names of our ``PromptableSegmenter``) and ``to_foreign(state_dict)`` (the reverse, for export).
``load_strict`` then loads with a one-line, user-facing error on any mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from imis.errors import CheckpointError

__all__ = ["load_strict", "strip_prefix", "describe_keys", "unwrap"]

# Keys under which training scripts nest the weights: ours/LiteMedSAM/SAM-Med2D ("model"), Lightning
# and MMEngine ("state_dict"), IMIS-Bench's train.py ("model_state_dict").
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
# Prefixes added by wrappers around the whole model: DDP / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_SHOWN = 5  # keys named per category in an error message


def strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` from every key when every key has it; otherwise return the keys unchanged."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """A flat state dict from a checkpoint object.

    Accepts a flat state dict, or one nested under ``model_state_dict`` / ``state_dict`` / ``model``
    (possibly more than once), with ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefixes.
    Raises CheckpointError when no dict of tensors is found.
    """
    for _ in range(4):  # wrappers nest rarely more than twice
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            sd = dict(obj)
            changed = True
            while changed:
                changed = False
                for prefix in WRAPPER_PREFIXES:
                    stripped = strip_prefix(sd, prefix)
                    if stripped.keys() != sd.keys():
                        sd, changed = stripped, True
            return sd
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = type(obj).__name__
    if isinstance(obj, Mapping):
        keys = ", ".join(list(map(printable, obj))[:_SHOWN])
        found = f"a dict with keys {keys}" if keys else "an empty dict"
    raise CheckpointError(
        f"checkpoint holds no state dict of tensors (found {found}; expected a flat state dict or one "
        f"under {' / '.join(WRAPPER_KEYS)})"
    )


def printable(key: object) -> str:
    """A key from a file as it can be shown on one line (control characters escaped)."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def describe_keys(keys: list[str], noun: str) -> str:
    """'3 missing keys (a, b, c)': the count and up to five of the keys."""
    plural = "" if len(keys) == 1 else ("es" if noun.endswith("ch") else "s")
    shown = ", ".join(printable(k) for k in keys[:_SHOWN])
    if len(keys) > _SHOWN:
        shown += f", ... (+{len(keys) - _SHOWN} more)"
    return f"{len(keys)} {noun}{plural} ({shown})"


def load_strict(module: nn.Module, internal_sd: Mapping[str, torch.Tensor], layout_name: str) -> None:
    """Load ``internal_sd`` into ``module`` requiring exactly its keys and shapes.

    Raises CheckpointError with one line naming up to five missing / unexpected / wrongly shaped keys
    (with their counts) and the layout that was expected, instead of torch's multi-line report.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in internal_sd]
    unexpected = [k for k in internal_sd if k not in expected]
    not_tensor = [k for k in internal_sd if k in expected and not isinstance(internal_sd[k], torch.Tensor)]
    mismatched = [
        f"{k} {tuple(internal_sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in internal_sd
        and isinstance(internal_sd[k], torch.Tensor)
        and internal_sd[k].shape != expected[k].shape
    ]
    problems = [
        describe_keys(keys, noun)
        for keys, noun in (
            (missing, "missing key"),
            (unexpected, "unexpected key"),
            (mismatched, "shape mismatch"),
            (not_tensor, "non-tensor value"),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint does not match the expected layout {layout_name}: " + "; ".join(problems)
        )
    module.load_state_dict(dict(internal_sd), strict=True)
