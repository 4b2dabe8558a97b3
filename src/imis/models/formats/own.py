"""Checks of our own checkpoint format before anything is built from it.

A checkpoint names its architecture and the builder's keyword arguments; a damaged or hostile file can
name sizes that would allocate gigabytes (``encoder_embed_dim=10**6``), fields of the wrong type, or a
state dict of non-tensors. :func:`check_own_fields` checks the fields' types; :func:`build_checked` builds
the network on PyTorch's ``meta`` device first (no memory) and compares its keys and shapes with the
state dict, so the real network is only built when the file's tensors fill it exactly: the memory taken
is then what the file's content needs. Every failure is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from imis.errors import CheckpointError

__all__ = ["build_checked", "check_own_fields"]

_SCALARS = (int, float, str, bool, type(None))
_PROMPTS = {"box", "point", "mask", "text"}


def _plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (list, tuple)) and depth < 2:
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, Mapping) and depth < 2:  # SAM 2's trunk settings are one nested dict
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def show(value: Any) -> str:
    """A value from a file, on one short line (a tensor's repr spans several)."""
    return " ".join(repr(value).split())[:80]


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: corrupt imis checkpoint: {what}")


def check_own_fields(obj: Mapping[str, Any], path: Path, architectures: Mapping[str, Any]) -> None:
    """The fields of our format have the types :func:`imis.models.registry.save_checkpoint` writes."""
    from imis.models.preprocess import Preprocess

    arch = obj.get("arch")
    if not isinstance(arch, str) or arch not in architectures:
        shown = repr(arch) if isinstance(arch, str) else f"of type {type(arch).__name__}"
        raise CheckpointError(
            f"{path}: unknown architecture {shown[:80]} (known: {', '.join(architectures)})"
        )
    kwargs = obj.get("arch_kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(
        isinstance(k, str) and _plain(v) for k, v in kwargs.items()
    ):
        raise _fail(path, "arch_kwargs is not a dict of numbers, strings and lists")
    sd = obj.get("state_dict")
    if not isinstance(sd, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise _fail(path, "state_dict is not a dict of tensors")
    for key, kind in (("metadata", Mapping), ("name", str), ("license", str), ("multimask", str)):
        if key in obj and not isinstance(obj[key], kind):
            raise _fail(path, f"{key} is a {type(obj[key]).__name__}")
    if obj.get("multimask", "single") not in ("single", "best_iou", "auto"):
        raise _fail(path, f"multimask {show(obj.get('multimask'))} is not single, best_iou or auto")
    prompts = obj.get("prompt_types", ["box"])
    if not isinstance(prompts, (list, tuple)) or not prompts or not set(prompts) <= _PROMPTS:
        raise _fail(path, f"prompt_types {show(prompts)} is not a list of {sorted(_PROMPTS)}")
    pre = obj.get("preprocess")
    fields = {f.name for f in dataclasses.fields(Preprocess)}
    if not isinstance(pre, Mapping) or set(pre) != fields or not all(_plain(v) for v in pre.values()):
        raise _fail(path, f"preprocess is not a dict of {sorted(fields)}")
    try:
        p = Preprocess(**pre)
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"preprocess {show(dict(pre))} ({_line(exc)})") from None
    if not (isinstance(p.input_size, int) and 16 <= p.input_size <= 8192):
        raise _fail(path, f"preprocess input_size {show(p.input_size)} is not a size of 16..8192")


def build_checked(
    builder: Callable[..., torch.nn.Module],
    kwargs: Mapping[str, Any],
    sd: Mapping[str, torch.Tensor],
    path: Path,
) -> torch.nn.Module:
    """``builder(**kwargs)`` on the CPU, once the same network built on the meta device is known to have
    exactly the keys and shapes of ``sd``."""
    from imis.models.formats import load_strict

    try:
        with torch.device("meta"):
            probe = builder(**kwargs)
    except Exception as exc:  # TypeError (unknown argument), ValueError, RuntimeError from layer sizes
        raise _fail(
            path, f"its arch_kwargs do not build the network ({type(exc).__name__}: {_line(exc)})"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # copying into meta tensors is a no-op, as wanted
        load_strict(probe, sd, f"imis checkpoint (file {path})")
    return builder(**kwargs)
