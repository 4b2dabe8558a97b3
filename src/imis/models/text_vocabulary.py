"""The target names a text model was trained on, and the warnings of a text prompt outside them.

A text prompt is never refused (free text is embedded as given), but a name the model never saw in
training gives a mask of little meaning: :func:`text_warning` says so, with the nearest trained names.
The list of a shipped model is a text file beside its weights (one name a line, as
:func:`imis.prompts.text.prompt_name` spells it), written by ``scripts/text_vocabulary.py``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["VOCABULARY_FILES", "text_vocabulary", "text_warning"]

_WEIGHTS = Path(__file__).parent / "weights"

#: model name -> file listing the names its text prompts were trained on
VOCABULARY_FILES: dict[str, Path] = {"imis-lite": _WEIGHTS / "imis_lite_vocabulary.txt"}


@cache
def text_vocabulary(model: str) -> tuple[str, ...] | None:
    """The names ``model``'s text prompts were trained on; None when no list is known for it."""
    path = VOCABULARY_FILES.get(model)
    if path is None or not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(n.strip() for n in lines if n.strip() and not n.startswith("#"))


def text_warning(model: str, text: str) -> str | None:
    """A one-line warning when ``text`` is outside what ``model`` was trained on (with the nearest
    trained names), else None (also when the model's list is unknown)."""
    from imis.data.vocabulary import Vocabulary
    from imis.names import closest_names
    from imis.prompts.text import prompt_name

    names = text_vocabulary(model)
    if names is None:
        return None
    name = prompt_name(text, Vocabulary.builtin())
    if name in names:
        return None
    close = closest_names(name, names, n=3, cutoff=0.5)
    near = f"; nearest known: {', '.join(close)}" if close else ""
    return (
        f"text {text!r} is not a name {model} was trained on{near} "
        f"(all {len(names)}: `imis models --vocabulary {model}`)"
    )
