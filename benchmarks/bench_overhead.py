"""Benchmark-harness overhead: the time `imis bench` spends outside the model, as a fraction of model time.

Runs :func:`imis.bench.runner.run_bench` on btcv-demo's test split with LiteMedSAM (real weights), once
per protocol (default: ``single`` and ``iterative`` with their defaults: 9 interactions, RITM clicks,
NoC up to 20), with the model wrapped so that every ``encode`` and ``decode`` call is timed. Harness
time = wall time of ``run_bench`` (reading images and labels, prompt generation, click simulation,
Dice/IoU/NSD/HD95, JSONL rows, the report and figures) minus the model time. A warm-up run on one image
first keeps one-time imports out of the measurement. Prints one JSON line; target: harness <= 10% of
model time. Run: `.venv/bin/python benchmarks/bench_overhead.py [--protocols single,iterative]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


class TimedModel:
    """A model whose encode/decode wall times are summed in ``seconds``."""

    def __init__(self, model) -> None:
        self.model = model
        self.name, self.prompt_types = model.name, model.prompt_types
        self.seconds, self.calls = 0.0, 0

    def __getattr__(self, name):  # check_supported, multimask, ...
        return getattr(self.model, name)

    def encode(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.model.encode(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1

    def decode(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.model.decode(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


def measure(model, data: Path, protocol: str, limit: int | None, scratch: Path) -> dict:
    from imis.bench.runner import BenchConfig, run_bench

    timed = TimedModel(model)
    cfg = BenchConfig(
        models=(model.name,), data=data, protocol=protocol, limit_images=limit, model_loader=lambda n: timed
    )
    t = time.perf_counter()
    summary = run_bench(cfg, scratch / protocol, progress=False)
    wall = time.perf_counter() - t
    n_masks = max((e["n_masks"] for e in summary["results"].get(model.name, {}).values()), default=0)
    return {
        "wall_s": round(wall, 2),
        "model_s": round(timed.seconds, 2),
        "harness_s": round(wall - timed.seconds, 2),
        "overhead_fraction": round((wall - timed.seconds) / timed.seconds, 4),
        "model_calls": timed.calls,
        "masks": n_masks,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--protocols", default="single,iterative")
    ap.add_argument("--limit-images", type=int, default=None, help="only the first N test images")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
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
    model_s = sum(r["model_s"] for r in out.values())
    harness_s = sum(r["harness_s"] for r in out.values())
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
                "target": 0.10,
                "protocols": out,
            }
        )
    )


if __name__ == "__main__":
    main()
