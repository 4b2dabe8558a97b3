"""Reduced precision vs fp32: btcv-demo test Dice from a tight box and a centre click.

Two pairs: on the ONNX backend, the export's fp32 encoder vs its int8-weight encoder; on the torch
backend, fp32 vs bfloat16 autocast of the encoder (`--precision bf16`). For every test image the image
is encoded once by each; every target is decoded (same fp32 decoder) from its tight box and its centre
click (the benchmark's `center` first click) with each embedding. Prints one JSON line per run: mean
Dice per model, precision and prompt, the int8 - fp32 and bf16 - fp32 differences, and median encoder
seconds (interleaved). The rule of `--precision auto` (imis.models.onnx.backend) uses a reduced
precision only where its |difference| stays within 0.01 and its encoder is faster.
Run: `PYTHONPATH=src python benchmarks/onnx_int8.py [--models imis-lite,litemedsam] [--limit N]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def run_model(name: str, samples: list, threads: int | None) -> dict:
    import torch

    from imis.models import PromptSpec, load_model
    from imis.models.onnx.backend import INT8
    from imis.prompts.boxes import tight_box
    from imis.prompts.clicks import center_click

    models = {
        "fp32": load_model(name, backend="onnx"),
        "int8": load_model(name, backend="onnx", dtype=INT8),
        "torch_fp32": load_model(name),
        "torch_bf16": load_model(name, dtype=torch.bfloat16),
    }
    scores = {f"{p}_{k}": [] for p in models for k in ("box", "click")}
    times = {p: [] for p in models}
    for sample in samples:
        emb = {}
        for p, m in models.items():
            t = time.perf_counter()
            emb[p] = m.encode(sample.image)
            times[p].append(time.perf_counter() - t)
        for gt in sample.masks.values():
            c = center_click(gt)
            prompts = {
                "box": PromptSpec(box=np.array(tight_box(gt), dtype=np.float64)),
                "click": PromptSpec(points=np.array([[c.x, c.y]], dtype=np.float64), labels=np.array([1])),
            }
            for p, m in models.items():
                for k, spec in prompts.items():
                    scores[f"{p}_{k}"].append(dice(m.decode(emb[p], spec).mask, gt > 0))
    out = {f"dice_{k}": round(float(np.mean(v)), 4) for k, v in scores.items()}
    for k in ("box", "click"):
        out[f"delta_{k}"] = round(out[f"dice_int8_{k}"] - out[f"dice_fp32_{k}"], 4)
        out[f"delta_bf16_{k}"] = round(out[f"dice_torch_bf16_{k}"] - out[f"dice_torch_fp32_{k}"], 4)
    for p in models:
        out[f"encode_{p}_s"] = round(statistics.median(times[p]), 3)
    out["encode_ratio_int8"] = round(out["encode_int8_s"] / out["encode_fp32_s"], 3)
    out["encode_ratio_bf16"] = round(out["encode_torch_bf16_s"] / out["encode_torch_fp32_s"], 3)
    out["n_masks"] = len(scores["fp32_box"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="imis-lite,litemedsam")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test images")
    args = ap.parse_args()
    from imis.data.formats import imed

    samples = list(imed.iter_samples(args.shared / "data/btcv-demo", "test", with_imask=False))
    samples = samples[: args.limit] if args.limit else samples
    res = {"benchmark": "onnx_int8_btcv_test", "images": len(samples)}
    for name in args.models.split(","):
        res[name] = run_model(name, samples, None)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
