"""`imis prepare`: raw collections -> an IMIS dataset in the IMed-361M layout, plus our manifest.

One **work unit per case** (:func:`process_case`), run in this process, in a process pool
(``workers > 1``) or as Ray tasks (``executor="ray"``)::

    read image channel(s) + label map -> check them against each other -> intensities to 8 bit
    -> slice along the chosen axes (every ``slice_step``-th) -> filter (aspect ratio, small masks, no
    mask left; optionally slices that repeat a kept one, ``drop_duplicate_slices``) -> one-hot
    channels named through the vocabulary -> write image PNG + CSR label (IMed writer) -> case record

Output folder (``--out DATASET``)::

    dataset.json        IMed-361M dataset.json (labels, training/test entries) + an "imis" block
    image/  label/      the IMed-361M files, written by imis.data.formats.imed.write_sample
    manifest.jsonl      one provenance record per image (source, case, axis, index, geometry, window, masks, split)
    summary.json        counts: cases, slices kept/excluded by rule, masks kept/excluded, failures, leakage
    prepare.json        the settings, source and channel layout of the run (checked on resume)
    cases/<case>.json   per-case record; written atomically *last*, it marks the case as done

**Safety.** Every file is written atomically (temporary name + rename). A rerun skips the cases whose
record exists (and whose input files still have the recorded size and modification time; a changed case
is redone after its old files are removed) and redoes the others, so a run killed at any point and rerun
gives the same bytes as an uninterrupted run: outputs depend only on the source files and the settings
(no clock times, worker counts or processing order in any file). Leftover temporary files of a killed run are removed on the next run. A
case that fails (unreadable file, shapes that do not match, non-integer labels, ...) is reported with
its cause in the summary and ``summary.json``; the others finish, and :func:`prepare` reports the
failures so that the command exits with status 1. The split and the leakage check are redone at the end
of every run over all finished cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imis.data.prepare.config import PrepareConfig
from imis.data.prepare.filters import aspect_ratio_ok, exact, large_enough, split_components
from imis.data.prepare.intensity import IntensityWindow, choose_window, to_uint8
from imis.data.prepare.layout import Layout, build_layout
from imis.data.prepare.slicing import iter_slices, slice_origin, slice_stem, take_slice, valid_case_id
from imis.data.prepare.sources import CaseSource, SourceInfo, label_values, list_source, load_case
from imis.data.prepare.split import check_leakage, dataset_digests, image_digest, split_cases
from imis.errors import ImisError, InputError
from imis.io import ImageData, atomic_output

__all__ = ["CaseResult", "CaseTask", "PrepareSummary", "prepare", "process_case"]

FORMAT_VERSION = 1
CASES_DIR = "cases"
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
SETTINGS = "prepare.json"
LOCK = ".prepare.lock"
#: Settings that change only the split/leakage step: a rerun may change them without redoing cases.
_SPLIT_KEYS = (
    "name",
    "description",
    "test_fraction",
    "max_test_images",
    "seed",
    "leakage_datasets",
    "vocabulary",
)
#: Settings added after format version 1, left out of the fingerprint at their default (which gives the
#: output of the versions before them), so that datasets prepared before they existed still resume.
_LATER_KEYS: dict[str, Any] = {"slice_step": 1, "drop_duplicate_slices": False}
_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp")


# ---------------------------------------------------------------------------------------------------------
# the work unit
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseTask:
    """Everything a worker needs for one case (picklable; no open files, no arrays)."""

    source: CaseSource
    out: str
    config: PrepareConfig
    layout: Layout
    modality: tuple[str, ...]  # per chosen channel
    fingerprint: str
    named_values: frozenset[int] = frozenset()  # every label value the source names (ignored ones too)
    single_thread: bool = False


@dataclass
class CaseResult:
    """What a case produced (or why it failed); the parent aggregates these for the progress bar."""

    case: str
    ok: bool
    cause: str | None = None
    kept: int = 0
    skipped: str | None = None  # reason when the case was skipped on purpose (empty_labels: skip)


def _json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    return (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _rgb(gray: np.ndarray) -> np.ndarray:
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    out[...] = gray[..., None]
    return out


def _check_pair(images: list[ImageData], label: ImageData, case: str) -> None:
    for img in images:
        if img.spatial_shape != label.spatial_shape:
            raise InputError(
                f"case {case}: label map {label.source} has shape {label.spatial_shape} but the image "
                f"{img.source} has {img.spatial_shape} ((z, y, x) order); they must match voxel for voxel"
            )
        if img.kind != label.kind:
            raise InputError(
                f"case {case}: image {img.source} is {img.kind} but the label map is {label.kind}"
            )
        if not img.geometry.allclose(label.geometry, atol=1e-3):
            g, h = img.geometry, label.geometry
            raise InputError(
                f"case {case}: label map {label.source} has a different geometry from the image "
                f"{img.source} (spacing {h.spacing} vs {g.spacing}, origin {h.origin} vs {g.origin}, "
                f"direction {h.flat_direction} vs {g.flat_direction}); resample the label map onto the image"
            )


@dataclass(frozen=True)
class _Plan:
    """The layout's groups split for speed: single-value unsplit groups are handled as arrays."""

    values: np.ndarray  # source value of each simple group
    channels: np.ndarray  # its channel
    others: tuple  # multi-value or component-split groups (Layout.Group)
    restack: np.ndarray  # source value recorded for each channel

    @classmethod
    def of(cls, layout: Layout) -> _Plan:
        groups = layout.groups
        simple = [g for g in groups if not g.split and len(g.values) == 1]
        return cls(
            values=np.array([g.values[0] for g in simple], dtype=np.int64),
            channels=np.array([g.channels[0] for g in simple], dtype=np.int64),
            others=tuple(g for g in groups if g.split or len(g.values) != 1),
            restack=layout.restack_values(),
        )


