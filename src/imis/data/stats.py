"""`imis stats`: dataset statistics and figures like the IMIS-Bench paper's Fig. 2 (a)-(d).

For one or more datasets in the IMed-361M layout (``dataset.json`` + ``image/`` + ``label/`` [+ ``imask/``])
or the SA-Med2D-20M layout (``images/`` + ``masks/``), this counts:

* (a) images and masks per modality and per dataset, ground-truth (GT) masks and interactive masks
  (imasks) counted apart, and the distribution of masks per image;
* (b) targets per anatomical group: GT label names resolved through :class:`imis.data.vocabulary.Vocabulary`
  (distinct canonical targets, masks and images per group; unknown names listed);
* (c) image resolutions (exact sizes, and bins of the longer side);
* (d) mask coverage (mask area / image area) in bins, GT and imasks apart.

Counting rules: a GT mask is a non-empty label channel (empty channels of the released format are not
masks); an imask mask is a distinct non-zero id with at least one pixel (id 0 marks pixels covered by no
generated mask). Labels are counted from the CSR files without densifying, images are measured from their
PNG headers, so a dataset of 100k images is read in minutes.

This module counts (:func:`compute_stats` returns every number as one JSON-ready object);
:mod:`imis.data.stats_report` writes it into REPORT_DIR: ``stats.json``, ``report.md`` and the figures.
Unreadable images are reported and skipped.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from imis.data.stats_report import print_summary, write_report
from imis.data.vocabulary import BACKGROUND_GROUP, GROUPS, UNKNOWN_GROUP, Vocabulary
from imis.errors import ImisError, InputError

__all__ = [
    "COVERAGE_EDGES",
    "RESOLUTION_EDGES",
    "ImageRecord",
    "compute_stats",
    "detect_format",
    "iter_records",
    "run_stats",
]

#: Bin edges of the longer image side, in pixels (half-open bins ``[lo, hi)``, the last one open).
RESOLUTION_EDGES = (0, 128, 256, 512, 1024, 2048)
#: Bin edges of mask coverage (fraction of the image; half-open bins, the last one closed at 1).
COVERAGE_EDGES = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class ImageRecord:
    """What the statistics need of one image (no pixel data)."""

    dataset: str
    item: str
    split: str | None
    modality: str
    height: int
    width: int
    gt: list[tuple[str, int]] = field(default_factory=list)  # (raw label name, area in px), non-empty only
    imask_areas: list[int] | None = None  # area of each non-zero imask id; None: no imask


# ---------------------------------------------------------------------------------------------------------
# reading datasets as records
# ---------------------------------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """``"imed"`` or ``"samed2d"``; :class:`InputError` for anything else."""
    if not path.is_dir():
        raise InputError(f"{path}: not a dataset folder")
    meta = path / "dataset.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            data = None
        if isinstance(data, dict) and any(
            isinstance(e, dict) and "label" in e and str(e["label"]).endswith(".npz")
            for key in ("training", "test")
            for e in data.get(key) or []
        ):
            return "imed"
        if isinstance(data, dict) and (path / "image").is_dir() and (path / "label").is_dir():
            return "imed"
    if (path / "images").is_dir() and ((path / "masks").is_dir() or (path / "SAMed2D_v1.json").is_file()):
        return "samed2d"
    if (path / "imagesTr").is_dir():
        raise InputError(
            f"{path}: an MSD / nnU-Net raw folder of volumes; run `imis prepare {path} --out DATASET` "
            "and give the prepared dataset to `imis stats`"
        )
    raise InputError(
        f"{path}: neither an IMed-361M dataset (dataset.json, image/, label/) nor SA-Med2D-20M (images/, masks/)"
    )


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except Exception as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None
    return h, w


def _imask_areas(path: Path) -> list[int]:
    from imis.data.formats.imed import read_imask

    ids = read_imask(path).ravel()
    if ids.size and ids.min() < 0:
        ids = ids[ids > 0]
    counts = np.bincount(ids) if ids.size else np.zeros(1, dtype=np.int64)
    return [int(c) for c in counts[1:] if c > 0]


def _ordered_map(fn, items: Sequence[Any], workers: int | None = None) -> Iterator[Any]:
    """``map(fn, items)`` on a few threads (decompression releases the GIL), in order, with a bounded
    number of items in flight so that memory stays flat on millions of images."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(4, os.cpu_count() or 1)
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _imed_records(root: Path) -> tuple[str, int, Iterator[ImageRecord | tuple[str, str]]]:
    from imis.data.formats import imed

    ds = imed.read_dataset(root)
    modality = ds.modality.lower()

    def record(e: imed.ImedEntry) -> ImageRecord | tuple[str, str]:
        try:
            h, w = _png_size(e.image)
            shape, areas = imed.label_areas(e.label)
            if tuple(shape[1:3]) != (h, w):
                raise InputError(f"{e.label}: label size {shape[1:3]} differs from the image ({h}, {w})")
            names = ds.label_names(len(areas))
            gt = [(names[c], int(a)) for c, a in enumerate(areas) if a > 0]
            imask = _imask_areas(e.imask) if e.imask is not None else None
        except ImisError as exc:
            return (e.stem, str(exc))
        return ImageRecord(ds.name, e.stem, e.split, modality, h, w, gt, imask)

    return ds.name, len(ds.entries), _ordered_map(record, ds.entries)


