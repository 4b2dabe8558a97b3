"""Where the cases of `imis prepare` run: in this process, in a local process pool, or as Ray tasks;
each yields one :class:`CaseResult` per case, a crashed worker included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from imis.data.prepare.case import CaseResult, CaseTask, process_case
from imis.errors import InputError


def run_serial(tasks: list[CaseTask]) -> Iterator[CaseResult]:
    for t in tasks:
        yield process_case(t)


def run_pool(tasks: list[CaseTask], workers: int) -> Iterator[CaseResult]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["imis.data.prepare.case"])
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


def run_ray(tasks: list[CaseTask], workers: int | None) -> Iterator[CaseResult]:
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
