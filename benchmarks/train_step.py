"""Decoder training step time per mask with cached image embeddings (imis-lite's CPU recipe).

Prints one JSON line: seconds per mask of (a) one decoder forward + backward + Adam step (a single
prompt step with gradients), (b) one forward-only interaction step (what the steps without gradients
cost), and (c) one whole optimizer step of the shipped configuration's shape (first prompt + K=4
corrections, gradients on 2 of the 5 steps), all on real btcv-demo targets with LiteMedSAM's embedding
of a real slice. Run: `.venv/bin/python benchmarks/train_step.py [--masks 8] [--reps 3]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--masks", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    from imis.data.formats import imed
    from imis.models.preprocess import prepare_image
    from imis.train.config import DatasetSpec, ModelConfig, TrainConfig
    from imis.train.data import load_images
    from imis.train.interaction import MaskState, run_interaction
    from imis.train.network import build_network

    btcv = args.shared / "data" / "btcv-demo"
    base = TrainConfig(
        datasets=(DatasetSpec(str(btcv)),),
        model=ModelConfig(arch="imis-lite", init="litemedsam"),
        first_prompts={"click": 1.0},
    )
    net, pre, _ = build_network(base)
    lowres = 4 * int(net.prompt_encoder.image_embedding_size[0])
    images = load_images(DatasetSpec(str(btcv), max_images=2), pre, lowres, with_imask=False)
    img = images[0]
    with torch.no_grad():
        x, _ = prepare_image(imed.read_image(img.path), pre)
        emb = net.image_encoder.eval()(x)
    targets = [img.gt[i % len(img.gt)] for i in range(args.masks)]
    params = [p for n, p in net.named_parameters() if not n.startswith("image_encoder")]
    for n, p in net.named_parameters():
        p.requires_grad_(not n.startswith("image_encoder"))
    opt = torch.optim.Adam(params, lr=1e-5)
    net.train()

    def one(cfg: TrainConfig, grad_at: set[int]) -> float:
        states = [MaskState(t, 0, np.random.default_rng(i)) for i, t in enumerate(targets)]
        t0 = time.perf_counter()
        opt.zero_grad()
        run_interaction(net, emb, states, cfg, None, grad_at, 1, pre.input_size, torch.device("cpu"))
        if grad_at:
            opt.step()
        return (time.perf_counter() - t0) / len(targets)

    single = TrainConfig(datasets=base.datasets, interactions=0, first_prompts={"click": 1.0})
    shipped = TrainConfig(datasets=base.datasets, interactions=4, first_prompts={"click": 1.0})
    one(single, {0})  # warm-up
    grad = [one(single, {0}) for _ in range(args.reps)]
    fwd = [one(single, set()) for _ in range(args.reps)]
    step = [one(shipped, {0, 2}) for _ in range(args.reps)]
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "model": "imis-lite (LiteMedSAM decoder, 64x64x256 embedding)",
                "masks_per_batch": args.masks,
                "grad_step_s_per_mask": round(statistics.median(grad), 4),
                "forward_step_s_per_mask": round(statistics.median(fwd), 4),
                "shipped_optimizer_step_s_per_mask": round(statistics.median(step), 4),
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
