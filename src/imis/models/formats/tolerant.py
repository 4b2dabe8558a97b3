"""Reading checkpoints whose extras are pickled Python objects, without running any of their code.

SAM-Med2D's training script saves ``{"model": state_dict, "optimizer": <torch.optim.Adam object>}``;
``torch.load(weights_only=True)`` refuses such a file (the optimizer is not a plain container), and
``weights_only=False`` would run whatever the pickle names. Here the pickle is read with torch's own
allow-list of tensor-rebuilding functions and containers; every other class or function it names
becomes an inert :class:`Opaque` placeholder (constructing, filling or "calling" it does nothing), so
the tensors load and the rest is dropped.
"""

from __future__ import annotations

import builtins
import pickle
import types
from pathlib import Path
from typing import Any

import torch

__all__ = ["Opaque", "is_weights_only_refusal", "load_tolerant"]

_PLAIN_BUILTINS = {
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "int",
    "float",
    "complex",
    "str",
    "bytes",
    "bool",
}


class Opaque:
    """Stands for a pickled object of a class we do not load: nothing of it runs and nothing is kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        return Opaque()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "Opaque()"


def _allowed() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return _weights_only_unpickler._get_allowed_globals()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed().get(f"{module}.{name}")
        if found is not None:
            return found
        if module == "builtins" and name in _PLAIN_BUILTINS:
            return getattr(builtins, name)
        return Opaque


_PICKLE = types.ModuleType("imis_tolerant_pickle")
_PICKLE.Unpickler = _Unpickler  # type: ignore[attr-defined]
_PICKLE.load = lambda f, **kw: _Unpickler(f, **kw).load()  # type: ignore[attr-defined]
_PICKLE.__dict__.update({k: getattr(pickle, k) for k in ("Pickler", "dump", "dumps", "HIGHEST_PROTOCOL")})


def is_weights_only_refusal(exc: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` failed on a global it does not allow (not a corrupt file)."""
    return isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc)


def load_tolerant(path: str | Path) -> Any:
    """``torch.load`` on CPU with non-allow-listed pickled objects replaced by :class:`Opaque`."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
