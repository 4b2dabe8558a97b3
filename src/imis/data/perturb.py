"""Seeded, deterministic intensity remaps of an image (robustness checks: ``imis bench --perturb``).

Each remap works on the image's own intensity range (min-max to [0, 1], back to the input's dtype and
range at the end), changes only intensities (never the geometry, so labels stay valid), and is a pure
function of the image, the remap's name, the seed and a key (the image id): the same call gives the same
image on every run.

- ``invert``: ``1 - x`` (dark becomes bright).
- ``gamma``: ``x ** g`` with ``g`` drawn per image from [0.4, 0.6] or [1.7, 2.5] (either side, equally
  likely), a strong monotone contrast change.
- ``noise``: additive Gaussian noise of standard deviation 0.08 of the range, clipped to the range.
- ``t2like``: air stays dark (below 0.08 of the range), everything above it is inverted onto
  [0.15, 1] and then gamma 0.8: CT's order above air (fat darker than soft tissue, bone brightest) is
  reversed while the background stays dark, roughly as a T2-weighted MRI differs from CT (a non-monotone
  remap that neither a linear normalisation nor an inversion undoes).

``random_remap`` is the training side (``intensity_variants`` in `imis train`): a random member of a
wider family drawn per (image, variant) that covers the kinds of the four above (inversions, gammas,
non-monotone maps with dark air) without containing them exactly, so that a model trained on it is
checked on remaps it was not fitted to.
"""

from __future__ import annotations

import hashlib

import numpy as np

from imis.errors import InputError

PERTURBATIONS = ("invert", "gamma", "noise", "t2like")

NOISE_SIGMA = 0.08
AIR_LEVEL = 0.08


def perturb_rng(seed: int, name: str, key: str) -> np.random.Generator:
    """The generator of one remap of one image: a function of (seed, remap, key) only."""
    digest = hashlib.sha256(f"perturb/{seed}/{name}/{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def gamma_of(seed: int, key: str) -> float:
    """The exponent ``gamma`` uses for image ``key`` under ``seed``."""
    rng = perturb_rng(seed, "gamma", key)
    low = rng.random() < 0.5
    return float(rng.uniform(0.4, 0.6) if low else rng.uniform(1.7, 2.5))


def _unit(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    x = image.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x), lo, hi
    return (x - lo) / (hi - lo), lo, hi


def _back(u: np.ndarray, lo: float, hi: float, dtype: np.dtype) -> np.ndarray:
    x = lo + np.clip(u, 0.0, 1.0) * (hi - lo)
    if np.issubdtype(dtype, np.integer):
        return np.rint(x).astype(dtype)
    return x.astype(dtype)


def remap_unit(u: np.ndarray, name: str, rng: np.random.Generator, gamma: float = 1.0) -> np.ndarray:
    """Apply remap ``name`` to intensities in [0, 1] (``gamma``: the exponent ``gamma`` uses)."""
    if name == "invert":
        return 1.0 - u
    if name == "gamma":
        return u**gamma
    if name == "noise":
        return u + rng.normal(0.0, NOISE_SIGMA, size=u.shape)
    if name == "t2like":
        tissue = u >= AIR_LEVEL
        inv = 0.15 + 0.85 * (1.0 - (u - AIR_LEVEL) / (1.0 - AIR_LEVEL))
        return np.where(tissue, np.clip(inv, 0.0, 1.0) ** 0.8, u)
    raise InputError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, not {name!r}")


def random_lut(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Knots (x, y) of a random piecewise-linear intensity map on [0, 1]: 4-7 knots whose levels are
    drawn independently, so the map is in general neither monotone nor invertible (tissues swap order,
    some merge), as between CT and an MR sequence."""
    n = int(rng.integers(4, 8))
    x = np.concatenate([[0.0], np.sort(rng.uniform(0.05, 0.95, n - 2)), [1.0]])
    y = rng.uniform(0.0, 1.0, n)
    return x, y


def random_remap(image: np.ndarray, seed: int, key: str) -> np.ndarray:
    """``image`` remapped by one random intensity map drawn from ``(seed, key)`` (a pure function of
    them): with equal odds an inversion, a gamma in [0.35, 2.8], or a random piecewise-linear map
    (`random_lut`), the last keeping air dark half the time; an inversion or gamma is followed by
    mild noise a third of the time. Returned in the input's dtype and range."""
    u, lo, hi = _unit(np.asarray(image))
    rng = perturb_rng(seed, "random", key)
    kind = int(rng.integers(3))
    if kind == 0:
        out = 1.0 - u
    elif kind == 1:
        out = u ** float(np.exp(rng.uniform(np.log(0.35), np.log(2.8))))
    else:
        x, y = random_lut(rng)
        out = np.interp(u, x, y)
        if rng.random() < 0.5:
            air = float(rng.uniform(0.03, 0.12))
            out = np.where(u < air, u * float(rng.uniform(0.0, 1.0)), 0.1 + 0.9 * out)
    if kind < 2 and rng.random() < 1 / 3:
        noise = rng.normal(0.0, float(rng.uniform(0.01, 0.05)), size=u.shape[:2])
        out = out + (noise[..., None] if out.ndim == 3 else noise)
    return _back(out, lo, hi, np.asarray(image).dtype)


def perturb_image(image: np.ndarray, name: str | None, seed: int, key: str) -> np.ndarray:
    """``image`` (any shape; an RGB image keeps its channels equal where they were) remapped by ``name``
    for ``(seed, key)``; ``None`` returns it unchanged. Raises InputError naming a wrong ``name``."""
    if name is None:
        return image
    if name not in PERTURBATIONS:
        raise InputError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, not {name!r}")
    u, lo, hi = _unit(np.asarray(image))
    rng = perturb_rng(seed, name, key)
    if name == "noise" and u.ndim == 3:
        # one noise field for all channels, so a grey image stays grey
        noisy = remap_unit(u[..., 0], name, rng)
        out = u + (noisy - u[..., 0])[..., None]
    else:
        out = remap_unit(u, name, rng, gamma_of(seed, key) if name == "gamma" else 1.0)
    return _back(out, lo, hi, np.asarray(image).dtype)
