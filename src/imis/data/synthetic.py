"""Synthetic training images: images generated from label maps (in the manner of SynthSeg: random
intensity per label, contrast inversion, gamma, blur, bias field, noise, resolution loss, random spatial
deformation) and procedurally generated shapes (blobs, tubes, rings, nested pairs) pasted onto real
images. Written from the description of the method, not from its code.

Only label maps ASSETS.md allows for training are read: btcv-demo's *train* split labels, Colin27 AAL
(without :data:`imis.data.brain_templates.HELDOUT_AAL_STRUCTURES`) and Brodmann, MNI152 grey/white
matter and brain masks. Shapes are pasted onto btcv-demo train images. Every sample is a pure function of
``(seed, index)`` and the source files (:func:`synth_sample`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from imis.errors import InputError

SOURCES = ("btcv", "aal", "brodmann", "mni152", "shapes")
SHAPES = ("blob", "tube", "ring", "nested")
#: Colin27/MNI152 slices kept: every Nth along each axis, with at least MIN_LABELS labels in it.
VOLUME_STEP = 6
MIN_LABELS = 2


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``btcv``: the btcv-demo folder (train labels; shape backgrounds), without the
    images of ``exclude_cases`` (validation cases: neither labels nor backgrounds); ``sources``:
    which of :data:`SOURCES` to draw from (uniformly); ``size``: side of the square image;
    ``min_pixels``: smaller targets are dropped; the rest bound the random transforms."""

    btcv: Path
    sources: tuple[str, ...] = SOURCES
    exclude_cases: tuple[str, ...] = ()
    size: int = 256
    min_pixels: int = 40
    max_targets: int = 12
    invert_prob: float = 0.3
    log_gamma_sd: float = 0.4
    blur_max: float = 1.5
    bias_max: float = 0.4
    noise_max: float = 0.06
    texture_max: float = 0.05
    lowres_max: float = 3.0
    deform_px: float = 6.0
    rotate_deg: float = 15.0

    def validate(self, where: str = "synthetic") -> None:
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise InputError(f"{where}: sources must be a non-empty list of {', '.join(SOURCES)}, got {bad}")
        if self.size < 32:
            raise InputError(f"{where}: size must be >= 32, not {self.size}")
        if not 0 <= self.invert_prob <= 1:
            raise InputError(f"{where}: invert_prob must be in [0, 1], not {self.invert_prob}")
        if self.lowres_max < 1:
            raise InputError(f"{where}: lowres_max must be >= 1, not {self.lowres_max}")


@dataclass
class SynthSample:
    """One generated image (uint8 ``(size, size, 3)``, grey) and its targets: ``(name, bool mask)``;
    ``name`` None for a pasted shape (no text for it)."""

    image: np.ndarray
    targets: list[tuple[str | None, np.ndarray]] = field(default_factory=list)
    source: str = ""


