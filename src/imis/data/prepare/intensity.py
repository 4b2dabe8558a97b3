"""Intensities to 8 bit, by modality (IMed-361M / SA-Med2D-20M protocol, SPEC.md "prepare").

* **CT** by a window of width ``W`` and level ``L``: values are clipped to ``[L - W/2, L + W/2]`` and
  mapped linearly onto ``[0, 255]``. Presets (:data:`imis.data.prepare.config.CT_WINDOWS`): soft tissue
  W400/L40, lung W1500/L-600, bone W2500/L480, brain W80/L40, liver W150/L90; or a custom window; or
  ``percentile`` scaling as for MR.
* **MR and every other modality**: clipped to the 0.5 and 99.5 percentiles of the *whole volume* (the
  same limits for every slice and axis of a case, so that the slices of one case are comparable), then
  min-max mapped onto ``[0, 255]``.

The mapping is ``round((clip(x, lo, hi) - lo) * 255 / (hi - lo))`` in float64 with round-half-to-even,
bit-identical whatever the input dtype (integer volumes go through a look-up table, floats through
slabs of the volume to bound memory). A volume whose limits coincide (``hi == lo``, e.g. constant) maps
to 0 where ``x <= lo`` and 255 above. Colour (RGB) 2D images that are already 8-bit are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["IntensityWindow", "choose_window", "to_uint8"]

_SLAB_VOXELS = 1 << 22  # float64 working memory per step: 32 MiB


@dataclass(frozen=True)
class IntensityWindow:
    """How a volume was mapped to 8 bit: the provenance record's ``window`` entry."""

    method: str  # "window" (CT preset/custom), "percentile" or "none" (already 8-bit colour)
    low: float
    high: float
    name: str | None = None  # CT preset name, "custom", or None
    width: float | None = None
    level: float | None = None
    percentiles: tuple[float, float] | None = None

    def to_json(self) -> dict:
        out: dict = {"method": self.method, "low": self.low, "high": self.high}
        if self.name is not None:
            out.update(name=self.name, width=self.width, level=self.level)
        if self.percentiles is not None:
            out["percentiles"] = list(self.percentiles)
        return out


def choose_window(
    array: np.ndarray,
    window: tuple[str, float, float] | None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> IntensityWindow:
    """The limits for ``array``: the CT ``window`` ``(name, width, level)``, or its percentiles if None."""
    if window is not None:
        name, width, level = window
        return IntensityWindow(
            "window", float(level - width / 2.0), float(level + width / 2.0), name, float(width), float(level)
        )
    p_lo, p_hi = percentiles
    lo, hi = (float(v) for v in np.percentile(array, [p_lo, p_hi]))
    return IntensityWindow("percentile", lo, hi, percentiles=(float(p_lo), float(p_hi)))


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = values.astype(np.float64, copy=False)
    if hi <= lo:
        return np.where(x > lo, 255, 0).astype(np.uint8)
    y = (np.clip(x, lo, hi) - lo) * 255.0 / (hi - lo)
    return np.rint(y).astype(np.uint8)


def to_uint8(array: np.ndarray, win: IntensityWindow) -> np.ndarray:
    """``array`` mapped to uint8 with the limits of ``win`` (same shape)."""
    a = np.asarray(array)
    if win.method == "none":
        return a.astype(np.uint8, copy=False)
    if a.dtype.kind in "biu" and a.dtype.itemsize <= 2:
        # Every possible value once: a look-up table, exact and much faster than float arithmetic.
        if a.dtype == bool:
            a = a.view(np.uint8)
        info = np.iinfo(a.dtype)
        lut = _scale(np.arange(info.min, info.max + 1, dtype=np.int64), win.low, win.high)
        if info.min < 0:  # value - min without a wider copy: flip the sign bit of the unsigned view
            a = a.view(np.dtype(f"u{a.dtype.itemsize}")) ^ np.array(-info.min, dtype=f"u{a.dtype.itemsize}")
        return lut[a]
    out = np.empty(a.shape, dtype=np.uint8)
    flat_in = a.reshape(-1)
    flat_out = out.reshape(-1)
    for start in range(0, flat_in.size, _SLAB_VOXELS):
        stop = start + _SLAB_VOXELS
        flat_out[start:stop] = _scale(flat_in[start:stop], win.low, win.high)
    return out
