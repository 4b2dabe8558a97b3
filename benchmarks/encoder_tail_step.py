"""What training the top of imis-lite's image encoder costs on this machine, against the whole encoder.

Prints one JSON line: seconds per image of (a) the frozen trunk's forward (done once per image, cached:
`model.train_encoder_tail`), (b) the trained top's forward + backward over a cached trunk output, for
tails of 1 and 2 TinyViT stages, and (c) the whole encoder's forward + backward (full fine-tuning), side
by side in one run on a real btcv-demo slice, with the ratio (c) / (b) and the cache size per image.
Run: `.venv/bin/python benchmarks/encoder_tail_step.py [--images 2] [--reps 3]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch


def _timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    from imis.data.formats import imed
    from imis.models.preprocess import prepare_image
    from imis.models.registry import load_model

    model = load_model("imis-lite")
    enc = model.net.image_encoder.float()
    image = sorted((args.shared / "data" / "btcv-demo" / "image").glob("*.png"))[0]
    x, _ = prepare_image(imed.read_image(image), model.preprocess, str(image))
    x = x.float().repeat(args.images, 1, 1, 1)
    n = args.images
    out: dict = {"benchmark": "encoder_tail_step", "model": "imis-lite (TinyViT-5M)", "images": n}
    for tail in (1, 2):
        trunk, head = enc.split(tail)
        trunk.eval()
        head.train()
        with torch.no_grad():
            feats = trunk(x)
        if tail == 1:
            with torch.no_grad():  # the cache fill runs without gradients
                out["trunk_forward_s_per_image"] = round(_timed(lambda t=trunk: t(x), args.reps) / n, 3)
            out["cache_mb_per_image"] = round(feats[0].numel() * 2 / 2**20, 2)

        def head_step(head=head, feats=feats):
            head.zero_grad()
            head(feats).square().mean().backward()

        out[f"tail{tail}_fwd_bwd_s_per_image"] = round(_timed(head_step, args.reps) / n, 3)
        out[f"tail{tail}_weights_m"] = round(sum(p.numel() for p in head.parameters()) / 1e6, 2)

    enc.train()

    def full_step():
        enc.zero_grad()
        enc(x).square().mean().backward()

    out["full_fwd_bwd_s_per_image"] = round(_timed(full_step, args.reps) / n, 3)
    out["full_over_tail1"] = round(out["full_fwd_bwd_s_per_image"] / out["tail1_fwd_bwd_s_per_image"], 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(
        peak_rss_mb=round(rss),
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        torch=torch.__version__,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
