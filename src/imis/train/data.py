"""Training images and their targets, in the network's low-resolution mask frame.

Every target (a ground-truth mask or a cleaned interactive-mask region) is warped once into the frame of
the decoder's low-res logits (``lowres`` x ``lowres``, e.g. 256 for LiteMedSAM and IMIS-Net): prompts
are simulated, and the loss is computed, there. Network-input coordinates are low-res coordinates times
``input_size / lowres``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from scipy import ndimage

from imis.errors import ImisError, InputError
from imis.models.preprocess import Frame, Preprocess, frame_for, prepare_image
from imis.models.zoom import ZoomConfig, crop_window
from imis.train.config import DatasetSpec

if TYPE_CHECKING:
    from imis.data.formats.imed import ImedDataset, ImedEntry

__all__ = [
    "Geometry",
    "Target",
    "TrainImage",
    "clean_imask",
    "load_images",
    "load_synthetic",
    "select_entries",
    "read_train_image",
    "to_lowres",
    "train_input",
    "variant_affine",
    "warp_image",
    "zoom_window",
]

MIN_TARGET_PIXELS = 4  # in the low-res frame: smaller targets cannot be clicked/boxed meaningfully
IMASK_MIN_FRACTION = 0.0005  # the reference's 0.05 %


@dataclass
class Target:
    """One mask to segment: ``mask`` bool (lowres, lowres); ``name`` None for imask regions."""

    mask: np.ndarray
    name: str | None
    source: str  # "gt" or "imask"


@dataclass
class TrainImage:
    """One image: where it is, its cache key, its frame and its targets.

    ``affine``: for a geometric variant, the (2, 3) map applied to the native image (its targets are
    already warped); None for the image itself. ``size``: (H, W) of the warped view when it is not the
    image's (a zoom crop); ``whole_range``: normalise the view's intensities with the whole image's
    range, as the zoom-in refinement does at inference (`imis.models.zoom`). ``remap``: an intensity
    remap applied to the native image first (`remap_image`): ``random/<n>`` for an intensity variant,
    or a perturbation name (`imis.data.perturb`) for a perturbed validation set; None for none.
    """

    key: str
    path: Path
    dataset: str
    stem: str
    frame: Frame
    gt: list[Target]
    imask: list[Target]
    affine: np.ndarray | None = None
    size: tuple[int, int] | None = None
    whole_range: bool = False
    remap: str | None = None


@dataclass(frozen=True)
class Geometry:
    """Bounds of the random variants: rotation +-degrees, zoom +-fraction, shift +-fraction of the side."""

    rotate: float = 10.0
    scale: float = 0.1
    shift: float = 0.05


def variant_affine(key: str, variant: int, hw: tuple[int, int], geometry: Geometry) -> np.ndarray:
    """The (2, 3) native-pixel affine of variant ``variant`` (>= 1) of the image with cache key ``key``.

    Drawn from the image key and the variant number only, so that every run (any seed) sees the same
    variants and their cached embeddings are reused; rotation and zoom are about the image centre.
    """
    rng = np.random.default_rng([int(key[:12], 16), int(variant)])
    angle = rng.uniform(-geometry.rotate, geometry.rotate)
    zoom = 1.0 + rng.uniform(-geometry.scale, geometry.scale)
    tx, ty = rng.uniform(-geometry.shift, geometry.shift, size=2)
    h, w = hw
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, zoom)
    m[0, 2] += tx * w
    m[1, 2] += ty * h
    return m


def zoom_window(
    key: str, variant: int, label: np.ndarray, allowed: list[int], jitter: float = 0.1
) -> tuple[int, tuple[int, int, int, int]] | None:
    """(target channel, crop (x0, y0, x1, y1) end-exclusive) of zoom variant ``variant`` (>= 1).

    As the zoom-in refinement crops at inference (`imis.models.zoom.crop_window`): around one target
    (channel of ``label`` (C, H, W) among ``allowed``, drawn from the image key and the variant only),
    the side drawn in 3-5x the object's (inference uses 4x) and the centre shifted by up to ``jitter``
    of the object's side (a first mask is rarely exact). None when no target is small enough to zoom.
    """
    h, w = label.shape[-2:]
    cfg = ZoomConfig()
    extents = {}
    for c in allowed:
        rows, cols = np.flatnonzero(label[c].any(1)), np.flatnonzero(label[c].any(0))
        if len(rows) and max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= cfg.max_object_frac * max(h, w):
            extents[c] = (cols[0], rows[0], cols[-1], rows[-1])
    if not extents:
        return None
    rng = np.random.default_rng([int(key[:12], 16), 1000 + int(variant)])
    channel = sorted(extents)[int(rng.integers(len(extents)))]
    x0, y0, x1, y1 = extents[channel]
    side = max(x1 - x0, y1 - y0) + 1
    dx, dy = np.round(rng.uniform(-jitter, jitter, size=2) * side).astype(int)
    shifted = (int(x0 + dx), int(y0 + dy), int(x1 + dx), int(y1 + dy))
    window = crop_window(shifted, (h, w), ZoomConfig(expand=float(rng.uniform(3.0, 5.0))))
    return None if window is None else (channel, window)


def _variant_key(key: str, m: np.ndarray, size: tuple[int, int] | None = None) -> str:
    # the cache key names the exact warp: another geometry never reuses a stale embedding
    h = hashlib.sha1(np.round(m, 5).tobytes())
    if size is not None:
        h.update(np.asarray(size, np.int64).tobytes())
    return f"{key}-{h.hexdigest()[:10]}"


def _out_size(shape: tuple[int, ...], size: tuple[int, int] | None) -> tuple[int, int]:
    """cv2's (width, height) of a warp's output: ``size`` (H, W), else the input's own."""
    h, w = size if size is not None else shape[:2]
    return int(w), int(h)