def _slice_channels(
    lab: np.ndarray, plan: _Plan, lut: np.ndarray, config: PrepareConfig, min_frac, counts_out: dict
) -> tuple[np.ndarray | None, list[dict]]:
    """The channel map of a label slice after the mask filters (-1 = no mask), and the mask records.

    Masks of one label map never overlap, so one ``(H, W)`` map of channel ids holds every one-hot
    channel; :func:`_csr_arrays` turns it into the CSR matrix without a dense ``(C, H, W)`` array.
    """
    h, w = lab.shape
    total = h * w
    counts = np.bincount(lab.ravel(), minlength=lut.size)
    lut.fill(-1)
    px = counts[plan.values]
    present = px > 0
    ok = large_enough(px, total, min_frac)
    counts_out["masks_excluded_small"] += int(np.count_nonzero(present & ~ok))
    lut[plan.values[ok]] = plan.channels[ok]
    kept: list[tuple[int, int, int | None]] = [
        (int(c), int(n), None) for c, n in zip(plan.channels[ok], px[ok], strict=True)
    ]  # (channel, pixels, component)
    splits: list[tuple[int, np.ndarray]] = []
    for g in plan.others:
        n_px = int(counts[list(g.values)].sum())
        if n_px == 0:
            continue
        if not g.split:
            if not large_enough(n_px, total, min_frac):
                counts_out["masks_excluded_small"] += 1
                continue
            lut[list(g.values)] = g.channels[0]
            kept.append((g.channels[0], n_px, None))
            continue
        union = lab == g.values[0] if len(g.values) == 1 else np.isin(lab, g.values)
        comps = split_components(union, config.connectivity)
        sizes = [int(c.sum()) for c in comps]
        good = [(c, n) for c, n in zip(comps, sizes, strict=True) if large_enough(n, total, min_frac)]
        counts_out["masks_excluded_small"] += len(comps) - len(good)
        if len(good) > len(g.channels):
            counts_out["masks_excluded_component_limit"] += len(good) - len(g.channels)
            good = good[: len(g.channels)]
        if len(comps) > 1:
            counts_out["labels_split"] += 1
        for rank, (c, n) in enumerate(good):
            splits.append((g.channels[rank], c))
            kept.append((g.channels[rank], n, rank + 1))
    if not kept:
        return None, []
    chmap = lut[lab]
    for ch, comp in splits:
        chmap[comp] = ch
    records = []
    for ch, n, comp in sorted(kept):
        rec = {"label": ch + 1, "value": int(plan.restack[ch]), "pixels": n}
        if comp is not None:
            rec["component"] = comp
        records.append(rec)
    return chmap, records


