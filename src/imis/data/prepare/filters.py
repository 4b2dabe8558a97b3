"""The exclusion rules of IMed-361M (paper §3.1) and connected-component splitting.

Choices, made explicit because the paper states the rules only in words:

* **Aspect ratio** is measured on the slice *in pixels*, ``max(H, W) / min(H, W)`` (the images are
  written pixel for pixel, so this is the distortion a model sees). A slice is excluded when the ratio is
  *greater than* ``max_aspect_ratio`` (1.5): exactly 1.5 (e.g. 200 x 300) is kept.
* **Small masks**: a mask is excluded when its foreground is *below* ``min_mask_fraction`` (1/1000) of
  the slice's pixels: exactly 1/1000 (e.g. 10 pixels of 100 x 100) is kept. The rule applies to every
  mask that would be written, i.e. to each connected component when a label is split.
* Both comparisons are exact: the thresholds are read as the decimal numbers written in the
  configuration (``Fraction("0.001")``, not the nearest binary float) and compared in integers.
* A slice left with no mask after these rules (including slices where the label map is empty) is
  excluded: IMed-361M holds no image without a ground-truth mask.
* **Connected components** (when configured for a label): 8-connectivity by default (4 optional); the
  components are ordered by decreasing area, ties by the raster position of their first pixel, small
  ones are excluded as above, and at most ``max_components`` are kept (the rest are counted as
  excluded by the component limit).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["aspect_ratio_ok", "exact", "large_enough", "split_components"]


def exact(value: float) -> Fraction:
    """The decimal number a user wrote (``1.5``, ``0.001``) as an exact fraction."""
    return Fraction(repr(float(value)))


def aspect_ratio_ok(height: int, width: int, max_ratio: float | Fraction = 1.5) -> bool:
    """True when ``max(H, W) / min(H, W) <= max_ratio`` (exactly ``max_ratio`` is kept)."""
    r = max_ratio if isinstance(max_ratio, Fraction) else exact(max_ratio)
    lo, hi = sorted((int(height), int(width)))
    if lo <= 0:
        return False
    return hi * r.denominator <= lo * r.numerator


def large_enough(pixels, total: int, min_fraction: float | Fraction = 0.001):
    """True where ``pixels / total >= min_fraction`` (exactly the threshold is kept); works on arrays."""
    f = min_fraction if isinstance(min_fraction, Fraction) else exact(min_fraction)
    px = np.asarray(pixels, dtype=np.int64)
    out = px * f.denominator >= int(total) * f.numerator
    out &= px > 0
    return out if out.ndim else bool(out)


_STRUCTURES = {4: np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool), 8: np.ones((3, 3), dtype=bool)}


def split_components(mask: np.ndarray, connectivity: int = 8) -> list[np.ndarray]:
    """The connected components of a 2D boolean mask, largest first (ties: first pixel in raster order)."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask, structure=_STRUCTURES[connectivity])
    if n <= 1:
        return [mask.astype(bool, copy=False)] if n == 1 else []
    areas = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-areas, kind="stable")  # ndimage numbers components in raster order
    return [labelled == (i + 1) for i in order]