def _samed2d_records(root: Path) -> tuple[str, int, Iterator[ImageRecord | tuple[str, str]]]:
    from imis.data.formats import samed2d

    ds = samed2d.read_dataset(root)

    def gen() -> Iterator[ImageRecord | tuple[str, str]]:
        for image_rel in ds.index:
            try:
                s = samed2d.read_sample(ds, image_rel)
                h, w = s.shape
                gt = [(name, int(m.sum())) for name, m in s.masks.items() if m.any()]
            except ImisError as exc:
                yield (Path(image_rel).stem, str(exc))
                continue
            yield ImageRecord(
                s.dataset or root.name, s.id, s.split, (s.modality or "unknown").lower(), h, w, gt, None
            )

    return root.name, len(ds), gen()


def iter_records(path: str | Path) -> tuple[str, str, int, Iterator[ImageRecord | tuple[str, str]]]:
    """``(name, format, number of images, records)`` of a dataset folder; a record that could not be
    read is a ``(item, error message)`` pair instead."""
    path = Path(path)
    fmt = detect_format(path)
    name, n, gen = _imed_records(path) if fmt == "imed" else _samed2d_records(path)
    return name, fmt, n, gen


# ---------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------
def _bin_labels_px(edges: Sequence[int]) -> list[str]:
    out = []
    for i, lo in enumerate(edges):
        if i + 1 < len(edges):
            out.append(f"<{edges[1]}" if lo == 0 else f"{lo}-{edges[i + 1] - 1}")
        else:
            out.append(f">={lo}")
    return out


def _bin_labels_pct(edges: Sequence[float]) -> list[str]:
    def pct(x: float) -> str:
        return f"{100 * x:g}%"

    return [
        f"<{pct(edges[1])}" if i == 0 else f"{pct(edges[i])}-{pct(edges[i + 1])}"
        for i in range(len(edges) - 1)
    ]


def _coverage_bin(fraction: float) -> int:
    i = int(np.searchsorted(COVERAGE_EDGES, fraction, side="right")) - 1
    return min(max(i, 0), len(COVERAGE_EDGES) - 2)


def _resolution_bin(long_side: int) -> int:
    return int(np.searchsorted(RESOLUTION_EDGES, long_side, side="right")) - 1


def _summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"images": 0, "total": 0, "mean": 0.0, "median": 0.0, "min": 0, "max": 0, "histogram": {}}
    arr = np.asarray(values)
    hist = Counter(int(v) for v in values)
    return {
        "images": len(values),
        "total": int(arr.sum()),
        "mean": round(float(arr.mean()), 4),
        "median": float(np.median(arr)),
        "min": int(arr.min()),
        "max": int(arr.max()),
        "histogram": {str(k): hist[k] for k in sorted(hist)},
    }