def _csr_arrays(chmap: np.ndarray, n_channels: int) -> list[tuple[str, np.ndarray]]:
    """``scipy.sparse.save_npz``'s arrays of the one-hot CSR matrix ``(C, H*W)`` of a channel map.

    The same arrays (dtypes, order, sorted indices) as :func:`imis.data.formats.imed.write_sample`
    computes from a dense ``(C, H, W)`` stack, so the files are byte-identical; one stable sort of the
    channel ids instead of a scan of ``C * H * W`` booleans (about 30x faster for 100+ labels).
    """
    flat = chmap.ravel()
    order = np.argsort(flat, kind="stable")  # pixels grouped by channel, ascending within each
    n_bg = int(np.count_nonzero(flat < 0))
    indices = order[n_bg:].astype(np.int32)
    per_channel = (
        np.bincount(flat[order[n_bg:]], minlength=n_channels) if indices.size else np.zeros(n_channels, int)
    )
    indptr = np.zeros(n_channels + 1, dtype=np.int32)
    np.cumsum(per_channel, out=indptr[1:])
    return [
        ("indices", indices),
        ("indptr", indptr),
        ("format", np.asarray(b"csr")),
        ("shape", np.asarray((n_channels, flat.size), dtype=np.int64)),
        ("data", np.ones(indices.size, dtype=np.int32)),
    ]


def write_slice(
    root: Path, stem: str, image: np.ndarray, chmap: np.ndarray, n_channels: int
) -> dict[str, str]:
    """Write one image and its one-hot masks (given as a channel map) in the IMed-361M layout.

    Produces the same files, byte for byte, and the same entry as
    ``imed.write_sample(root, stem, image, masks)`` with ``masks[c] = chmap == c``, through the IMed
    module's own writers (:func:`~imis.data.formats.imed.write_png`, ``write_npz``, ``label_filename``).
    """
    from imis.data.formats import imed

    h, w = chmap.shape
    entry = {"image": f"image/{stem}.png", "label": f"label/{imed.label_filename(stem, n_channels, h, w)}"}
    imed.write_png(root / entry["image"], image)
    imed.write_npz(root / entry["label"], _csr_arrays(chmap, n_channels))
    return entry


def _new_counts() -> dict[str, int]:
    return {
        "slices": 0,
        "slices_kept": 0,
        "slices_excluded_aspect_ratio": 0,
        "slices_excluded_no_mask": 0,
        "slices_excluded_duplicate": 0,
        "masks_kept": 0,
        "masks_excluded_small": 0,
        "masks_excluded_component_limit": 0,
        "labels_split": 0,
    }


def process_case(task: CaseTask) -> CaseResult:
    """Prepare one case; never raises for a bad case (the cause goes into the result)."""
    case = task.source.case
    try:
        if task.single_thread:
            _single_thread()
        return _process_case(task)
    except ImisError as exc:
        return CaseResult(case, ok=False, cause=str(exc))
    except MemoryError:
        return CaseResult(case, ok=False, cause=f"case {case}: out of memory")
    except Exception as exc:  # an unexpected failure of one case must not stop the run
        msg = " ".join(str(exc).split())[:300]
        return CaseResult(case, ok=False, cause=f"case {case}: internal error {type(exc).__name__}: {msg}")


