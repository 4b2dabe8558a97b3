"""Closest known names for a misspelt one: the "did you mean ...?" of every name the user types.

Used for model names (``imis segment --model``, ``imis bench --models``), text prompts (names a model
was trained on) and anything else checked against a fixed list. No imports beyond the standard
library, so every stage may use it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["closest_names", "did_you_mean"]


def _key(name: str) -> str:
    """Lower case, every run of separators one space: ``Random_Walker`` -> ``random walker``."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", str(name).lower()).split())


def closest_names(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` names of ``known`` closest to ``name``, best first: equal but for case and
    separators (``randomwalker`` ~ ``random-walker``), then by similarity, then those containing the
    name (``kidney`` -> ``left kidney``); an empty list when nothing is close."""
    known = list(dict.fromkeys(known))
    by_key: dict[str, list[str]] = {}
    for k in known:
        by_key.setdefault(_key(k), []).append(k)
    key = _key(name)
    bare = key.replace(" ", "")
    out = [k for k in known if _key(k).replace(" ", "") == bare]
    for hit in difflib.get_close_matches(key, list(by_key), n=n + len(out), cutoff=cutoff):
        out.extend(k for k in by_key[hit] if k not in out)
    if len(bare) > 2:
        out.extend(k for k in known if k not in out and bare in _key(k).replace(" ", ""))
    return out[:n]


def did_you_mean(name: str, known: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` (or ``"; did you mean 'x' or 'y'?"``), or ``""`` when nothing is close."""
    close = closest_names(name, known, n=n)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
