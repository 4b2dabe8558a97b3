"""Slicing volumes along chosen axes, and the names and provenance of the slices.

Arrays follow :mod:`imis.io.geometry`: a volume is ``(z, y, x)``. The slice at axis ``a`` and index
``i`` is exactly ``np.take(volume, i, axis=AXES[a])`` (as :func:`imis.io.slice_volume`): a z slice is
``(y, x)``, a y slice ``(z, x)``, an x slice ``(z, y)``; nothing is flipped or transposed, so that
:mod:`imis.data.prepare.restack` can put a 2D mask back with the same index arithmetic. A 2D source image
is one slice with axis ``"2d"`` and index 0.

With ``slice_step`` N > 1 every Nth slice along each axis is kept, centred on the axis: an axis of n
slices keeps ``range(((n - 1) % N) // 2, n, N)`` (:func:`slice_indices`), so that volumes on the same grid
(an image prepared with two different label maps) keep the same indices, and the kept set is symmetric
about the middle of the axis. N = 1 keeps every slice.

The provenance record of each slice (``manifest.jsonl``) holds the source file(s), the case, the axis
and index, the parent volume's shape (z, y, x) and its geometry (spacing, origin, direction in
SimpleITK's x, y, z LPS order), the physical origin of the slice's first pixel, and the intensity window.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np

from imis.io import AXES, Geometry, SliceInfo

__all__ = ["iter_slices", "slice_indices", "slice_origin", "slice_stem", "take_slice", "valid_case_id"]

_CASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def valid_case_id(case: str) -> bool:
    """Case ids become file names: letters, digits and ``._+-``, not starting with a dot."""
    return bool(_CASE_RE.fullmatch(case)) and len(case) <= 200


def slice_indices(n: int, step: int = 1) -> range:
    """Indices kept along an axis of ``n`` slices with every ``step``-th slice kept, centred on the axis."""
    if step < 1:
        raise ValueError(f"slice step must be >= 1, got {step}")
    n = int(n)
    return range(((n - 1) % step) // 2 if n > 0 else 0, n, step)


def iter_slices(shape: Sequence[int], axes: Sequence[str], step: int = 1) -> Iterator[tuple[str, int]]:
    """``(axis, index)`` of the slices of a ``(z, y, x)`` volume along ``axes`` (every ``step``-th, centred)."""
    for axis in axes:
        for index in slice_indices(int(shape[AXES[axis]]), step):
            yield axis, index


def take_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The 2D slice ``volume`` (``(z, y, x)``) at ``axis``/``index`` as a contiguous array."""
    if axis == "2d":
        return volume
    ax = AXES[axis]
    if ax == 0:
        return volume[index]  # already contiguous for a C-ordered volume
    return np.ascontiguousarray(np.take(volume, index, axis=ax))


def slice_stem(case: str, axis: str, index: int, channel: int | None = None) -> str:
    """File stem of a slice: ``<case>_<axis>_<index:04d>`` (``<case>`` alone for a 2D image).

    With several input channels the channel is appended: ``<case>_<axis>_<index:04d>_c<channel>``.
    """
    stem = case if axis == "2d" else f"{case}_{axis}_{index:04d}"
    return stem if channel is None else f"{stem}_c{channel}"


def slice_origin(geometry: Geometry, shape: Sequence[int], axis: str, index: int) -> list[float]:
    """Physical (LPS, mm) position of the slice's first pixel."""
    if axis == "2d":
        return list(geometry.origin)
    info = SliceInfo(axis=AXES[axis], index=index, parent_geometry=geometry, parent_shape=tuple(shape))
    return [round(v, 6) for v in info.volume_geometry().origin]
