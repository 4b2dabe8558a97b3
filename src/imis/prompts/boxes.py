"""Box prompts derived from masks."""

from __future__ import annotations

import numpy as np


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The inclusive bounding box (x0, y0, x1, y1) of all foreground pixels of a 2D mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("empty mask has no bounding box")
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])
