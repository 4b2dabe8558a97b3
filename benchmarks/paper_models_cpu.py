"""CPU time per encode and per click of the paper's comparison models at full size (random weights).

For each registry model (SAM 2 Hiera-T/S/B+/L, SAM-Med2D ViT-B, Huang et al.'s SAM ViT-B) the network is
built from its registry spec with random weights (timing does not depend on the values), wrapped with
its input recipe, and timed on a 512x512 uint8 image: ``encode`` (preprocessing + image encoder) and one
positive click decoded to a native-resolution mask (prompt encoder + mask decoder + resize; SAM's
multimask rule where the model uses it; Huang et al. takes a box, which is timed instead). Prints one JSON
line per model with the median process CPU time (all threads) and wall time. On a shared CPU the wall
time grows with other load; the CPU time much less so.

    PYTHONPATH=src python benchmarks/paper_models_cpu.py [--models sam2-hiera-t,...] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import numpy as np
import torch

DEFAULT = "sam2-hiera-t,sam2-hiera-s,sam2-hiera-b+,sam2-hiera-l,sam-med2d-b,huang2024-vit-b"


def timed(fn, reps: int) -> tuple[float, float]:
    """Median (process CPU seconds, all threads; wall seconds) of ``reps`` calls."""
    cpu, wall = [], []
    for _ in range(reps):
        c, t = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--reps", type=int, default=3, help="timed encodes per model (clicks: 5x)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from imis.models.interactive import InteractiveModel, PromptSpec
    from imis.models.registry import ARCHITECTURES, get_spec

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (512, 512)).astype(np.uint8)
    click = PromptSpec(points=np.array([[250.0, 260.0]]), labels=np.array([1]))
    box = PromptSpec(box=np.array([180.0, 190.0, 330.0, 340.0]))
    for name in args.models.split(","):
        spec = get_spec(name)
        torch.manual_seed(0)
        net = ARCHITECTURES[spec.arch](**spec.arch_kwargs)
        params = sum(p.numel() for p in net.parameters())
        model = InteractiveModel(name, net, spec.preprocess, spec.multimask, spec.prompt_types, spec.license)
        prompt, kind = (click, "click") if "point" in spec.prompt_types else (box, "box")
        emb = model.encode(image)  # warm-up
        encode_cpu, encode_wall = timed(partial(model.encode, image), args.reps)
        model.decode(emb, prompt)
        decode_cpu, decode_wall = timed(partial(model.decode, emb, prompt), 5 * args.reps)
        row = {
            "model": name,
            "params_m": round(params / 1e6, 1),
            "input": spec.preprocess.input_size,
            "encode_cpu_s": round(encode_cpu, 3),
            f"{kind}_cpu_s": round(decode_cpu, 4),
            "encode_wall_s": round(encode_wall, 3),
            f"{kind}_wall_s": round(decode_wall, 4),
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
