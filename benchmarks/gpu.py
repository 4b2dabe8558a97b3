"""Prepared for a lent GPU: encoder ms, clicks/s and automask s/image per model and precision.

For every model that can be built here (imis-lite and litemedsam with their weights; sam-vit-b and
imis-net-b with random weights unless --checkpoint-<name> is given: speed does not depend on the
values), at the model's own input size, in fp32 / bf16 / fp16 (autocast; fp16 and bf16 only where
the device supports them):

- ``encoder_ms``: median of the image encoder on a real btcv-demo slice (after warm-up, synchronised);
- ``clicks_per_s``: one click decoded against a cached embedding through ``InteractiveModel.decode``
  (prompt encoder + mask decoder + native-resolution 512x512 mask), per second;
- ``automask_s``: a 32x32 grid of single-click prompts decoded in batches of 64 against one embedding
  (the decoder cost of SAM-style automatic masks; filtering and NMS not included), plus one encode.

Prints one JSON line. Run on the lent machine: `PYTHONPATH=src python benchmarks/gpu.py` (about 2 min
on an H100); `--device cpu --quick` checks the script anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: torch.device, reps: int) -> float:
    fn()  # warm-up (kernels, caches, autotuning)
    sync(dev)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def precisions(dev: torch.device) -> dict[str, torch.dtype | None]:
    out: dict[str, torch.dtype | None] = {"fp32": None}
    if dev.type == "cuda":
        out["fp16"] = torch.float16
        if torch.cuda.is_bf16_supported():
            out["bf16"] = torch.bfloat16
    else:
        out["bf16"] = torch.bfloat16
    return out


def build(name: str, dev: torch.device, checkpoint: str | None):
    from imis.models import load_model
    from imis.models.registry import get_spec, model_from_spec

    spec = get_spec(name)
    if checkpoint or spec.weights_path() is not None:
        return load_model(name, checkpoint=checkpoint, device=dev)
    torch.manual_seed(0)
    return model_from_spec(spec, spec.build(), dev, None)  # random weights: the speed is the same


def grid_automask(model, emb, dev: torch.device, side: int, batch: int) -> None:
    s = model.preprocess.input_size
    xs = (np.arange(side) + 0.5) * s / side
    pts = torch.tensor([[x, y] for y in xs for x in xs], dtype=torch.float32, device=dev)
    with torch.inference_mode():
        for i in range(0, len(pts), batch):
            p = pts[i : i + batch, None]
            labels = torch.ones(p.shape[0], 1, dtype=torch.int64, device=dev)
            model.net.decode(emb.features, points=(p, labels), multimask_output=True)


def bench_model(model, image: np.ndarray, dev: torch.device, reps: int, grid: int) -> dict:
    from imis.models import PromptSpec

    rows = {}
    click = PromptSpec(points=np.array([[250.0, 300.0]]), labels=np.array([1]))
    for pname, dtype in precisions(dev).items():
        model.dtype = dtype
        try:
            enc_s = timed(lambda: model.encode(image), dev, reps)
            emb = model.encode(image)
            dec_s = timed(lambda emb=emb: model.decode(emb, click), dev, reps * 5)
            auto_s = timed(lambda emb=emb: grid_automask(model, emb, dev, grid, 64), dev, max(1, reps // 2))
        except RuntimeError as exc:  # a precision the kernels do not cover here
            rows[pname] = {"error": str(exc).splitlines()[0][:200]}
            continue
        rows[pname] = {
            "encoder_ms": round(enc_s * 1e3, 2),
            "clicks_per_s": round(1.0 / dec_s, 1),
            "automask_s": round(auto_s + enc_s, 3),
        }
    model.dtype = None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="imis-lite,litemedsam,sam-vit-b,imis-net-b")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 reps, an 8x8 automask grid (a smoke run)")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    for name in ("sam-vit-b", "imis-net-b"):
        ap.add_argument(f"--checkpoint-{name}", default=None, help=f"real weights for {name}")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on the lent GPU machine, or pass --device cpu --quick")
    from imis.data.formats import imed

    image = imed.read_image(args.shared / "data/btcv-demo/image/ABD_001_100.png")
    reps, grid = (2, 8) if args.quick else (args.reps, 32)
    res = {
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "image": "btcv-demo ABD_001_100 (512x512)",
        "automask_grid": f"{grid}x{grid}, batches of 64",
    }
    for name in args.models.split(","):
        ckpt = getattr(args, f"checkpoint_{name.replace('-', '_')}", None)
        model = build(name, dev, ckpt)
        res[name] = bench_model(model, image, dev, reps, grid)
        res[name]["weights"] = "real" if ckpt or name in ("imis-lite", "litemedsam") else "random"
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