def _single_thread() -> None:
    with contextlib.suppress(Exception):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _process_case(task: CaseTask) -> CaseResult:
    src, cfg, layout = task.source, task.config, task.layout
    case = src.case
    if not valid_case_id(case):
        raise InputError(f"case {case!r}: case ids become file names; use letters, digits and ._+- only")
    if src.label is None:
        raise InputError(f"case {case}: has no label map")
    root = Path(task.out)
    stamps = input_stamps(src, cfg.channels)  # before reading: a file changed meanwhile is redone next time
    images, label = load_case(src, cfg.channels)
    _check_pair(images, label, case)
    lab = label_values(label, f"case {case}: {label.source}")
    record: dict[str, Any] = {
        "case": case,
        "fingerprint": task.fingerprint,
        "inputs": stamps,
        "images": [src.rel(src.images[ch]) for ch in cfg.channels],
        "label": src.rel(src.label),
    }
    present = np.unique(lab)
    present = present[present != 0]
    if present.size == 0:
        cause = f"case {case}: label map {label.source} is empty (no foreground voxel)"
        if cfg.empty_labels == "error":
            raise InputError(cause + "; fix or remove the case, or set empty_labels: skip")
        record.update(status="skipped", reason=cause, counts=_new_counts(), slices=[])
        _write_atomic(root / CASES_DIR / f"{case}.json", _json_bytes(record))
        return CaseResult(case, ok=True, skipped=cause)
    unknown = sorted(
        {int(v) for v in present} - layout.values - task.named_values - _ignored_values(cfg, present)
    )
    if unknown:
        raise InputError(
            f"case {case}: label map {label.source} holds value(s) {unknown} that the source's labels "
            "do not name; add them to 'labels' (or 'ignore_labels') in the configuration"
        )
    if lab.dtype.itemsize > 4 or lab.dtype.kind == "i":
        lab = lab.astype(np.uint32 if int(present.max()) >= 65536 else np.uint16)

    kind = images[0].kind
    shape = tuple(int(s) for s in label.spatial_shape)
    geom = images[0].geometry
    axes = ("2d",) if kind == "2d" else cfg.axes
    min_frac = exact(cfg.min_mask_fraction)
    max_ratio = exact(cfg.max_aspect_ratio)
    plan = _Plan.of(layout)
    n_channels = len(layout.channels)
    lut = np.full(
        max(int(present.max()), max(layout.values)) + 1,
        -1,
        dtype=np.int16 if n_channels < 32767 else np.int32,
    )
    counts = _new_counts()
    slices: list[dict] = []
    geo = {"shape": list(shape), "spacing": list(geom.spacing), "origin": list(geom.origin)}
    geo["direction"] = [list(r) for r in geom.direction]
    record.update(status="done", kind=kind, **geo)
    windows = []
    for pos, (img, ch) in enumerate(zip(images, cfg.channels, strict=True)):
        modality = task.modality[pos]
        if img.is_rgb and img.array.dtype == np.uint8:
            win = IntensityWindow("none", 0.0, 255.0)
        else:
            win = choose_window(img.array, cfg.window_for(modality), cfg.percentiles)
        windows.append(win.to_json())
        vol = to_uint8(img.array, win)
        channel = ch if len(cfg.channels) > 1 else None
        seen: set[tuple[str, str]] = (
            set()
        )  # (image, masks) digests of the kept slices (drop_duplicate_slices)
        slice_iter: Iterable[tuple[str, int]] = (
            [("2d", 0)] if kind == "2d" else iter_slices(shape, axes, cfg.slice_step)
        )
        for axis, index in slice_iter:
            lab2 = take_slice(lab, axis, index)
            counts["slices"] += 1
            h, w = lab2.shape
            if not aspect_ratio_ok(h, w, max_ratio):
                counts["slices_excluded_aspect_ratio"] += 1
                continue
            chmap, mrec = _slice_channels(lab2, plan, lut, cfg, min_frac, counts)
            if chmap is None:
                counts["slices_excluded_no_mask"] += 1
                continue
            gray = take_slice(vol, axis, index)
            digest = image_digest(gray)
            if cfg.drop_duplicate_slices:
                key = (digest, hashlib.sha1(f"{chmap.shape}".encode() + chmap.tobytes()).hexdigest())
                if key in seen:
                    counts["slices_excluded_duplicate"] += 1
                    continue
                seen.add(key)
            image = gray if img.is_rgb or not cfg.rgb else _rgb(gray)
            stem = slice_stem(case, axis, index, channel)
            entry = write_slice(root, stem, image, chmap, n_channels)
            counts["slices_kept"] += 1
            counts["masks_kept"] += len(mrec)
            slices.append(
                {
                    "id": stem,
                    **{k: v for k, v in entry.items()},
                    "case": case,
                    "source": record["images"][pos],
                    "label_source": record["label"],
                    "channel": ch,
                    "modality": modality,
                    "axis": axis,
                    "index": index,
                    **geo,
                    "slice_origin": slice_origin(geom, shape, axis, index),
                    "window": windows[-1],
                    "size": [h, w],
                    "masks": mrec,
                    "digest": digest,
                }
            )
    record.update(windows=windows, counts=counts, slices=slices)
    _write_atomic(
        root / CASES_DIR / f"{case}.json", _json_bytes(record, indent=None)
    )  # the done-marker, last
    return CaseResult(case, ok=True, kept=counts["slices_kept"])


