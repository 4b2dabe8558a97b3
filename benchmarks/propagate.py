"""Seconds per propagated slice, and the share spent encoding, for one whole-structure propagation.

Colin27 (181 axial slices) + AAL: a tight box on the slice where the structure is largest, then
`VolumeSession.propagate` (default rules) both ways, from a cold embedding cache, the way `imis segment
--propagate` runs. Prints one JSON line with the wall time, seconds per slice, encoding share, the
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
from imis.session import PropagationRules, VolumeSession

TEMPLATES = Path("/usr/share/mricron/templates")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument("--structure", default="Thalamus_L", help="an AAL name")
    ap.add_argument("--batch-size", type=int, default=PropagationRules().batch_size)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from imis.models import load_model

    names = {v: k for k, v in read_aal_names(TEMPLATES / "aal.nii.txt").items()}
    if args.structure not in names:
        sys.exit(f"--structure {args.structure!r}: not an AAL name (see {TEMPLATES / 'aal.nii.txt'})")
    image, aal = read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")
    gt = aal.array == names[args.structure]
    seed = int(np.argmax(gt.sum(axis=(1, 2))))
    vs = VolumeSession(load_model(args.model), cache_size=image.array.shape[0])
    vs.open(image)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    vs.set_slice("z", seed)
    vs.predict(box=tight_box(gt[seed]))
    res = vs.propagate(rules=PropagationRules(batch_size=args.batch_size))
    wall = time.perf_counter() - t0
    slices = len(res.slices) + 1
    print(
        json.dumps(
            {
                "benchmark": "propagate",
                "model": args.model,
                "structure": args.structure,
                "volume_slices": image.array.shape[0],
                "slices_segmented": slices,
                "slices_visited": res.visited + 1,
                "encodes": vs.cache_stats.encodes,
                "seconds": round(wall, 2),
                "seconds_per_slice": round(wall / slices, 3),
                "encode_share": round(vs.cache_stats.encode_seconds / wall, 3),
                "dice_3d": round(dice(vs.object_mask, gt), 4),
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
