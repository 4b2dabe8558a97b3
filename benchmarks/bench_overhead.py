"""Benchmark-harness overhead: the time `imis bench` spends outside the model, as a fraction of model time.

Runs :func:`imis.bench.runner.run_bench` on btcv-demo's test split with LiteMedSAM (real weights), once
per protocol (default: ``single`` and ``iterative`` with their defaults: 9 interactions, RITM clicks,
NoC up to 20), with the model wrapped so that every ``encode`` and ``decode`` call is timed. Harness
time = time of ``run_bench`` (reading images and labels, prompt generation, click simulation,
Dice/IoU/NSD/HD95, JSONL rows, the report and figures) minus the model time. A warm-up run on one image
first keeps one-time imports out of the measurement.

The headline ``overhead_fraction`` uses CPU time of this process with one torch thread (the default
``--threads 1``), so that other jobs on a shared machine, or a process paused by someone else, do not
move it; the wall-clock fraction is given beside it. Prints one JSON line; target: harness <= 10% of
model time. Run: `.venv/bin/python benchmarks/bench_overhead.py [--protocols single,iterative]`.
"""

from __future__ import annotations

import os

# one BLAS/OpenMP thread: CPU time then counts work, not threads spinning (set before numpy/torch load)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402


class TimedModel:
    """A model whose encode/decode wall and CPU times are summed in ``wall`` and ``cpu``."""

    def __init__(self, model) -> None:
        self.model = model
        self.name, self.prompt_types = model.name, model.prompt_types
        self.wall, self.cpu, self.calls = 0.0, 0.0, 0

    def __getattr__(self, name):  # check_supported, multimask, ...
        return getattr(self.model, name)

    def _timed(self, fn, *args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c
            self.calls += 1

    def encode(self, *args, **kwargs):
        return self._timed(self.model.encode, *args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._timed(self.model.decode, *args, **kwargs)


def measure(model, data: Path, protocol: str, limit: int | None, scratch: Path) -> dict:
    from imis.bench.config import BenchConfig
    from imis.bench.runner import run_bench

    timed = TimedModel(model)
    cfg = BenchConfig(
        models=(model.name,), data=data, protocol=protocol, limit_images=limit, model_loader=lambda n: timed
    )
    w, c = time.perf_counter(), time.process_time()
    summary = run_bench(cfg, scratch / protocol, progress=False)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    n_masks = max((e["n_masks"] for e in summary["results"].get(model.name, {}).values()), default=0)
    return {
        "cpu_s": round(cpu, 2),
        "model_cpu_s": round(timed.cpu, 2),
        "harness_cpu_s": round(cpu - timed.cpu, 2),
        "overhead_fraction": round((cpu - timed.cpu) / timed.cpu, 4),
        "wall_s": round(wall, 2),
        "model_wall_s": round(timed.wall, 2),
        "overhead_fraction_wall": round((wall - timed.wall) / timed.wall, 4),
        "model_calls": timed.calls,
        "masks": n_masks,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--protocols", default="single,iterative")
    ap.add_argument("--limit-images", type=int, default=None, help="only the first N test images")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = busy time)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from imis.models.registry import load_model

    data = args.shared / "data" / "btcv-demo"
    model = load_model("litemedsam")
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        measure(model, data, protocols[0], 1, Path(tmp) / "warmup")
        for p in protocols:
            out[p] = measure(model, data, p, args.limit_images, Path(tmp))
    model_s = sum(r["model_cpu_s"] for r in out.values())
    harness_s = sum(r["harness_cpu_s"] for r in out.values())
    model_w = sum(r["model_wall_s"] for r in out.values())
    harness_w = sum(r["wall_s"] - r["model_wall_s"] for r in out.values())
    print(
        json.dumps(
            {
                "benchmark": "bench_harness_overhead",
                "data": "btcv-demo:test"
                + (f" (first {args.limit_images} images)" if args.limit_images else ""),
                "model": "litemedsam",
                "device": f"cpu x{args.threads} ({platform.processor() or platform.machine()})",
                "torch": torch.__version__,
                "overhead_fraction": round(harness_s / model_s, 4),
                "overhead_fraction_wall": round(harness_w / model_w, 4),
                "target": 0.10,
                "protocols": out,
            }
        )
    )


if __name__ == "__main__":
    main()