def _ignored_values(cfg: PrepareConfig, present: np.ndarray) -> set[int]:
    return {int(v) for v in present if cfg.ignores(int(v))}


# ---------------------------------------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------------------------------------
def _run_serial(tasks: list[CaseTask]) -> Iterator[CaseResult]:
    for t in tasks:
        yield process_case(t)


def _run_pool(tasks: list[CaseTask], workers: int) -> Iterator[CaseResult]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["imis.data.prepare.pipeline"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(process_case, t): t for t in tasks}
        try:
            for fut in as_completed(futures):
                case = futures[fut].source.case
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    yield CaseResult(
                        case,
                        ok=False,
                        cause=f"case {case}: a worker process died (out of memory?); rerun to retry",
                    )
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _run_ray(tasks: list[CaseTask], workers: int | None) -> Iterator[CaseResult]:
    try:
        import ray
    except ImportError:
        raise InputError(
            "--executor ray needs Ray, an optional dependency: pip install ray "
            "(on every node of the cluster, with imis)"
        ) from None
    started = False
    if not ray.is_initialized():
        # Connects to the cluster named by RAY_ADDRESS (or `ray start`'s), else starts a local instance.
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(process_case)
        limit = workers if workers and workers > 0 else len(tasks)
        queue = list(tasks)
        pending: dict[Any, CaseTask] = {}
        while queue or pending:
            while queue and len(pending) < limit:
                t = queue.pop(0)
                pending[remote.remote(t)] = t
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                t = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # a crashed worker or node
                    msg = " ".join(str(exc).split())[:300]
                    yield CaseResult(
                        t.source.case, ok=False, cause=f"case {t.source.case}: Ray task failed: {msg}"
                    )
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    """The outcome of a run (``summary.json`` holds the deterministic part)."""

    dataset: Path
    cases: int = 0
    cases_done: int = 0
    cases_resumed: int = 0
    cases_skipped: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=_new_counts)
    train_images: int = 0
    test_images: int = 0
    train_cases: int = 0
    test_cases: int = 0
    leakage: dict = field(default_factory=dict)
    unknown_targets: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kept_this_run: int = 0  # images written by this run (resumed cases excluded)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {
            "cases": self.cases,
            "cases_done": self.cases_done,
            "cases_failed": len(self.failures),
            "cases_skipped": self.cases_skipped,
            **self.counts,
            "train_cases": self.train_cases,
            "test_cases": self.test_cases,
            "train_images": self.train_images,
            "test_images": self.test_images,
            "unknown_targets": self.unknown_targets,
            "leakage": self.leakage,
            "failures": self.failures,
        }

    def lines(self) -> list[str]:
        c = self.counts
        rate = self.kept_this_run / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"dataset: {self.dataset}",
            f"cases: {self.cases} ({self.cases_done} done, {self.cases_resumed} already done before this run, "
            f"{len(self.cases_skipped)} skipped, {len(self.failures)} failed)",
            f"slices: {c['slices']} seen, {c['slices_kept']} kept; excluded: {c['slices_excluded_aspect_ratio']} "
            f"aspect ratio > max, {c['slices_excluded_no_mask']} no mask left"
            + (
                f", {c['slices_excluded_duplicate']} duplicates" if c.get("slices_excluded_duplicate") else ""
            ),
            f"masks: {c['masks_kept']} kept; excluded: {c['masks_excluded_small']} below the minimum foreground, "
            f"{c['masks_excluded_component_limit']} beyond max_components",
            f"split: {self.train_images} training images ({self.train_cases} cases), {self.test_images} test "
            f"images ({self.test_cases} cases)",
        ]
        moved = self.leakage.get("test_images_moved_to_training", 0)
        if moved:
            out.append(
                f"leakage: {moved} test image(s) identical to training/other-dataset images moved to training"
            )
        if self.unknown_targets:
            out.append(f"targets not in the vocabulary (group Unknown): {', '.join(self.unknown_targets)}")
        for s in self.cases_skipped:
            out.append(f"skipped: {s['cause']}")
        for f in self.failures:
            out.append(f"FAILED: {f['cause']}")
        out.append(f"time: {self.seconds:.1f} s ({self.kept_this_run} images written, {rate:.1f} per second)")
        return out


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _modality_of(info: SourceInfo, cfg: PrepareConfig) -> tuple[str, ...]:
    out = []
    for ch in cfg.channels:
        m = cfg.modality or info.modality.get(ch) or info.modality.get(0) or "unknown"
        out.append(str(m).strip().lower())
    return tuple(out)


