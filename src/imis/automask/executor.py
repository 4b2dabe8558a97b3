"""Running automask over the images of a dataset: in this process, in N local processes, or on Ray.

Each worker (the process itself, a pool process, a Ray actor) loads the model once and then takes
one image at a time: read image (+ labels) -> `automask_image` -> id map and record written into the
dataset folder. A failing image gives an `ImageResult` naming the file and the cause; the others go on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imis.errors import ImisError, InputError

__all__ = ["ImageResult", "ImageTask", "ModelRef", "Worker", "run_tasks"]


@dataclass(frozen=True)
class ModelRef:
    """How a worker loads its model (picklable)."""

    name: str
    checkpoint: str | None = None
    device: str = "cpu"
    threads: int | None = None
    backend: str = "torch"
    precision: str = "auto"


@dataclass(frozen=True)
class ImageTask:
    root: str
    stem: str
    image: str
    label: str | None  # None: no GT QC for this image
    label_names: tuple[str, ...]
    settings: Any  # AutomaskSettings
    fingerprint: str
    split: str


@dataclass
class ImageResult:
    stem: str
    ok: bool
    cause: str = ""
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)


class Worker:
    """One loaded model that processes images."""

    def __init__(self, ref: ModelRef) -> None:
        import torch

        from imis.automask.loading import load_automask_model
        from imis.automask.memory import retain_freed_memory

        retain_freed_memory()  # a batch job with the same working set from one batch to the next
        if ref.threads:
            torch.set_num_threads(ref.threads)
        self.model = load_automask_model(ref.name, ref.checkpoint, ref.device, ref.backend, ref.precision)

    def run(self, task: ImageTask) -> ImageResult:
        t0 = time.perf_counter()
        try:
            counts = self._run(task)
        except ImisError as exc:
            return ImageResult(task.stem, False, str(exc), time.perf_counter() - t0)
        except Exception as exc:  # a bug or an unforeseen file problem: name the image, go on
            last = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
            return ImageResult(
                task.stem,
                False,
                f"{task.image}: {type(exc).__name__}: {exc} (at {where})",
                time.perf_counter() - t0,
            )
        return ImageResult(task.stem, True, "", time.perf_counter() - t0, counts)

    def _run(self, task: ImageTask) -> dict:
        from imis.automask.pipeline import automask_image
        from imis.automask.store import AutomaskStore
        from imis.data.formats import imed

        image = imed.read_image(task.image)
        gt = None
        if task.label is not None:
            gt = imed.read_label(task.label)
            if gt.shape[1:] != image.shape[:2]:
                raise InputError(
                    f"{task.label}: label masks of size {gt.shape[1:]} do not match the image "
                    f"{task.image} of size {image.shape[:2]}"
                )
        res = automask_image(self.model, image, task.settings, gt, list(task.label_names), name=task.image)
        record = {
            "image": task.stem,
            "split": task.split,
            "model": self.model.name,
            "size": list(res.id_map.shape),
            "gt_qc": gt is not None,
            "counts": res.counts,
            "ids": res.ids,
        }
        AutomaskStore(task.root, task.fingerprint).write(task.stem, res.id_map, record)
        return res.counts


_WORKER: Worker | None = None


def _pool_init(ref: ModelRef) -> None:
    global _WORKER
    _WORKER = Worker(ref)


def _pool_run(task: ImageTask) -> ImageResult:
    assert _WORKER is not None
    return _WORKER.run(task)


def _run_pool(tasks: list[ImageTask], ref: ModelRef, workers: int) -> Iterator[ImageResult]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_init, initargs=(ref,)) as pool:
        futures = {pool.submit(_pool_run, t): t for t in tasks}
        try:
            for fut in as_completed(futures):
                t = futures[fut]
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    yield ImageResult(
                        t.stem, False, f"{t.image}: a worker process died (out of memory?); rerun"
                    )
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _run_ray(
    tasks: list[ImageTask], ref: ModelRef, workers: int | None, gpus: float
) -> Iterator[ImageResult]:
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray, an optional dependency: pip install ray") from None
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        started = True
    try:
        actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(Worker)
        n = workers or max(1, int(ray.available_resources().get("CPU", 1)))
        actors = [actor_cls.remote(ref) for _ in range(min(n, len(tasks)))]
        queue = list(tasks)
        pending: dict[Any, tuple[Any, ImageTask]] = {}
        idle = list(actors)
        while queue or pending:
            while queue and idle:
                a, t = idle.pop(), queue.pop(0)
                pending[a.run.remote(t)] = (a, t)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref_ in done:
                a, t = pending.pop(ref_)
                idle.append(a)
                try:
                    yield ray.get(ref_)
                except Exception as exc:  # a crashed actor or node
                    msg = " ".join(str(exc).split())[:300]
                    yield ImageResult(t.stem, False, f"{t.image}: Ray task failed: {msg}")
    finally:
        if started:
            ray.shutdown()


def run_tasks(
    tasks: list[ImageTask],
    ref: ModelRef,
    executor: str = "local",
    workers: int | None = None,
    gpus: float = 0.0,
) -> Iterator[ImageResult]:
    """Results in completion order (local: task order)."""
    if not tasks:
        return iter(())
    if executor == "ray":
        return _run_ray(tasks, ref, workers, gpus)
    if workers and workers > 1 and len(tasks) > 1:
        return _run_pool(tasks, ref, min(workers, len(tasks)))
    worker = Worker(ref)
    return (worker.run(t) for t in tasks)


def summary_rows(results: list[ImageResult]) -> dict:
    ok = [r for r in results if r.ok]
    masks = [r.counts.get("masks", 0) for r in ok]
    gt = sum(r.counts.get("from_gt", 0) for r in ok)
    return {
        "images": len(ok),
        "masks/image": f"{np.mean(masks):.1f}" if masks else "-",
        "% from GT": f"{100 * gt / max(sum(masks), 1):.1f}" if masks else "-",
        "s/image": f"{np.mean([r.seconds for r in ok]):.2f}" if ok else "-",
        "failed": len(results) - len(ok),
    }