def sample_rng(seed: int, index: int, what: str = "") -> np.random.Generator:
    digest = hashlib.sha256(f"synthetic/{seed}/{index}/{what}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


#: The sources read from the brain templates (mricron-data, nilearn): what a label cache holds.
BRAIN_SOURCES = ("aal", "brodmann", "mni152")


class LabelMaps:
    """The label maps (2D int id maps with ``{id: name}``) of each source, read once, lazily.

    ``brain_cache``: an ``.npz`` written by :func:`write_brain_cache`; the brain sources are then read
    from it instead of the template volumes, so a machine without mricron-data, nilearn or a NIfTI
    reader (a lent GPU) generates the same images.
    """

    def __init__(
        self, btcv: Path, exclude_cases: tuple[str, ...] = (), brain_cache: Path | None = None
    ) -> None:
        self.btcv, self.exclude_cases = Path(btcv), tuple(exclude_cases)
        self.brain_cache = Path(brain_cache) if brain_cache is not None else None

    def of(self, source: str) -> list[tuple[np.ndarray, dict[int, str]]]:
        # by name, so that only the source asked for is read (the dict of properties read all four)
        attr = {"btcv": "_btcv", "aal": "_aal", "brodmann": "_brodmann", "mni152": "_mni"}[source]
        out = getattr(self, attr)
        if not out:
            raise InputError(f"synthetic source {source!r}: no label map with {MIN_LABELS}+ labels")
        return out

    @cached_property
    def _btcv_entries(self):
        from imis.data.formats.imed import read_dataset, select_cases

        if not (self.btcv / "dataset.json").is_file():
            raise InputError(f"{self.btcv}: not a dataset folder (btcv: the btcv-demo folder)")
        ds = read_dataset(self.btcv)
        entries = select_cases(ds.split("train"), (), self.exclude_cases, f"{self.btcv}: split 'train'")
        return ds, sorted(entries, key=lambda e: e.stem)

    @cached_property
    def _btcv(self) -> list[tuple[np.ndarray, dict[int, str]]]:
        from imis.data.formats.imed import read_label

        ds, entries = self._btcv_entries
        out = []
        for e in entries:
            label = read_label(e.label)
            names = ds.label_names(label.shape[0])
            ids = np.zeros(label.shape[1:], np.int32)
            for c in range(label.shape[0]):
                ids[label[c] > 0] = c + 1
            out.append((ids, {c + 1: names[c] for c in range(label.shape[0])}))
        return out

    @cached_property
    def backgrounds(self) -> list[Path]:
        return [Path(e.image) for e in self._btcv_entries[1]]

    @cached_property
    def _files(self):
        from imis.data.brain_templates import TemplateFiles

        return TemplateFiles.locate()

    @cached_property
    def _cached(self) -> dict[str, list[tuple[np.ndarray, dict[int, str]]]]:
        return read_brain_cache(self.brain_cache)

    @cached_property
    def _aal(self) -> list[tuple[np.ndarray, dict[int, str]]]:
        if self.brain_cache is not None:
            return self._cached["aal"]
        from imis.data.brain_templates import heldout_aal_labels, read_aal_names

        names = read_aal_names(self._files.aal_names)
        held = heldout_aal_labels(names)
        vol = _volume(self._files.aal)
        vol[np.isin(vol, list(held))] = 0  # held-out structures are never trained on
        return _slices(vol, {v: n for v, n in names.items() if v not in held})

    @cached_property
    def _brodmann(self) -> list[tuple[np.ndarray, dict[int, str]]]:
        if self.brain_cache is not None:
            return self._cached["brodmann"]
        vol = _volume(self._files.brodmann)
        return _slices(vol, {int(v): f"Brodmann area {int(v)}" for v in np.unique(vol) if v > 0})

    @cached_property
    def _mni(self) -> list[tuple[np.ndarray, dict[int, str]]]:
        if self.brain_cache is not None:
            return self._cached["mni152"]
        gm, wm = _volume(self._files.mni_gm, float), _volume(self._files.mni_wm, float)
        vol = np.zeros(gm.shape, np.int32)
        vol[gm > 0.5] = 1
        vol[(wm > 0.5) & (wm >= gm)] = 2
        return _slices(vol, {1: "grey matter", 2: "white matter"})


def write_brain_cache(maps: LabelMaps, path: str | Path) -> Path:
    """The brain sources' label-map slices of ``maps`` (read from the templates) in one compressed
    ``.npz`` (written atomically): ``<source>/<k>`` int16 slices and ``<source>/names`` (JSON)."""
    import json

    from imis.io import atomic_output

    arrays: dict[str, np.ndarray] = {}
    for source in BRAIN_SOURCES:
        slices = maps.of(source)
        for k, (ids, _) in enumerate(slices):
            arrays[f"{source}/{k}"] = ids.astype(np.int16)
        names = slices[0][1]  # one name table per source (of() refuses an empty source)
        arrays[f"{source}/names"] = np.array(json.dumps({str(v): n for v, n in names.items()}))
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path


def read_brain_cache(path: Path | None) -> dict[str, list[tuple[np.ndarray, dict[int, str]]]]:
    """What :func:`write_brain_cache` wrote, per brain source; a missing or damaged file is an
    InputError naming it."""
    import json

    if path is None or not Path(path).is_file():
        raise InputError(f"{path}: synthetic label cache not found (write it with write_brain_cache)")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for source in BRAIN_SOURCES:
                names = {int(v): n for v, n in json.loads(str(z[f"{source}/names"])).items()}
                n = sum(key.startswith(f"{source}/") for key in z.files) - 1  # the slices, not the names
                out[source] = [(z[f"{source}/{k}"].astype(np.int32), names) for k in range(n)]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a synthetic label cache ({e})") from e
    return out


def _volume(path: Path, dtype=np.int32) -> np.ndarray:
    from imis.io.image import read_image

    arr = np.asarray(read_image(path).array)
    return np.rint(arr).astype(dtype) if dtype is np.int32 else arr.astype(dtype)


def _slices(vol: np.ndarray, names: dict[int, str]) -> list[tuple[np.ndarray, dict[int, str]]]:
    out = []
    for axis in range(3):
        n = vol.shape[axis]
        for i in range(n % VOLUME_STEP // 2, n, VOLUME_STEP):
            s = np.take(vol, i, axis=axis)
            if len(np.unique(s)) - 1 >= MIN_LABELS:
                out.append((np.ascontiguousarray(s), names))
    return out


# ---------------------------------------------------------------------------------------------------------
# geometry and intensities
# ---------------------------------------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, size: int, grid: int, scale: float) -> np.ndarray:
    coarse = rng.normal(0.0, scale, size=(grid, grid)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def deform_ids(ids: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """``ids`` resized to ``cfg.size`` (nearest, aspect kept by padding), rotated, zoomed and warped by a
    smooth random displacement field (nearest neighbour: labels stay labels)."""
    h, w = ids.shape
    side = max(h, w)
    sq = np.zeros((side, side), ids.dtype)
    sq[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = ids
    s = cfg.size
    sq = cv2.resize(sq.astype(np.int32), (s, s), interpolation=cv2.INTER_NEAREST)
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    zoom = rng.uniform(0.85, 1.2)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, zoom)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    dx = _smooth_field(rng, s, 5, cfg.deform_px)
    dy = _smooth_field(rng, s, 5, cfg.deform_px)
    inv = cv2.invertAffineTransform(m)
    mx = inv[0, 0] * (xx + dx) + inv[0, 1] * (yy + dy) + inv[0, 2]
    my = inv[1, 0] * (xx + dx) + inv[1, 1] * (yy + dy) + inv[1, 2]
    mx, my = mx.astype(np.float32), my.astype(np.float32)
    return cv2.remap(sq, mx, my, interpolation=cv2.INTER_NEAREST, borderValue=0)


def render(ids: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """A float image in [0, 1] from an id map: a random mean and spread (up to ``texture_max``) per label
    (background too), then
    blur, a multiplicative bias field, resolution loss, noise, gamma and (with ``invert_prob``) inversion."""
    n = int(ids.max()) + 1
    means = rng.uniform(0.0, 1.0, size=n)
    sds = rng.uniform(0.0, cfg.texture_max, size=n)
    img = means[ids] + sds[ids] * rng.normal(size=ids.shape)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.01, cfg.blur_max) + 1e-3)
    img = img * np.exp(_smooth_field(rng, cfg.size, 4, rng.uniform(0.0, cfg.bias_max)))
    factor = rng.uniform(1.0, cfg.lowres_max)
    if factor > 1.2:
        small = max(8, int(round(cfg.size / factor)))
        img = cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA)
        img = cv2.resize(img, (cfg.size, cfg.size), interpolation=cv2.INTER_LINEAR)
    img = img + rng.normal(0.0, rng.uniform(0.0, cfg.noise_max), size=img.shape)
    return finish(img, rng, cfg)


def finish(img: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Min-max to [0, 1], a random gamma (log-normal), and an inversion with ``invert_prob``."""
    lo, hi = float(img.min()), float(img.max())
    u = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    u = np.clip(u, 0.0, 1.0) ** float(np.exp(rng.normal(0.0, cfg.log_gamma_sd)))
    return 1.0 - u if rng.random() < cfg.invert_prob else u


# ---------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------
def _center(rng: np.random.Generator, s: int, margin: int) -> tuple[int, int]:
    return int(rng.integers(margin, s - margin)), int(rng.integers(margin, s - margin))


def shape_masks(kind: str, rng: np.random.Generator, s: int) -> list[np.ndarray]:
    """One shape's masks (bool ``(s, s)``): a blob, a tube, a ring, or a nested pair (outer, inner)."""
    cx, cy = _center(rng, s, s // 6)
    r = int(rng.integers(s // 25, s // 7))
    canvas = np.zeros((s, s), np.uint8)
    if kind == "blob":
        cv2.circle(canvas, (cx, cy), r, 1, -1)
        wobble = _smooth_field(rng, s, 6, 0.6)
        dist = cv2.distanceTransform(1 - canvas, cv2.DIST_L2, 3) - cv2.distanceTransform(
            canvas, cv2.DIST_L2, 3
        )
        return [dist / max(r, 1) < wobble]
    if kind == "tube":
        pts = [(cx, cy)]
        for _ in range(int(rng.integers(2, 5))):
            a = rng.uniform(0, 2 * np.pi)
            step = rng.uniform(s / 12, s / 5)
            x = int(np.clip(pts[-1][0] + step * np.cos(a), 0, s - 1))
            y = int(np.clip(pts[-1][1] + step * np.sin(a), 0, s - 1))
            pts.append((x, y))
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, 1, int(rng.integers(3, max(4, s // 30))))
        return [canvas > 0]
    if kind == "ring":
        axes = (r, int(r * rng.uniform(0.6, 1.0)))
        cv2.ellipse(canvas, (cx, cy), axes, rng.uniform(0, 180), 0, 360, 1, max(3, r // 3))
        return [canvas > 0]
    if kind == "nested":
        inner = np.zeros_like(canvas)
        cv2.ellipse(canvas, (cx, cy), (r, int(r * rng.uniform(0.6, 1.0))), rng.uniform(0, 180), 0, 360, 1, -1)
        cv2.circle(inner, (cx, cy), max(2, int(r * rng.uniform(0.3, 0.5))), 1, -1)
        return [canvas > 0, inner > 0]
    raise InputError(f"shape must be one of {', '.join(SHAPES)}, not {kind!r}")


def paste_shapes(background: np.ndarray, rng: np.random.Generator, cfg: SynthConfig) -> SynthSample:
    """1-4 random shapes pasted onto a grey background (float [0, 1], ``(size, size)``), each with its own
    intensity (at least 0.2 from the background under it) and texture; later shapes cover earlier ones.
    Targets: each shape's visible part (a nested pair: the whole outer shape and the inner one)."""
    img = background.astype(np.float32).copy()
    targets: list[list[np.ndarray]] = []
    for _ in range(int(rng.integers(1, 5))):
        masks = shape_masks(str(rng.choice(SHAPES)), rng, cfg.size)
        for k, m in enumerate(masks):
            if not m.any():
                continue
            under = float(img[m].mean())
            value = rng.uniform(0.0, 1.0)
            if abs(value - under) < 0.2:
                value = under + 0.3 if under < 0.5 else under - 0.3
            img[m] = value + rng.normal(0.0, 0.03, size=int(m.sum()))
            targets = [[t & ~m for t in group] for group in targets] if k == 0 else targets
        targets.append(masks)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    flat = [m for group in targets for m in group]
    return SynthSample(_to_uint8(finish(img, rng, cfg)), [(None, m) for m in flat], "shapes")


def _to_uint8(u: np.ndarray) -> np.ndarray:
    g = np.rint(np.clip(u, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _background(maps: LabelMaps, rng: np.random.Generator, size: int) -> np.ndarray:
    from imis.data.formats.imed import read_image

    paths = maps.backgrounds
    img = read_image(paths[int(rng.integers(len(paths)))]).astype(np.float32)
    grey = img.mean(axis=2) if img.ndim == 3 else img
    grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    return (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)


# ---------------------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------------------
def synth_sample(maps: LabelMaps, cfg: SynthConfig, seed: int, index: int) -> SynthSample:
    """Sample ``index`` of the stream ``seed``: a pure function of both (and the source files)."""
    rng = sample_rng(seed, index)
    source = str(rng.choice(list(cfg.sources)))
    if source == "shapes":
        sample = paste_shapes(_background(maps, rng, cfg.size), rng, cfg)
    else:
        pool = maps.of(source)
        ids, names = pool[int(rng.integers(len(pool)))]
        warped = deform_ids(ids, rng, cfg)
        targets: list[tuple[str | None, np.ndarray]] = [
            (names.get(int(v), f"label {int(v)}"), warped == v) for v in np.unique(warped) if v > 0
        ]
        if source == "mni152":
            targets.append(("brain", warped > 0))
        sample = SynthSample(_to_uint8(render(warped, rng, cfg)), targets, source)
    kept = [(n, m) for n, m in sample.targets if int(m.sum()) >= cfg.min_pixels]
    if len(kept) > cfg.max_targets:
        order = rng.permutation(len(kept))[: cfg.max_targets]
        kept = [kept[i] for i in sorted(order)]
    sample.targets = kept
    return sample