def _load_vocabulary(cfg: PrepareConfig, base: Path | None):
    from imis.data.vocabulary import Vocabulary

    if cfg.vocabulary is None:
        return Vocabulary.builtin()
    path = Path(cfg.vocabulary)
    if not path.is_absolute() and base is not None:
        path = base / path
    return Vocabulary.from_yaml(path)


def _clean_temporaries(root: Path) -> int:
    n = 0
    for d in (root, root / "image", root / "label", root / "imask", root / CASES_DIR):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if _TMP_RE.match(p.name) and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    f = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"{root}: another `imis prepare` is writing this dataset; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        f.close()


def _settings(source: str, info: SourceInfo, cfg: PrepareConfig, layout: Layout, modality: tuple[str, ...]):
    case_cfg = {
        k: v
        for k, v in cfg.to_json().items()
        if k not in _SPLIT_KEYS and not (k in _LATER_KEYS and v == _LATER_KEYS[k])
    }
    fingerprint = _fingerprint(
        {"version": FORMAT_VERSION, "config": case_cfg, "layout": layout.to_json(), "modality": modality}
    )
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "source": str(Path(source).resolve()),
        "source_kind": info.kind,
        "modality": list(modality),
        "config": cfg.to_json(),
        "layout": layout.to_json(),
    }


def _check_out_folder(root: Path, settings: dict) -> None:
    """Refuse to write into a folder that is not ours or was prepared with other per-case settings."""
    path = root / SETTINGS
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("fingerprint") != settings["fingerprint"]:
            diff = sorted(
                k
                for k in set(old.get("config", {})) | set(settings["config"])
                if old.get("config", {}).get(k) != settings["config"].get(k) and k not in _SPLIT_KEYS
            )
            if old.get("layout") != settings["layout"]:
                diff.append("labels/vocabulary (channel layout)")
            if old.get("modality") != settings["modality"]:
                diff.append("modality")
            raise InputError(
                f"{root}: was prepared with different settings ({', '.join(diff) or 'format version'}); "
                "resume with the same settings, or choose a new --out folder"
            )
    elif root.exists() and any(p.name != LOCK for p in root.iterdir()):
        raise InputError(
            f"{root}: exists and is not a dataset made by `imis prepare` (no {SETTINGS}); choose a new or "
            "empty --out folder"
        )


def _done_record(root: Path, case: str, fingerprint: str) -> dict | None:
    path = root / CASES_DIR / f"{case}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("fingerprint") != fingerprint or rec.get("case") != case:
        return None
    return rec


