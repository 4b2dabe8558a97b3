"""Seconds per propagated slice, and the share spent encoding, for one whole-structure propagation.

Colin27 (181 axial slices) + AAL: a tight box on the slice where the structure is largest (``--seed-axis``:
z, the axial slice, by default, as the 60 s target was set; ``largest``: over z, y, x by mm^2), then
`VolumeSession.propagate` (default rules) both ways, from a cold embedding cache, the way `imis segment
--propagate` runs; ``--refine`` adds `VolumeSession.refine_orthogonal` and reports its seconds apart. Prints one JSON line with the wall time, seconds per slice, encoding share, the
3D Dice against AAL, the batch size, the torch threads and the machine's load average (the CPU this was
measured on is shared; compare runs only at similar load).

    PYTHONPATH=src python benchmarks/propagate.py --structure Thalamus_L --model imis-lite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imis.bench.metrics import dice
from imis.data.brain_templates import read_aal_names
from imis.io import read_image
from imis.prompts import tight_box
from imis.prompts.seed import SEED_AXES, largest_section, seed_axes
from imis.session import PropagationRules, VolumeSession

TEMPLATES = Path("/usr/share/mricron/templates")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument("--structure", default="Thalamus_L", help="an AAL name")
    ap.add_argument("--batch-size", type=int, default=PropagationRules().batch_size)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed-axis", choices=SEED_AXES, default="z")
    ap.add_argument("--refine", action="store_true", help="also refine orthogonally (timed apart)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="encoder precision")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from imis.models import load_model

    names = {v: k for k, v in read_aal_names(TEMPLATES / "aal.nii.txt").items()}
    if args.structure not in names:
        sys.exit(f"--structure {args.structure!r}: not an AAL name (see {TEMPLATES / 'aal.nii.txt'})")
    image, aal = read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")
    gt = aal.array == names[args.structure]
    ax, seed, _ = largest_section(gt, tuple(reversed(aal.geometry.spacing)), seed_axes(args.seed_axis))
    model = load_model(args.model, dtype=torch.bfloat16 if args.precision == "bf16" else None)
    vs = VolumeSession(model, cache_size=sum(image.array.shape))
    vs.open(image)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    vs.set_slice(ax, seed)
    vs.predict(box=tight_box(np.take(gt, seed, ax)))
    res = vs.propagate(rules=PropagationRules(batch_size=args.batch_size))
    wall = time.perf_counter() - t0
    encode_walk = vs.cache_stats.encode_seconds
    slices = len(res.slices) + 1
    propagated = {"dice_3d": round(dice(vs.object_mask, gt), 4), "encodes": vs.cache_stats.encodes}
    refined = {}
    if args.refine:
        enc0, n0, t1 = vs.cache_stats.encode_seconds, vs.cache_stats.encodes, time.perf_counter()
        vs.refine_orthogonal(batch_size=args.batch_size)
        rt = time.perf_counter() - t1
        refined = {
            "refine_seconds": round(rt, 2),
            "refine_encodes": vs.cache_stats.encodes - n0,
            "refine_encode_share": round((vs.cache_stats.encode_seconds - enc0) / rt, 3),
            "refined_dice_3d": round(dice(vs.object_mask, gt), 4),
            "total_seconds": round(wall + rt, 2),
        }
    print(
        json.dumps(
            {
                "benchmark": "propagate",
                "model": args.model,
                "structure": args.structure,
                "seed_axis": "zyx"[ax],
                "seed": seed,
                "precision": args.precision,
                "volume_slices": image.array.shape[0],
                "slices_segmented": slices,
                "slices_visited": res.visited + 1,
                "encodes": propagated["encodes"],
                "seconds": round(wall, 2),
                "seconds_per_slice": round(wall / slices, 3),
                "encode_share": round(encode_walk / wall, 3),
                "dice_3d": propagated["dice_3d"],
                **refined,
                "stops": {k: list(v) for k, v in res.stops.items()},
                "batch_size": args.batch_size,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "loadavg_start_end": [round(load0, 1), round(os.getloadavg()[0], 1)],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
