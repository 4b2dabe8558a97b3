"""Seed axis and orthogonal refinement, measured live on Colin27 AAL structures in imis-lite's training.

Never on the 24 held-out structures (refused, as benchmarks/propagation_grid.py does). Per training
structure and seed kind (tight ground-truth box, or one click at the interior point), for each seed-axis
choice (``z``: the largest axial slice, the protocol before; ``largest``: the largest cross-section over
z, y and x by mm^2, imis.prompts.seed.largest_section), the seed slice is prompted in a
VolumeSession and propagated with the default rules (exactly what `imis bench --protocol volume` runs);
then each refinement variant of ``--refines`` (imis.session.orthogonal.RefineOptions fields as JSON) is
applied to the propagated mask. Embeddings of every axis come from encode_slices.py (``--emb-dir``:
{axis}{index:03d}.pt), the rest are encoded on the way.

Prints one JSON line: per (seed axis, kind, variant) the mean 3D Dice over the structures, per-structure
Dice, the seed axis chosen per structure and the decode seconds the refinement cost.

    PYTHONPATH=src:benchmarks python benchmarks/orthogonal_refine.py --emb-dir runs/emb/imis-lite-bf16 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from propagation_grid import TRAIN_STRUCTURES
from tune_propagation import TEMPLATES, training_structures

from imis.bench.metrics import dice
from imis.io import read_image
from imis.prompts import center_click, tight_box
from imis.prompts.seed import largest_section, seed_axes
from imis.session.orthogonal import RefineOptions, refine_orthogonal

DEFAULT_REFINES = (
    '[{"combine": "vote"}, {"combine": "vote", "rounds": 2}, {"combine": "orthogonal-and"},'
    ' {"combine": "orthogonal-or"}, {"combine": "vote", "box_margin": 0}, {"combine": "vote", "box_margin": 3}]'
)


def load_embeddings(vs, emb_dir: Path) -> int:
    """Put every stored embedding of every axis into the session's cache."""
    from encode_slices import load_into

    return sum(load_into(vs, emb_dir, a) for a in "zyx")


def seed_prompt(plane: np.ndarray, kind: str) -> dict:
    if kind == "box":
        return {"box": tight_box(plane)}
    c = center_click(plane)
    return {"clicks": [(c.x, c.y, True)]}


def run_one(vs, gt: np.ndarray, spacing, axis_choice: str, kind: str, refines: list[dict]) -> dict:
    """Propagate from the chosen seed section, then refine; Dice of each."""
    ax, seed, area = largest_section(gt, spacing, seed_axes(axis_choice))
    vs.reset()
    vs.set_slice(ax, seed)
    t0 = time.perf_counter()
    if vs.predict(**seed_prompt(np.take(gt, seed, ax), kind)).mask.any():
        res = vs.propagate()
        walked = len(res.slices)
    else:
        walked = 0
    seconds = time.perf_counter() - t0
    mask = vs.object_mask
    row = {"axis": "zyx"[ax], "seed": seed, "area_mm2": area, "walked": walked, "dice": dice(mask, gt)}
    row["seconds"] = seconds
    for spec in refines:
        t0 = time.perf_counter()
        refined = refine_orthogonal(
            vs.model, lambda a, i: vs.embedding((a, i)), mask, ax, RefineOptions(**spec)
        )
        row[json.dumps(spec, sort_keys=True)] = {
            "dice": dice(refined, gt),
            "seconds": time.perf_counter() - t0,
        }
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="encoder precision")
    ap.add_argument("--structures", default=",".join(TRAIN_STRUCTURES))
    ap.add_argument("--kinds", default="box,click")
    ap.add_argument("--seed-axes", default="z,largest", help="seed-axis choices to compare")
    ap.add_argument("--refines", default=DEFAULT_REFINES, help="JSON list of RefineOptions fields")
    ap.add_argument("--emb-dir", type=Path, default=None, help="embeddings stored by encode_slices.py")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded CPU)")
    args = ap.parse_args(argv)
    import torch

    from imis.models import load_model
    from imis.session import VolumeSession

    torch.set_num_threads(args.threads)
    names, wanted = training_structures(args.structures)
    by_name = {v: k for k, v in names.items()}
    image, aal = read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")
    spacing = tuple(reversed(aal.geometry.spacing))
    model = load_model(args.model, dtype=torch.bfloat16 if args.precision == "bf16" else None)
    vs = VolumeSession(model, cache_size=sum(image.array.shape))
    vs.open(image)
    loaded = load_embeddings(vs, args.emb_dir) if args.emb_dir else 0
    refines = json.loads(args.refines)
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for s in wanted:
        gt = aal.array == by_name[s]
        for choice in args.seed_axes.split(","):
            for kind in args.kinds.split(","):
                rows.setdefault(f"{choice} {kind}", {})[s] = run_one(vs, gt, spacing, choice, kind, refines)
        print(f"{s}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out: dict = {"benchmark": "orthogonal_refine", "model": args.model, "precision": args.precision}
    out.update(structures=wanted, embeddings_loaded=loaded, results={})
    for key, per in rows.items():
        entry = {
            "dice": round(float(np.mean([r["dice"] for r in per.values()])), 4),
            "axes": {s: f"{r['axis']}{r['seed']}" for s, r in per.items()},
            "walked_mean": round(float(np.mean([r["walked"] for r in per.values()])), 1),
            "per_structure": {s: round(r["dice"], 3) for s, r in per.items()},
            "refined": {},
        }
        for spec in refines:
            k = json.dumps(spec, sort_keys=True)
            entry["refined"][k] = {
                "dice": round(float(np.mean([r[k]["dice"] for r in per.values()])), 4),
                "seconds_mean": round(float(np.mean([r[k]["seconds"] for r in per.values()])), 2),
                "per_structure": {s: round(r[k]["dice"], 3) for s, r in per.items()},
            }
        out["results"][key] = entry
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
