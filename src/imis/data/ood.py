"""The out-of-distribution validation of imis-lite (issue 18): lesion-like regions on images no model saw.

What it is, decided before any training run used it: real images of modalities and body parts that
none of imis-lite's training data has (CT of other regions, small MR, ultrasound, nuclear medicine,
fundus photographs, histology, microscopy): the sample images that pydicom and scikit-image ship, which
ASSETS.md allows for training only without labels. They have no masks, so each image gets 1-3
procedural regions (blob, tube, ring, nested pair; the geometry of :func:`imis.data.synthetic.shape_masks`)
rendered the way a lesion looks, not the way the training shapes are pasted:

* the region is *added* to the image (an intensity offset under a soft edge), so the anatomy's own
  texture continues inside it, instead of replacing the pixels with a flat fill;
* its contrast is low: an offset of 0.08-0.30 of the image's range (training pastes differ by 0.2+ from
  the intensity under them and are flat), with the sign drawn at random;
* its edge is blurred by 0.6-2.0 px and the offset carries a smooth texture of its own;
* a region whose offset is smaller than the spread of the image under it (contrast-to-noise < 1) is not
  drawn: it would be invisible, and no test of a model.

The target is "the region under the click": what a user of a promptable model wants on an image type it
was never trained on. The backgrounds are split by file into a validation half (selecting checkpoints)
and a test half (the reported figures), so no image of the test half is looked at when choosing.
Every image is a pure function of (seed, background, index) and the package files.

``imis prepare-ood --out DIR`` writes ``DIR/ood-val`` and ``DIR/ood-test`` in the released IMed-361M
layout (all images in the ``test`` split, so ``imis bench --data DIR/ood-test`` reads them).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from imis.data.synthetic import SHAPES, shape_masks
from imis.errors import InputError

__all__ = [
    "BACKGROUNDS",
    "OOD_SPLITS",
    "Background",
    "OodConfig",
    "load_background",
    "lesion_image",
    "write_ood_datasets",
]

#: The two halves, by background file: ``val`` for choosing checkpoints, ``test`` for the report.
OOD_SPLITS = ("val", "test")
#: Label names of a dataset: targets are unnamed regions, numbered in drawing order.
MAX_TARGETS = 6


@dataclass(frozen=True)
class Background:
    """One unlabelled sample image: ``package`` (pydicom or skimage), its data file (relative to the
    package's data folder), the modality it shows, and which half it belongs to."""

    name: str
    package: str
    path: str
    modality: str
    split: str


#: pydicom's and scikit-image's sample images used as backgrounds (all that show a real medical image,
#: large enough, in a colour space read without extra codecs beyond pydicom's own handlers).
BACKGROUNDS: tuple[Background, ...] = (
    Background("ct-small", "pydicom", "test_files/CT_small.dcm", "ct", "val"),
    Background("mr-small", "pydicom", "test_files/MR_small.dcm", "mr", "val"),
    Background("us-rgb", "pydicom", "test_files/examples_rgb_color.dcm", "us", "val"),
    Background("fundus-microaneurysms", "skimage", "microaneurysms.png", "fundus", "val"),
    Background("microscopy-cell", "skimage", "cell.png", "microscopy", "val"),
    Background("ct-693", "pydicom", "test_files/693_J2KI.dcm", "ct", "test"),
    Background("ct-j2k", "pydicom", "test_files/J2K_pixelrep_mismatch.dcm", "ct", "test"),
    Background("mr-overlay", "pydicom", "test_files/examples_overlay.dcm", "mr", "test"),
    Background("us-j2k", "pydicom", "test_files/examples_jpeg2k.dcm", "us", "test"),
    Background("nm-j2k", "pydicom", "test_files/JPEG2000.dcm", "nm", "test"),
    Background("fundus-retina", "skimage", "retina.jpg", "fundus", "test"),
    Background("histology-ihc", "skimage", "ihc.png", "histology", "test"),
)


@dataclass(frozen=True)
class OodConfig:
    """``per_background``: images drawn per background file in each half (val, test); ``size``: the
    longer side of every image (aspect kept); the rest bound the lesions (see the module docstring)."""

    per_background: tuple[int, int] = (8, 12)
    seed: int = 0
    size: int = 256
    min_pixels: int = 40
    max_regions: int = 3
    contrast: tuple[float, float] = (0.08, 0.30)
    edge_sigma: tuple[float, float] = (0.6, 2.0)
    texture_sd: float = 0.03
    # a region is drawn only where its offset is at least this many standard deviations of the image
    # under it: a region a reader could not see is no test of a model
    min_cnr: float = 1.0

    def validate(self) -> None:
        if len(self.per_background) != 2 or min(self.per_background) < 1:
            raise InputError(f"per_background must be two counts >= 1 (val, test), not {self.per_background}")
        if self.size < 64:
            raise InputError(f"size must be >= 64, not {self.size}")
        lo, hi = self.contrast
        if not 0 < lo <= hi <= 1:
            raise InputError(f"contrast must be 0 < low <= high <= 1, not {self.contrast}")
        if not 1 <= self.max_regions <= MAX_TARGETS // 2:
            raise InputError(f"max_regions must be in 1..{MAX_TARGETS // 2}, not {self.max_regions}")


def _package_data(package: str) -> Path:
    try:
        mod = importlib.import_module(package)
    except ImportError as e:
        raise InputError(f"OOD backgrounds need the {package} package ({e})") from e
    return Path(mod.__file__).parent / "data"


def load_background(bg: Background, size: int) -> np.ndarray:
    """The image as float32 in [0, 1] (1st-99th percentile window), ``(h, w)`` or ``(h, w, 3)``, its
    longer side resized to ``size``. A missing or unreadable file is an InputError naming it."""
    path = _package_data(bg.package) / bg.path
    if not path.is_file():
        raise InputError(f"{path}: OOD background {bg.name!r} not found in the {bg.package} package")
    try:
        if bg.package == "pydicom":
            import pydicom

            ds = pydicom.dcmread(path)
            # pydicom 3 returns colour images as RGB (its decoders undo YBR)
            img = np.asarray(ds.pixel_array, np.float32)
        else:
            from PIL import Image

            img = np.asarray(Image.open(path).convert("RGB"), np.float32)
    except Exception as e:  # a codec or decoder failure, named with the file
        raise InputError(f"{path}: cannot read OOD background {bg.name!r}: {e}") from e
    if img.ndim == 3 and np.ptp(img, axis=2).max() == 0:
        img = img[..., 0]  # a grey image stored as RGB
    lo, hi = np.percentile(img, (1, 99))
    u = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)
    h, w = u.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(u, new, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _rng(seed: int, name: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"ood/{seed}/{name}/{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _place(mask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A square ``mask`` put at a random offset inside an image of ``shape`` (its side fits the shorter one)."""
    out = np.zeros(shape, bool)
    m = mask.shape[0]
    oy = int(rng.integers(0, shape[0] - m + 1))
    ox = int(rng.integers(0, shape[1] - m + 1))
    out[oy : oy + m, ox : ox + m] = mask
    return out


def lesion_image(
    background: np.ndarray, rng: np.random.Generator, cfg: OodConfig
) -> tuple[np.ndarray, list[np.ndarray]]:
    """1..``cfg.max_regions`` lesion-like regions added to ``background`` (float [0, 1]); returns the uint8
    image (grey ``(h, w)`` or RGB) and the targets (bool ``(h, w)``, each region's visible part; a nested
    pair gives its outer and its inner region), those under ``cfg.min_pixels`` dropped."""
    img = background.astype(np.float32).copy()
    h, w = img.shape[:2]
    side = min(h, w)
    groups: list[list[np.ndarray]] = []
    for _ in range(int(rng.integers(1, cfg.max_regions + 1))):
        kind = str(rng.choice(SHAPES))
        drawn: list[np.ndarray] = []
        for m in (_place(m, (h, w), rng) for m in shape_masks(kind, rng, side)):
            if not m.any():
                break
            under, spread = float(img[m].mean()), float(img[m].std())
            delta = rng.uniform(*cfg.contrast) * (1.0 if rng.random() < 0.5 else -1.0)
            if abs(delta) < cfg.min_cnr * spread:
                break  # invisible on this busy background: neither it nor a region inside it is drawn
            if not 0.0 <= under + delta <= 1.0:
                delta = -delta  # stay inside the range, so the offset is not clipped away
            alpha = cv2.GaussianBlur(m.astype(np.float32), (0, 0), rng.uniform(*cfg.edge_sigma))
            texture = cv2.GaussianBlur(
                rng.normal(0.0, cfg.texture_sd, (h, w)).astype(np.float32), (0, 0), 1.5
            )
            change = alpha * (delta + texture)
            if img.ndim == 3:
                img = img + change[..., None] * rng.uniform(0.7, 1.3, size=3).astype(np.float32)
            else:
                img = img + change
            if not drawn:  # a later region covers the earlier ones where they overlap
                groups = [[t & ~m for t in g] for g in groups]
            drawn.append(m)
        if drawn:
            groups.append(drawn)
    targets = [t for g in groups for t in g if int(t.sum()) >= cfg.min_pixels]
    return np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8), targets


def _write_half(
    root: Path,
    split: str,
    cfg: OodConfig,
    count: int,
    progress: Callable[[str], None] | None,
) -> dict[str, int]:
    from imis.data.formats.imed_write import write_dataset_json, write_sample

    entries, regions = [], 0
    backgrounds = [b for b in BACKGROUNDS if b.split == split]
    for bg in backgrounds:
        base = load_background(bg, cfg.size)
        made = 0
        for attempt in range(count * 10):
            if made == count:
                break
            image, targets = lesion_image(base, _rng(cfg.seed, bg.name, attempt), cfg)
            if not targets:
                continue
            stack = np.zeros((MAX_TARGETS, *image.shape[:2]), bool)
            stack[: len(targets)] = np.stack(targets[:MAX_TARGETS])
            entries.append(write_sample(root, f"{bg.name}_{made:03d}", image, stack))
            regions += min(len(targets), MAX_TARGETS)
            made += 1
        if made < count:
            raise InputError(f"OOD background {bg.name!r}: only {made} of {count} images got a region")
        if progress is not None:
            progress(f"ood-{split}: {bg.name} ({bg.modality}) {made} images")
    write_dataset_json(
        root,
        f"ood-{split}",
        f"imis-lite OOD validation ({split} half): lesion-like regions on unlabelled sample images "
        "(imis.data.ood)",
        {0: "mixed"},
        {i + 1: f"region {i + 1}" for i in range(MAX_TARGETS)},
        [],
        entries,
        extra={
            "ood": {
                "seed": cfg.seed,
                "backgrounds": {b.name: f"{b.package}:{b.path} ({b.modality})" for b in backgrounds},
            }
        },
    )
    return {"images": len(entries), "regions": regions, "backgrounds": len(backgrounds)}


def write_ood_datasets(
    out: str | Path, cfg: OodConfig | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, dict[str, int]]:
    """Write ``out/ood-val`` and ``out/ood-test`` (see the module docstring); returns counts per half.
    Re-running with the same settings rewrites byte-identical files."""
    cfg = cfg or OodConfig()
    cfg.validate()
    out = Path(out)
    return {
        split: _write_half(out / f"ood-{split}", split, cfg, n, progress)
        for split, n in zip(OOD_SPLITS, cfg.per_background, strict=True)
    }