def warp_image(image: np.ndarray, m: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A native image (H, W) or (H, W, C) warped by ``m`` into ``size`` (H, W; default its own);
    uncovered pixels take the image's minimum."""
    src = image if image.dtype in (np.uint8, np.uint16, np.int16, np.float32) else image.astype(np.float32)
    out = cv2.warpAffine(
        src,
        m,
        _out_size(image.shape, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float(src.min()),
    )
    return out.astype(image.dtype, copy=False)


def read_train_image(
    path: Path, affine: np.ndarray | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """The native image at ``path``, warped by ``affine`` (into ``size``) when it is a variant."""
    from imis.data.formats.imed import read_image

    image = read_image(path)
    return image if affine is None else warp_image(image, affine, size)


def remap_image(image: np.ndarray, remap: str | None, stem: str) -> np.ndarray:
    """``image`` with the intensity remap ``remap`` of `TrainImage` (None: unchanged). ``random/<n>``
    draws `imis.data.perturb.random_remap` from (stem, n); a perturbation name applies it as
    ``imis bench --perturb`` does (seed 0, keyed by the image's stem)."""
    from imis.data.perturb import perturb_image, random_remap

    if remap is None:
        return image
    if remap.startswith("random/"):
        return random_remap(image, 0, f"{stem}/{remap}")
    return perturb_image(image, remap, 0, stem)


def train_input(img: TrainImage, pre: Preprocess) -> torch.Tensor:
    """The network input (1, 3, S, S) of a training image or variant, preprocessed by ``pre``."""
    from imis.data.formats.imed import read_image

    image = remap_image(read_image(img.path), img.remap, img.stem)
    value_range = (float(image.min()), float(image.max())) if img.whole_range else None
    if img.affine is not None:
        image = warp_image(image, img.affine, img.size)
    x, _ = prepare_image(image, pre, str(img.path), value_range)
    return x


def _warp_mask(mask: np.ndarray, m: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    out = cv2.warpAffine(mask.astype(np.float32), m, _out_size(mask.shape, size), flags=cv2.INTER_LINEAR)
    return out >= 0.5


def _warp_ids(ids: np.ndarray, m: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    out = cv2.warpAffine(
        ids.astype(np.float32), m, _out_size(ids.shape, size), flags=cv2.INTER_NEAREST, borderValue=-1.0
    )
    return out.astype(np.int64)


def to_lowres(mask: np.ndarray, frame: Frame, lowres: int) -> np.ndarray:
    """A native (H, W) mask -> bool (lowres, lowres) in the low-res logit frame (padding is background).

    Area interpolation thresholded at one half, falling back to nearest neighbour for a mask that would
    vanish (a thin or tiny structure keeps at least its nearest pixels).
    """
    s = frame.input_size
    vh = max(1, int(round(frame.valid_hw[0] * lowres / s)))
    vw = max(1, int(round(frame.valid_hw[1] * lowres / s)))
    m = mask.astype(np.uint8)
    small = cv2.resize(m.astype(np.float32), (vw, vh), interpolation=cv2.INTER_AREA) >= 0.5
    if not small.any() and m.any():
        small = cv2.resize(m, (vw, vh), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = np.zeros((lowres, lowres), dtype=bool)
    out[:vh, :vw] = small
    return out


def ids_to_lowres(ids: np.ndarray, frame: Frame, lowres: int) -> np.ndarray:
    """An (H, W) id map -> int32 (lowres, lowres) by nearest neighbour; the padding gets id -1."""
    s = frame.input_size
    vh = max(1, int(round(frame.valid_hw[0] * lowres / s)))
    vw = max(1, int(round(frame.valid_hw[1] * lowres / s)))
    out = np.full((lowres, lowres), -1, dtype=np.int32)
    out[:vh, :vw] = cv2.resize(ids.astype(np.int32), (vw, vh), interpolation=cv2.INTER_NEAREST)
    return out


def clean_imask(
    ids: np.ndarray, min_fraction: float = IMASK_MIN_FRACTION, clean: bool = True
) -> list[np.ndarray]:
    """Regions of an interactive-mask id map -> bool masks, as the reference cleans them.

    Ids covering less than ``min_fraction`` of the pixels are dropped; with ``clean``, each region is
    opened then closed and its connected components below ``min_fraction`` are removed.
    """
    n = int((ids >= 0).sum())
    out = []
    values, counts = np.unique(ids, return_counts=True)
    for v, c in zip(values, counts, strict=True):
        if v < 0 or c < min_fraction * n:
            continue
        m = ids == v
        if clean:
            m = ndimage.binary_closing(ndimage.binary_opening(m))
            lab, k = ndimage.label(m)
            if k:
                sizes = np.bincount(lab.ravel())
                keep = sizes >= min_fraction * n
                keep[0] = False
                m = keep[lab]
        if m.any():
            out.append(m)
    return out


def _image_key(path: Path) -> str:
    h = hashlib.sha1()
    h.update(path.read_bytes())
    return h.hexdigest()[:20]


def load_images(
    spec: DatasetSpec,
    preprocess: Preprocess,
    lowres: int,
    clean_imasks: bool = True,
    with_imask: bool | None = None,
    geometry: Geometry | None = None,
) -> list[TrainImage]:
    """Read one dataset's images and warp their targets to the low-res frame; with ``geometry``, each
    image is followed by its ``spec.variants`` geometric variants; then by its ``spec.zoom_variants``
    zoom crops (`zoom_window`), which teach the zoom-in refinement's views, then by its
    ``spec.intensity_variants`` intensity-remapped copies (`remap_image`). ``spec.perturb`` remaps every
    view (a perturbed validation set; its dataset is named ``<name>+<perturbation>``).

    Raises InputError when the folder is not a dataset or has no usable target at all.
    """
    if spec.kind == "synthetic":
        return load_synthetic(spec, preprocess, lowres)
    from imis.data.formats.imed import read_imask, read_label

    root = Path(spec.path)
    ds, entries = select_entries(spec)
    excluded = {n.lower() for n in spec.exclude_targets}
    name = ds.name if spec.perturb is None else f"{ds.name}+{spec.perturb}"  # a perturbed set's columns
    use_imask = spec.imask if with_imask is None else with_imask
    images: list[TrainImage] = []
    for e in entries:
        try:
            label = read_label(e.label)
        except ImisError as exc:
            raise InputError(f"{root}: {exc}") from None
        h, w = label.shape[-2:]
        names = ds.label_names(label.shape[0])
        ids = None
        if use_imask and e.imask is not None:
            try:
                ids = read_imask(e.imask)
            except InputError:
                ids = None  # an image without its imask file still trains on its ground truth
        key = _image_key(Path(e.image))
        allowed = [c for c in range(label.shape[0]) if names[c].lower() not in excluded and label[c].any()]
        views: list[tuple[np.ndarray | None, tuple[int, int] | None, str | None]] = [(None, None, None)]
        if geometry is not None:  # variants augment training, validation images are seen as they are
            views += [
                (variant_affine(key, v, (h, w), geometry), None, None) for v in range(1, spec.variants + 1)
            ]
        for z in range(1, spec.zoom_variants + 1 if geometry is not None else 1):
            zoom = zoom_window(key, z, label, allowed)
            if zoom is not None:
                x0, y0, x1, y1 = zoom[1]
                views.append((np.array([[1.0, 0, -x0], [0, 1.0, -y0]]), (y1 - y0, x1 - x0), None))
        for v in range(1, spec.intensity_variants + 1 if geometry is not None else 1):
            views.append((None, None, f"random/{v}"))
        for m, size, remap in views:
            view = _view_targets(label, names, allowed, ids, m, size, preprocess, lowres, clean_imasks)
            if view is None:
                continue
            frame, gt, imask = view
            remap = remap or spec.perturb
            vkey = key if m is None else _variant_key(key, m, size)
            vkey = vkey if remap is None else f"{vkey}-{remap.replace('/', '')}"
            images.append(
                TrainImage(
                    vkey, Path(e.image), name, e.stem, frame, gt, imask, m, size, size is not None, remap
                )
            )
    if not images:
        raise InputError(
            f"{root}: no usable target in split {spec.split!r} (every mask is empty, excluded or "
            f"smaller than {MIN_TARGET_PIXELS} pixels at the network's resolution)"
        )
    return images


def select_entries(spec: DatasetSpec) -> tuple[ImedDataset, list[ImedEntry]]:
    """The dataset of an ``imed`` entry and the images it trains or validates on (its split, cases,
    exclude_cases, every and max_images applied, sorted by stem). InputError when the folder is not a
    dataset or nothing is left."""
    from imis.data.formats.imed import read_dataset, select_cases

    root = Path(spec.path)
    if not root.exists():
        raise InputError(f"{root}: training dataset not found")
    ds = read_dataset(root)
    entries = ds.entries if spec.split == "all" else ds.split(spec.split)
    entries = select_cases(entries, spec.cases, spec.exclude_cases, f"{root}: split {spec.split!r}")
    entries = sorted(entries, key=lambda e: e.stem)[:: spec.every]
    if spec.max_images is not None:
        entries = entries[: spec.max_images]
    if not entries:
        raise InputError(f"{root}: split {spec.split!r} has no images")
    return ds, entries


def _view_targets(
    label: np.ndarray,
    names: list[str],
    allowed: list[int],
    ids: np.ndarray | None,
    m: np.ndarray | None,
    size: tuple[int, int] | None,
    preprocess: Preprocess,
    lowres: int,
    clean_imasks: bool,
) -> tuple[Frame, list[Target], list[Target]] | None:
    """The frame and low-res targets of one view of an image (``m`` None: the image itself); None when
    no target is left."""
    frame = frame_for(size if size is not None else label.shape[-2:], preprocess)
    gt = []
    for c in allowed:
        native = label[c] if m is None else _warp_mask(label[c], m, size)
        lr_mask = to_lowres(native, frame, lowres)
        if lr_mask.sum() >= MIN_TARGET_PIXELS:
            gt.append(Target(lr_mask, names[c], "gt"))
    imask = []
    if ids is not None:
        v_ids = ids if m is None else _warp_ids(ids, m, size)
        # Cleaned in the low-res frame, as the reference cleans after resizing to its input size.
        for lr_mask in clean_imask(ids_to_lowres(v_ids, frame, lowres), clean=clean_imasks):
            if lr_mask.sum() >= MIN_TARGET_PIXELS:
                imask.append(Target(lr_mask, None, "imask"))
    return (frame, gt, imask) if gt or imask else None


def load_synthetic(spec: DatasetSpec, preprocess: Preprocess, lowres: int) -> list[TrainImage]:
    """``spec.count`` generated images (:mod:`imis.data.synthetic`), written as PNGs under ``spec.path``
    (rewritten only when their bytes differ), with their targets in the low-res frame: label-map targets
    as named ground truth, pasted shapes as unnamed (imask-like) targets."""
    from PIL import Image

    from imis.data.synthetic import SOURCES, LabelMaps, SynthConfig, synth_sample

    cfg = SynthConfig(
        btcv=Path(spec.btcv or ""), sources=spec.sources or SOURCES, exclude_cases=spec.exclude_cases
    )
    cfg.validate(f"synthetic dataset {spec.path}")
    cache = Path(spec.label_cache) if spec.label_cache else None
    maps = LabelMaps(cfg.btcv, cfg.exclude_cases, cache)
    root = Path(spec.path)
    root.mkdir(parents=True, exist_ok=True)
    images: list[TrainImage] = []
    for i in range(spec.count):
        sample = synth_sample(maps, cfg, spec.seed, i)
        stem = f"synth_s{spec.seed}_{i:06d}_{sample.source}"
        path = root / f"{stem}.png"
        tmp = root / f".{stem}.tmp.png"
        Image.fromarray(sample.image).save(tmp)
        if path.is_file() and path.read_bytes() == tmp.read_bytes():
            tmp.unlink()
        else:
            tmp.replace(path)
        frame = frame_for(sample.image.shape[:2], preprocess)
        gt, shapes = [], []
        for name, mask in sample.targets:
            lr = to_lowres(mask, frame, lowres)
            if lr.sum() >= MIN_TARGET_PIXELS:
                (gt if name else shapes).append(Target(lr, name, "gt" if name else "imask"))
        if gt or shapes:
            images.append(TrainImage(_image_key(path), path, "synthetic", stem, frame, gt, shapes))
    if not images:
        raise InputError(f"{root}: the synthetic dataset produced no usable target")
    return images
