"""`imis prepare`: raw collections -> an IMIS dataset in the IMed-361M layout, plus our manifest.

One **work unit per case** (:func:`imis.data.prepare.case.process_case`), run in this process, in a process pool
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

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from imis.data.prepare.case import CaseResult, CaseTask, input_stamps
from imis.data.prepare.config import PrepareConfig
from imis.data.prepare.executors import run_pool, run_ray, run_serial
from imis.data.prepare.finalize import PrepareSummary, finalize
from imis.data.prepare.folder import (
    SETTINGS,
    check_out_folder,
    clean_temporaries,
    done_record,
    json_bytes,
    locked,
    remove_case_files,
    run_settings,
    write_atomic,
)
from imis.data.prepare.layout import build_layout
from imis.data.prepare.sources import SourceInfo, list_source
from imis.errors import InputError

__all__ = ["prepare"]


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
    settings = run_settings(str(source), info, cfg, layout, modality)
    check_out_folder(root, settings)
    summary = PrepareSummary(dataset=root, cases=len(info.cases))
    summary.unknown_targets = sorted({ch.key for ch in layout.channels if ch.group == "Unknown"})

    with locked(root):
        clean_temporaries(root)
        write_atomic(root / SETTINGS, json_bytes(settings))
        fingerprint = settings["fingerprint"]
        todo = []
        for c in info.cases:
            rec = done_record(root, c.case, fingerprint)
            if rec is not None and rec.get("inputs") == input_stamps(c, cfg.channels):
                summary.cases_resumed += 1
                continue
            if rec is not None:  # its source files changed since: redo it from scratch
                remove_case_files(root, rec)
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
            results = run_ray(tasks, n_workers)
        elif n_workers and n_workers > 1 and len(tasks) > 1:
            results = run_pool(tasks, min(n_workers, len(tasks)))
        else:
            results = run_serial(tasks)
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
        finalize(root, info, cfg, layout, modality, fingerprint, summary)
    summary.seconds = time.perf_counter() - t0
    if log is not None:
        for line in summary.lines():
            log(line)
    return summary


def _progress_bar(total: int, initial: int, progress: bool | None):
    from tqdm import tqdm

    disable = None if progress is None else not progress
    return tqdm(total=total, initial=initial, unit="case", desc="prepare", disable=disable, file=sys.stderr)
