"""Encode slices of a volume once and store the embeddings, so several benchmark processes share them.

On a shared CPU the image encoder is most of the cost of a volume benchmark (benchmarks/propagate.py);
`--part i/n` lets n processes split the slices. Each slice is saved as DIR/{axis}{index:03d}.pt (features
float32 and the frame; `--axis` z, y or x: `np.take(volume, index, axis)` as VolumeSession prompts it);
`load_into(session, DIR, axis)` puts them into a VolumeSession's cache.

    PYTHONPATH=src python benchmarks/encode_slices.py ch2.nii.gz --model imis-lite --range 8:156 --part 0/2 --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imis.io import atomic_output, read_image
from imis.models.interactive import Embedding
from imis.models.preprocess import Frame


def load_into(session, folder: Path, axis: str = "z") -> int:
    """Put every stored embedding of ``folder`` into ``session``'s cache; returns how many."""
    n = 0
    for f in sorted(Path(folder).glob(f"{axis}[0-9]*.pt")):
        d = torch.load(f, weights_only=True)
        session.put_embedding(axis, int(f.stem[1:]), Embedding(d["features"], Frame(*d["frame"])))
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("volume", type=Path)
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument("--axis", choices=("z", "y", "x"), default="z", help="slice axis of the (z, y, x) array")
    ap.add_argument("--range", default=None, help="LO:HI slices of --axis (HI exclusive); default all")
    ap.add_argument("--part", default="0/1", help="i/n: this process encodes every n-th slice from i")
    ap.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="encoder precision (bf16: autocast)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded CPU)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from imis.models import load_model

    model = load_model(args.model, dtype=torch.bfloat16 if args.precision == "bf16" else None)
    ax = "zyx".index(args.axis)
    vol = read_image(args.volume).array
    lo, hi = (int(v) for v in args.range.split(":")) if args.range else (0, vol.shape[ax])
    i, n = (int(v) for v in args.part.split("/"))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    name = args.axis + "{:03d}.pt"
    todo = [k for k in range(lo, hi) if (k - lo) % n == i and not (args.out / name.format(k)).exists()]
    for k in todo:
        if (args.out / name.format(k)).exists():  # another process got there first
            continue
        emb = model.encode(np.ascontiguousarray(np.take(vol, k, axis=ax)))
        f = emb.frame
        with atomic_output(args.out / name.format(k)) as tmp:
            torch.save({"features": emb.features, "frame": (f.orig_hw, f.valid_hw, f.input_size)}, tmp)
    print(
        f'{{"benchmark": "encode_slices", "model": "{args.model}", "axis": "{args.axis}", "precision": "{args.precision}", "slices": {len(todo)}, '
        f'"seconds": {time.perf_counter() - t0:.1f}}}'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
