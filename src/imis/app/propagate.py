"""Propagate the active object through the volume, slice by slice, from the plane it was drawn on.

Each neighbouring slice is prompted with the box around the previous slice's mask (a little padded)
through a Session, and its mask painted where no other object is; the run stops in each direction when
the mask vanishes, shrinks to almost nothing, or the model's predicted IoU drops. Progress is reported
as (slices done, slices planned) through a callback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from imis.app.document import AXES, Document
from imis.errors import PromptError
from imis.session import Session

MIN_PIXELS = 12
MIN_QUALITY = 0.5


def _bbox(mask: np.ndarray, pad: int, shape: tuple[int, int]) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = shape
    return (
        float(max(0, xs.min() - pad)),
        float(max(0, ys.min() - pad)),
        float(min(w - 1, xs.max() + pad)),
        float(min(h - 1, ys.max() + pad)),
    )


def propagate(
    doc: Document, axis: str, index: int, max_slices: int = 400, progress: Callable[[int, int], None] = None
) -> int:
    """Fill the active object on the slices around (axis, index); returns how many slices got a mask."""
    if doc.is_2d:
        raise PromptError("propagation needs a volume; this is a 2D image")
    axis, index = doc.check_plane(axis, index)
    label = doc.active
    seed = doc.label_plane(axis, index) == label
    if seed.sum() < MIN_PIXELS:
        raise PromptError("segment the object on this slice first, then propagate it")
    n = doc.display.shape[AXES.index(axis)]
    planned = min(n - 1, max_slices)
    done = filled = 0
    for step in (1, -1):
        prev = seed
        k = index + step
        while 0 <= k < n and done < planned:
            mask = _predict(doc, axis, k, prev)
            done += 1
            if progress:
                progress(done, planned)
            if mask is None:
                break
            plane = doc.labels[doc._index(axis, k)]
            plane[mask & (plane == 0)] = label
            filled += 1
            prev, k = mask, k + step
    doc.draft = None
    return filled


def _predict(doc: Document, axis: str, k: int, prev: np.ndarray) -> np.ndarray | None:
    box = _bbox(prev, 3, prev.shape)
    if box is None:
        return None
    session = Session(doc.model, cache_size=1)
    session.set_image(doc.model_plane(axis, k), name=doc.embed_key(axis, k))
    pred = session.predict(box=box)
    area, prev_area = int(pred.mask.sum()), int(prev.sum())
    if area < MIN_PIXELS or pred.quality < MIN_QUALITY or area > 4 * prev_area:
        return None
    return pred.mask
