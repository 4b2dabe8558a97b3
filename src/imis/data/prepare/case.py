"""The work unit of `imis prepare`: one case, read, checked, windowed, sliced, filtered and written
(see :mod:`imis.data.prepare.pipeline`); run in this process, a pool worker or a Ray task."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imis.data.prepare.channels import ChannelPlan, slice_channels, write_slice
from imis.data.prepare.config import PrepareConfig, unnamed_values_error
from imis.data.prepare.filters import aspect_ratio_ok, exact
from imis.data.prepare.folder import CASES_DIR, json_bytes, write_atomic
from imis.data.prepare.intensity import IntensityWindow, choose_window, to_uint8
from imis.data.prepare.layout import Layout
from imis.data.prepare.slicing import iter_slices, slice_origin, slice_stem, take_slice, valid_case_id
from imis.data.prepare.sources import CaseSource, label_values, load_case
from imis.data.prepare.split import image_digest
from imis.errors import ImisError, InputError
from imis.io import ImageData


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


def new_counts() -> dict[str, int]:
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
    """Read and check the case, then slice every chosen channel; the case record is written last."""
    src, cfg = task.source, task.config
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
        record.update(status="skipped", reason=cause, counts=new_counts(), slices=[])
        write_atomic(root / CASES_DIR / f"{case}.json", json_bytes(record))
        return CaseResult(case, ok=True, skipped=cause)
    lab = _checked_labels(task, label, lab, present)
    counts = new_counts()
    slicer = _CaseSlicer.of(task, images[0], label, lab, present, record, counts)
    windows, slices = [], []
    for pos, (img, ch) in enumerate(zip(images, cfg.channels, strict=True)):
        win, kept = slicer.channel(pos, img, ch)
        windows.append(win)
        slices += kept
    record.update(windows=windows, counts=counts, slices=slices)
    write_atomic(root / CASES_DIR / f"{case}.json", json_bytes(record, indent=None))  # the done-marker, last
    return CaseResult(case, ok=True, kept=counts["slices_kept"])


def _checked_labels(task: CaseTask, label: ImageData, lab: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The label map with every value named by the source (or ignored), in the smallest unsigned type."""
    cfg, case = task.config, task.source.case
    unknown = sorted(
        {int(v) for v in present} - task.layout.values - task.named_values - _ignored_values(cfg, present)
    )
    if unknown:
        raise unnamed_values_error(case, label.source, unknown)
    if lab.dtype.itemsize > 4 or lab.dtype.kind == "i":
        lab = lab.astype(np.uint32 if int(present.max()) >= 65536 else np.uint16)
    return lab


@dataclass
class _CaseSlicer:
    """One case's slicing, shared by its channels: the label map, the channel plan, the filters and the
    counts, updated slice by slice."""

    task: CaseTask
    kind: str
    shape: tuple[int, ...]
    geom: Any
    geo: dict[str, Any]
    lab: np.ndarray
    plan: ChannelPlan
    lut: np.ndarray
    min_frac: Any
    max_ratio: Any
    record: dict[str, Any]
    counts: dict[str, int]

    @classmethod
    def of(cls, task, first: ImageData, label: ImageData, lab, present, record, counts) -> _CaseSlicer:
        layout = task.layout
        shape = tuple(int(s) for s in label.spatial_shape)
        geom = first.geometry
        geo = {"shape": list(shape), "spacing": list(geom.spacing), "origin": list(geom.origin)}
        geo["direction"] = [list(r) for r in geom.direction]
        record.update(status="done", kind=first.kind, **geo)
        lut = np.full(
            max(int(present.max()), max(layout.values)) + 1,
            -1,
            dtype=np.int16 if len(layout.channels) < 32767 else np.int32,
        )
        cfg = task.config
        min_frac, max_ratio = exact(cfg.min_mask_fraction), exact(cfg.max_aspect_ratio)
        plan = ChannelPlan.of(layout)
        return cls(task, first.kind, shape, geom, geo, lab, plan, lut, min_frac, max_ratio, record, counts)

    def channel(self, pos: int, img: ImageData, ch: int) -> tuple[dict[str, Any], list[dict]]:
        """Window one image channel to 8 bit and write its kept slices: (its window, their records)."""
        cfg = self.task.config
        if img.is_rgb and img.array.dtype == np.uint8:
            win = IntensityWindow("none", 0.0, 255.0)
        else:
            win = choose_window(img.array, cfg.window_for(self.task.modality[pos]), cfg.percentiles)
        vol = to_uint8(img.array, win)
        seen: set[tuple[str, str]] = (
            set()
        )  # (image, masks) digests of the kept slices (drop_duplicate_slices)
        axes = ("2d",) if self.kind == "2d" else cfg.axes
        slice_iter: Iterable[tuple[str, int]] = (
            [("2d", 0)] if self.kind == "2d" else iter_slices(self.shape, axes, cfg.slice_step)
        )
        kept = []
        for axis, index in slice_iter:
            rec = self._slice(pos, img, ch, vol, win, axis, index, seen)
            if rec is not None:
                kept.append(rec)
        return win.to_json(), kept

    def _slice(self, pos, img, ch, vol, win, axis: str, index: int, seen: set) -> dict | None:
        """Filter one slice and write it when kept: its manifest record, else None (counted)."""
        cfg, counts, case = self.task.config, self.counts, self.task.source.case
        lab2 = take_slice(self.lab, axis, index)
        counts["slices"] += 1
        h, w = lab2.shape
        if not aspect_ratio_ok(h, w, self.max_ratio):
            counts["slices_excluded_aspect_ratio"] += 1
            return None
        chmap, mrec = slice_channels(lab2, self.plan, self.lut, cfg, self.min_frac, counts)
        if chmap is None:
            counts["slices_excluded_no_mask"] += 1
            return None
        gray = take_slice(vol, axis, index)
        digest = image_digest(gray)
        if cfg.drop_duplicate_slices:
            key = (digest, hashlib.sha1(f"{chmap.shape}".encode() + chmap.tobytes()).hexdigest())
            if key in seen:
                counts["slices_excluded_duplicate"] += 1
                return None
            seen.add(key)
        image = gray if img.is_rgb or not cfg.rgb else _rgb(gray)
        stem = slice_stem(case, axis, index, ch if len(cfg.channels) > 1 else None)
        entry = write_slice(Path(self.task.out), stem, image, chmap, len(self.task.layout.channels))
        counts["slices_kept"] += 1
        counts["masks_kept"] += len(mrec)
        return {
            "id": stem,
            **entry,
            "case": case,
            "source": self.record["images"][pos],
            "label_source": self.record["label"],
            "channel": ch,
            "modality": self.task.modality[pos],
            "axis": axis,
            "index": index,
            **self.geo,
            "slice_origin": slice_origin(self.geom, self.shape, axis, index),
            "window": win.to_json(),
            "size": [h, w],
            "masks": mrec,
            "digest": digest,
        }


def _ignored_values(cfg: PrepareConfig, present: np.ndarray) -> set[int]:
    return {int(v) for v in present if cfg.ignores(int(v))}


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