def input_stamps(case: CaseSource, channels: tuple[int, ...]) -> dict[str, list[int]]:
    """Size and modification time of a case's input files: a finished case is redone when they change."""
    paths = [case.images[ch] for ch in channels if ch < len(case.images)]
    if case.msd is not None and len(case.images) == 1:
        paths = [case.images[0]]  # one (possibly 4D) file holds every channel
    if case.label is not None:
        paths.append(case.label)
    out = {}
    for p in paths:
        try:
            st = os.stat(p)
            out[case.rel(p)] = [int(st.st_size), int(st.st_mtime_ns)]
        except OSError:
            out[case.rel(p)] = [-1, -1]
    return out


def _remove_case_files(root: Path, rec: dict) -> None:
    for s in rec.get("slices", []):
        for key in ("image", "label", "imask"):
            if s.get(key):
                with contextlib.suppress(OSError):
                    (root / s[key]).unlink()
    with contextlib.suppress(OSError):
        (root / CASES_DIR / f"{rec['case']}.json").unlink()


def prepare(
    source: str | os.PathLike,
    out: str | os.PathLike,
    config: PrepareConfig | None = None,
    *,
    workers: int | None = None,
    executor: str = "local",
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> PrepareSummary:
    """Prepare SOURCE into the dataset folder ``out`` (see the module documentation).

    ``workers``: processes on this machine (``None``/1: in this process); with ``executor="ray"`` the
    largest number of cases in flight (default: as many as the cluster takes). ``progress``: show a tqdm
    bar (``None``: when stderr is a terminal). Returns the summary; failed cases are in
    ``summary.failures`` (the run itself only raises for problems with the source, the configuration or
    the output folder).
    """
    t0 = time.perf_counter()
    cfg = config or PrepareConfig()
    if executor not in ("local", "ray"):
        raise InputError(f"--executor must be 'local' or 'ray', got {executor!r}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    root = Path(out)
    info = list_source(source)
    if not info.cases:
        raise InputError(f"{source}: holds no cases")
    labels = dict(info.labels)
    labels.update(cfg.labels)
    if not labels:
        raise InputError(f"{source}: names no labels; give them under 'labels' in the configuration")
    vocab = _load_vocabulary(cfg, None)
    layout = build_layout(labels, cfg, vocab)
    if not layout.channels:
        raise InputError(f"{source}: no label left to prepare (all ignored or background)")
    modality = _modality_of(info, cfg)
    settings = _settings(str(source), info, cfg, layout, modality)
    _check_out_folder(root, settings)
    summary = PrepareSummary(dataset=root, cases=len(info.cases))
    summary.unknown_targets = sorted({ch.key for ch in layout.channels if ch.group == "Unknown"})

    with _locked(root):
        _clean_temporaries(root)
        _write_atomic(root / SETTINGS, _json_bytes(settings))
        fingerprint = settings["fingerprint"]
        todo = []
        for c in info.cases:
            rec = _done_record(root, c.case, fingerprint)
            if rec is not None and rec.get("inputs") == input_stamps(c, cfg.channels):
                summary.cases_resumed += 1
                continue
            if rec is not None:  # its source files changed since: redo it from scratch
                _remove_case_files(root, rec)
            todo.append(c)
        n_workers = workers or (None if executor == "ray" else 1)
        tasks = [
            CaseTask(
                c,
                str(root),
                cfg,
                layout,
                modality,
                fingerprint,
                named_values=frozenset(labels),
                single_thread=(n_workers or 2) > 1,
            )
            for c in todo
        ]
        if not tasks:
            results: Iterable[CaseResult] = ()
        elif executor == "ray":
            results = _run_ray(tasks, n_workers)
        elif n_workers and n_workers > 1 and len(tasks) > 1:
            results = _run_pool(tasks, min(n_workers, len(tasks)))
        else:
            results = _run_serial(tasks)
        failures = []
        bar = _progress_bar(len(info.cases), summary.cases_resumed, progress)
        kept = 0
        try:
            for r in results:
                if not r.ok:
                    failures.append({"case": r.case, "cause": r.cause})
                    if log is not None:
                        bar.write(f"FAILED: {r.cause}", file=sys.stderr)
                kept += r.kept
                bar.set_postfix(slices=kept, failed=len(failures), refresh=False)
                bar.update(1)
        finally:
            bar.close()
        summary.failures = sorted(failures, key=lambda f: f["case"])
        summary.kept_this_run = kept
        _finalize(root, info, cfg, layout, modality, fingerprint, summary)
    summary.seconds = time.perf_counter() - t0
    if log is not None:
        for line in summary.lines():
            log(line)
    return summary


def _progress_bar(total: int, initial: int, progress: bool | None):
    from tqdm import tqdm

    disable = None if progress is None else not progress
    return tqdm(total=total, initial=initial, unit="case", desc="prepare", disable=disable, file=sys.stderr)


def _finalize(
    root: Path,
    info: SourceInfo,
    cfg: PrepareConfig,
    layout: Layout,
    modality: tuple[str, ...],
    fingerprint: str,
    summary: PrepareSummary,
) -> None:
    """Split, leakage check, dataset.json, manifest.jsonl and summary.json from every finished case."""
    from imis.data.formats import imed

    records = {}
    for c in sorted(info.cases, key=lambda c: c.case):
        rec = _done_record(root, c.case, fingerprint)
        if rec is not None:
            records[c.case] = rec
    summary.cases_done = len(records)
    counts = _new_counts()
    for rec in records.values():
        for k in counts:
            counts[k] += int(rec.get("counts", {}).get(k, 0))
        if rec.get("status") == "skipped":
            summary.cases_skipped.append({"case": rec["case"], "cause": rec.get("reason", "")})
    summary.counts = counts

    per_case = {case: len(rec["slices"]) for case, rec in records.items()}
    train_cases, test_cases = split_cases(per_case, cfg.test_fraction, cfg.max_test_images, cfg.seed)
    split_of = {c: "train" for c in train_cases} | {c: "test" for c in test_cases}
    items = [
        (s["id"], case, split_of[case], s["digest"]) for case, rec in records.items() for s in rec["slices"]
    ]
    external: dict[str, list[str]] = {}
    for other in cfg.leakage_datasets:
        for digest, where in dataset_digests(other).items():
            external.setdefault(digest, []).extend(where)
    leak = check_leakage(items, external)
    moved = set(leak.moved)
    summary.leakage = leak.to_json()

    training, test, lines = [], [], []
    for case, rec in records.items():
        for s in rec["slices"]:
            split = "train" if s["id"] in moved else split_of[case]
            entry = {k: s[k] for k in ("image", "label", "imask") if s.get(k) is not None}
            entry.update(case=case, axis=s["axis"], slice=s["index"])  # read back as Sample.provenance
            (test if split == "test" else training).append(entry)
            lines.append(json.dumps({**s, "split": split}, ensure_ascii=False))
    summary.train_images, summary.test_images = len(training), len(test)
    summary.train_cases = sum(1 for c in train_cases if per_case.get(c))
    summary.test_cases = len(test_cases)

    name = cfg.name or root.resolve().name
    mods = {str(i): m for i, m in enumerate(modality)}
    description = cfg.description or f"{modality[0]}_{name}"
    extra = {
        "imis": {
            "format_version": FORMAT_VERSION,
            "manifest": MANIFEST,
            "summary": SUMMARY,
            "source": info.name,
            "targets": {
                str(i + 1): {
                    "name": ch.name,
                    "display": ch.display,
                    "group": ch.group,
                    "laterality": ch.laterality,
                    "component": ch.component,
                    "source_values": list(ch.values),
                }
                for i, ch in enumerate(layout.channels)
            },
            "split": {
                "seed": cfg.seed,
                "test_fraction": cfg.test_fraction,
                "max_test_images": cfg.max_test_images,
                "test_cases": test_cases,
            },
        }
    }
    _write_atomic(root / MANIFEST, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    _write_atomic(root / SUMMARY, _json_bytes(summary.to_json()))
    imed.write_dataset_json(root, name, description, mods, layout.labels(), training, test, extra)