class _Accumulator:
    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocab = vocabulary
        self.datasets: dict[str, dict[str, Any]] = {}
        self.modalities: dict[str, Counter] = defaultdict(Counter)
        self.per_image: dict[str, list[int]] = {"gt": [], "imask": [], "all": []}
        self.sizes: Counter = Counter()
        self.res_bins = [0] * len(RESOLUTION_EDGES)
        self.cov = {"gt": [0] * (len(COVERAGE_EDGES) - 1), "imask": [0] * (len(COVERAGE_EDGES) - 1)}
        self.group_masks: Counter = Counter()
        self.group_images: Counter = Counter()
        self.group_targets: dict[str, set[str]] = defaultdict(set)
        self.targets: dict[str, dict[str, Any]] = {}
        self.unknown: Counter = Counter()
        self.failures: list[dict[str, str]] = []
        self._resolved: dict[str, Any] = {}

    def dataset(self, key: str, name: str, path: Path, fmt: str) -> dict[str, Any]:
        d = {"name": name, "path": str(path), "format": fmt, "images": 0, "gt_masks": 0, "imask_masks": 0,
             "images_with_imask": 0, "splits": Counter(), "modalities": Counter(), "failures": 0}  # fmt: skip
        self.datasets[key] = d
        return d

    def target(self, raw: str):
        t = self._resolved.get(raw)
        if t is None:
            t = self._resolved[raw] = self.vocab.resolve(raw, unknown="unknown")
        return t

    def add(self, d: dict[str, Any], r: ImageRecord) -> None:
        n_gt = len(r.gt)
        n_im = len(r.imask_areas) if r.imask_areas is not None else 0
        d["images"] += 1
        d["gt_masks"] += n_gt
        d["imask_masks"] += n_im
        d["images_with_imask"] += r.imask_areas is not None
        d["splits"][r.split or "none"] += 1
        d["modalities"][r.modality] += 1
        m = self.modalities[r.modality]
        m["images"] += 1
        m["gt_masks"] += n_gt
        m["imask_masks"] += n_im
        m["images_with_imask"] += r.imask_areas is not None
        self.per_image["gt"].append(n_gt)
        if r.imask_areas is not None:
            self.per_image["imask"].append(n_im)
        self.per_image["all"].append(n_gt + n_im)
        self.sizes[f"{r.width}x{r.height}"] += 1
        self.res_bins[_resolution_bin(max(r.width, r.height))] += 1
        npx = float(r.width * r.height)
        for _, area in r.gt:
            self.cov["gt"][_coverage_bin(area / npx)] += 1
        for area in r.imask_areas or ():
            self.cov["imask"][_coverage_bin(area / npx)] += 1
        groups_here = set()
        for raw, _ in r.gt:
            t = self.target(raw)
            if t.group == BACKGROUND_GROUP:
                continue
            if not t.known:
                self.unknown[raw] += 1
            self.group_masks[t.group] += 1
            self.group_targets[t.group].add(t.name)
            groups_here.add(t.group)
            rec = self.targets.setdefault(
                t.name, {"group": t.group, "masks": 0, "images": 0, "raw_names": set(), "_last": None}
            )
            rec["masks"] += 1
            rec["raw_names"].add(raw)
            if rec["_last"] != (d["name"], r.item):
                rec["images"] += 1
                rec["_last"] = (d["name"], r.item)
        for g in groups_here:
            self.group_images[g] += 1

    def result(self) -> dict[str, Any]:
        datasets = []
        for d in self.datasets.values():
            d = dict(d)
            d["splits"] = dict(sorted(d["splits"].items()))
            d["modalities"] = dict(sorted(d["modalities"].items()))
            datasets.append(d)
        totals = {
            "datasets": len(datasets),
            "images": sum(d["images"] for d in datasets),
            "gt_masks": sum(d["gt_masks"] for d in datasets),
            "imask_masks": sum(d["imask_masks"] for d in datasets),
            "images_with_imask": sum(d["images_with_imask"] for d in datasets),
            "failures": len(self.failures),
        }
        totals["masks"] = totals["gt_masks"] + totals["imask_masks"]
        totals["masks_per_image"] = round(totals["masks"] / totals["images"], 4) if totals["images"] else 0.0
        order = [
            g for g in (*GROUPS, *self.vocab.groups, UNKNOWN_GROUP) if g in self.group_masks or g in GROUPS
        ]
        groups = {}
        for g in dict.fromkeys(order):
            groups[g] = {
                "targets": sorted(self.group_targets.get(g, ())),
                "n_targets": len(self.group_targets.get(g, ())),
                "gt_masks": self.group_masks.get(g, 0),
                "images": self.group_images.get(g, 0),
            }
        n_images = totals["images"]
        long_ok = sum(
            c for c, lo in zip(self.res_bins, RESOLUTION_EDGES, strict=True) if 256 <= lo < 1024
        )  # longer side in [256, 1024)
        cov_edges = list(COVERAGE_EDGES)
        below2 = cov_edges.index(0.02)
        return {
            "version": 1,
            "counting": {
                "gt_mask": "non-empty label channel",
                "imask_mask": "distinct non-zero imask id with at least one pixel",
                "resolution": "longer side (max of width, height) in pixels; bins are [lo, hi)",
                "coverage": "mask pixels / image pixels; bins are [lo, hi), the last one includes 1",
            },
            "datasets": datasets,
            "totals": totals,
            "modalities": {k: dict(v) for k, v in sorted(self.modalities.items())},
            "masks_per_image": {k: _summary(v) for k, v in self.per_image.items()},
            "resolution": {
                "edges": list(RESOLUTION_EDGES),
                "bins": _bin_labels_px(RESOLUTION_EDGES),
                "counts": list(self.res_bins),
                "share_256_to_1024": round(long_ok / n_images, 4) if n_images else 0.0,
                "sizes": dict(sorted(self.sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
            },
            "coverage": {
                "edges": cov_edges,
                "bins": _bin_labels_pct(cov_edges),
                "gt": list(self.cov["gt"]),
                "imask": list(self.cov["imask"]),
                "gt_share_below_2pct": _share(self.cov["gt"], below2),
                "imask_share_below_2pct": _share(self.cov["imask"], below2),
            },
            "groups": groups,
            "targets": {
                k: {
                    "group": v["group"],
                    "masks": v["masks"],
                    "images": v["images"],
                    "raw_names": sorted(v["raw_names"]),
                }
                for k, v in sorted(self.targets.items())
            },
            "unknown_names": dict(sorted(self.unknown.items())),
            "failures": self.failures,
        }


def _share(counts: list[int], upto: int) -> float:
    total = sum(counts)
    return round(sum(counts[:upto]) / total, 4) if total else 0.0


def compute_stats(
    datasets: Sequence[str | Path], *, vocabulary: Vocabulary | None = None, progress: bool = True
) -> dict[str, Any]:
    """Statistics of several dataset folders (see the module documentation); returns the JSON object."""
    from tqdm import tqdm

    if not datasets:
        raise InputError("no dataset given")
    acc = _Accumulator(vocabulary or Vocabulary.builtin())
    opened = []
    for p in datasets:
        path = Path(p)
        name, fmt, n, gen = iter_records(path)
        key = name
        i = 2
        while key in acc.datasets:
            key = f"{name} ({i})"
            i += 1
        opened.append((acc.dataset(key, name, path, fmt), n, gen))
    total = sum(n for _, n, _ in opened)
    with tqdm(total=total, desc="imis stats", unit="img", disable=not progress, file=sys.stderr) as bar:
        for d, _, gen in opened:
            for rec in gen:
                if isinstance(rec, tuple):
                    d["failures"] += 1
                    acc.failures.append({"dataset": d["name"], "item": rec[0], "error": rec[1]})
                else:
                    acc.add(d, rec)
                bar.update(1)
    return acc.result()


def run_stats(
    datasets: Sequence[str | Path],
    out_dir: str | Path,
    *,
    vocabulary: Vocabulary | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Compute, write and summarise: what ``imis stats`` does. Returns the statistics."""
    stats = compute_stats(datasets, vocabulary=vocabulary, progress=progress)
    paths = write_report(stats, out_dir)
    print_summary(stats, paths, stream or sys.stdout)
    return stats
