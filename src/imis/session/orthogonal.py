"""Orthogonal consensus refinement of a propagated 3D mask (the seed section: imis.prompts.seed).

**Orthogonal refinement** (:func:`refine_orthogonal`). A walk along one axis drifts: every slice follows
the previous slice's mask, not the image. The refinement re-segments the walk's 3D mask M along the two
*other* axes, each slice prompted with the tight box of M on that slice (grown by ``box_margin`` px):
those boxes hand the model image context the walk never saw (the per-slice oracle, a tight box on every
slice, is far above a walk; docs/volumes.md). The three masks (M and the two re-segmentations) are
combined by majority vote (a voxel is kept where two of the three say so, i.e. M is replaced wherever the
two orthogonal views agree), and ``rounds`` repeats it from the voted mask. The options were measured
on the training structures only (benchmarks/orthogonal_refine.py, docs/volumes.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imis.errors import PromptError
from imis.models.interactive import Embedding, PromptSpec
from imis.session.propagation import PropagationRules, grown_box

__all__ = [
    "COMBINES",
    "RefineOptions",
    "combine_masks",
    "orthogonal_masks",
    "refine_orthogonal",
]

#: How the walk's mask and the two orthogonal re-segmentations are combined.
COMBINES = ("vote", "orthogonal-and", "orthogonal-or")


@dataclass(frozen=True)
class RefineOptions:
    """box_margin: px added to each side of M's tight box on an orthogonal slice; combine: one of
    COMBINES; rounds: how many times the refinement is applied (each from the previous result)."""

    box_margin: int = 1
    combine: str = "vote"
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise PromptError(f"refine combine {self.combine!r}: one of {', '.join(COMBINES)}")
        if self.rounds < 1 or self.box_margin < 0:
            raise PromptError("refine rounds must be >= 1 and box_margin >= 0")


EmbeddingOf = Callable[[int, int], Embedding]  # (array axis, slice index) -> embedding
Prefetch = Callable[[int, list[int]], None]  # encode these slices of an axis ahead (batched)


def orthogonal_masks(
    model,
    embedding: EmbeddingOf,
    mask: np.ndarray,
    axis: int,
    box_margin: int = 1,
    prefetch: Prefetch | None = None,
    batch_size: int = 4,
) -> dict[int, np.ndarray]:
    """Per other axis, the 3D mask made by prompting each of its slices where ``mask`` is not empty with
    the tight box of ``mask`` there; slices where ``mask`` is empty stay empty. ``prefetch`` is called
    with ``batch_size`` slices at a time just before they are decoded (so a small LRU cache holds them)."""
    out = {}
    margin = PropagationRules(box_margin=box_margin)
    for ax in (a for a in range(3) if a != axis):
        other = tuple(d for d in range(3) if d != ax)
        indices = [int(i) for i in np.nonzero(mask.any(axis=other))[0]]
        result = np.zeros_like(mask, dtype=bool)
        for n, i in enumerate(indices):
            if prefetch is not None and n % batch_size == 0:
                prefetch(ax, indices[n : n + batch_size])
            plane = np.take(mask, i, axis=ax)
            pred = model.decode(embedding(ax, i), PromptSpec(box=grown_box(plane, margin)))
            result[(slice(None),) * ax + (i,)] = pred.mask
        out[ax] = result
    return out


def combine_masks(mask: np.ndarray, others: dict[int, np.ndarray], combine: str) -> np.ndarray:
    """The walk's mask and the two orthogonal masks combined as ``combine`` says (COMBINES)."""
    a, b = others.values()
    if combine == "orthogonal-and":
        return a & b
    if combine == "orthogonal-or":
        return a | b
    return (mask.astype(np.uint8) + a + b) >= 2


def refine_orthogonal(
    model,
    embedding: EmbeddingOf,
    mask: np.ndarray,
    axis: int,
    options: RefineOptions | None = None,
    prefetch: Prefetch | None = None,
    batch_size: int = 4,
) -> np.ndarray:
    """The walk's (z, y, x) ``mask`` (propagated along array ``axis``) refined by orthogonal consensus."""
    options = options or RefineOptions()
    if axis not in (0, 1, 2):
        raise PromptError(f"refine: axis {axis!r} is not 0, 1 or 2")
    out = np.asarray(mask, dtype=bool)
    for _ in range(options.rounds):
        if not out.any():
            break
        others = orthogonal_masks(model, embedding, out, axis, options.box_margin, prefetch, batch_size)
        out = combine_masks(out, others, options.combine)
    return out
