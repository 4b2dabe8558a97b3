"""`run_automask`: every image of a dataset split, resumable, with a progress bar and a summary."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imis.automask.executor import ImageResult, ImageTask, ModelRef, run_tasks, summary_rows
from imis.automask.settings import AutomaskSettings
from imis.automask.store import AutomaskStore
from imis.errors import InputError

__all__ = ["AutomaskSummary", "run_automask", "weights_digest"]

SPLITS = ("train", "test", "all")


@dataclass
class AutomaskSummary:
    dataset: Path
    images: int = 0
    resumed: int = 0
    results: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if not r.ok]

    def row(self) -> dict:
        row = summary_rows(self.results)
        row = {"images": self.images, "done now": row.pop("images"), "skipped (done)": self.resumed, **row}
        return row


def weights_digest(name: str, checkpoint: str | None) -> str:
    """sha256 (16 hex) of the weight file the model loads: part of the run's fingerprint."""
    from imis.models.registry import get_spec

    path = Path(checkpoint) if checkpoint else get_spec(name).weights_path()
    if path is None or not Path(path).is_file():
        return "none"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _tasks(ds, store: AutomaskStore, split: str, settings: AutomaskSettings, overwrite: bool):
    from imis.data.formats import imed

    entries = ds.entries if split == "all" else ds.split(split)
    tasks, done, released = [], 0, []
    for e in entries:
        stem = e.stem
        if not overwrite and store.is_done(stem):
            done += 1
            continue
        if not overwrite and e.imask is not None and store.read_record(stem) is None:
            try:
                imed.imask_path(e.imask)
                released.append(stem)
            except InputError:
                pass  # the entry names an imask that does not exist: generate it
        names = tuple(ds.label_names(imed.label_shape(e.label)[0])) if settings.gt_qc else ()
        label = str(e.label) if settings.gt_qc else None
        tasks.append(
            ImageTask(str(ds.root), stem, str(e.image), label, names, settings, store.fingerprint, e.split)
        )
    return tasks, done, released


def run_automask(
    dataset: str | Path,
    settings: AutomaskSettings,
    model: str = "imis-lite",
    checkpoint: str | None = None,
    split: str = "all",
    workers: int | None = None,
    executor: str = "local",
    overwrite: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    gpus: float = 0.0,
    progress: bool | None = None,
    backend: str = "torch",
    precision: str = "auto",
    log: Callable[[str], None] | None = None,
) -> AutomaskSummary:
    """Generate ``imask/`` for the entries of ``split`` of the IMed-361M dataset folder ``dataset``."""
    from imis.data.formats import imed

    t0 = time.perf_counter()
    if split not in SPLITS:
        raise InputError(f"--split must be train, test or all, got {split!r}")
    if executor not in ("local", "ray"):
        raise InputError(f"--executor must be local or ray, got {executor!r}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    ds = imed.read_dataset(dataset)
    from imis.automask.loading import runtime_tag

    runtime = runtime_tag(model, backend, precision, device)
    fingerprint = settings.fingerprint(model, weights_digest(model, checkpoint), runtime)
    store = AutomaskStore(ds.root, fingerprint)
    tasks, done, released = _tasks(ds, store, split, settings, overwrite)
    if released:
        raise InputError(
            f"{ds.root}: {len(released)} image(s) already have an imask not made by `imis automask` "
            f"(e.g. {released[0]}); pass --overwrite to replace them"
        )
    stale = [] if overwrite else store.stale([t.stem for t in tasks])
    if stale:
        raise InputError(
            f"{ds.root}: {len(stale)} imask(s) were generated with other settings or weights "
            f"(e.g. {stale[0]}); pass --overwrite to regenerate them"
        )
    store.clean_temporaries()
    store.write_settings(
        {
            **settings.to_json(),
            "model": model,
            "checkpoint": checkpoint,
            "runtime": runtime,
            "fingerprint": fingerprint,
        }
    )
    summary = AutomaskSummary(Path(ds.root), images=len(tasks) + done, resumed=done)
    ref = ModelRef(model, checkpoint, device, threads, backend, precision)
    bar = _bar(summary.images, done, progress)
    try:
        for r in run_tasks(tasks, ref, executor, workers, gpus):
            summary.results.append(r)
            if not r.ok:
                bar.write(f"FAILED: {r.cause}", file=sys.stderr)
            bar.set_postfix(masks=r.counts.get("masks", 0), failed=len(summary.failures), refresh=False)
            bar.update(1)
    finally:
        bar.close()
    store.update_dataset_json({e.stem for e in ds.entries})
    summary.seconds = time.perf_counter() - t0
    if log is not None:
        log(f"automask: {summary.images} image(s) in {ds.root} ({len(summary.failures)} failed)")
    return summary


def _bar(total: int, initial: int, progress: bool | None):
    from tqdm import tqdm

    disable = None if progress is None else not progress
    # tqdm's rate is images/s ("img/s") once it has two updates
    return tqdm(total=total, initial=initial, unit="img", desc="automask", disable=disable, file=sys.stderr)
