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


def _clamp_box(coords: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Clamp (x0, y0, x1, y1) to the image and reorder so that x0 <= x1 and y0 <= y1."""
    h, w = shape[-2:]
    x0, x1 = np.clip(coords[[0, 2]], 0, w - 1)
    y0, y1 = np.clip(coords[[1, 3]], 0, h - 1)
    return int(min(x0, x1)), int(min(y0, y1)), int(max(x0, x1)), int(max(y0, y1))


def jittered_box(mask: np.ndarray, rng: np.random.Generator, max_offset: int) -> tuple[int, int, int, int]:
    """The tight box with each coordinate independently shifted by an integer drawn uniformly in
    ``[-max_offset, max_offset]`` (IMIS-Net's training jitter), then clamped to the image.

    Should the shifts cross two coordinates (a box narrower than the jitter), they are swapped so the box
    stays valid (``x0 <= x1``, ``y0 <= y1``). Raises ValueError for an empty mask or a negative offset.
    """
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    box = np.array(tight_box(mask), dtype=np.int64)
    box += rng.integers(-max_offset, max_offset + 1, size=4)
    return _clamp_box(box, np.shape(mask))


def offset_box(mask: np.ndarray, offset: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The tight box with each coordinate moved by exactly ``offset`` pixels, outward or inward (a seeded
    fair coin per coordinate): the box-offset protocol (0, 5, 10, 20 px).

    The result is clamped to the image, so a coordinate pushed past the border moves less than ``offset``;
    should two inward moves cross (a box narrower than ``2 * offset``), the coordinates are swapped so the
    box stays valid. Four coin flips are drawn even for ``offset == 0`` (then the tight box), so the
    generator advances the same way for every offset. Raises ValueError for an empty mask or a negative
    offset.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    box = np.array(tight_box(mask), dtype=np.int64)
    outward = rng.integers(0, 2, size=4).astype(bool)
    # Outward means smaller x0/y0 and larger x1/y1.
    step = np.where(outward, 1, -1) * np.array([-1, -1, 1, 1]) * offset
    return _clamp_box(box + step, np.shape(mask))
