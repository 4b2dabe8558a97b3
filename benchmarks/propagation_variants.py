"""Propagation variants that do not chain a walk's errors, on Colin27 AAL *training* structures only.

Per structure (default: propagation_grid.TRAIN_STRUCTURES; a held-out one is refused) and seed kind
(tight box / one click on the largest axial slice, the base model's seed mask), the 3D Dice of filling
the slices within REACH seed diameters of the seed with:

* ``copy``: the seed mask itself on every slice (no model: what the shape alone gives);
* ``seedprompt``: each slice decoded on its own from the seed's box (+1 px) and the seed's logits;
* ``seedbox``: each slice decoded from the seed's box alone;
* ``walk``: the default walk (previous slice's box + 1 px and logits; stops: empty only);
* ``walk_seedmask``: the walk's box with the *seed's* logits as the mask prompt;
* ``vote3``: the majority of copy, seedprompt and walk per voxel.

Prints one JSON line (per seed kind, each variant at each reach); per-structure rows go to stderr.
Embeddings come from benchmarks/encode_slices.py (``--emb-dir``; bf16 in docs/volumes.md's fourth round).

    PYTHONPATH=src:benchmarks python benchmarks/propagation_variants.py --emb-dir runs/emb/bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
import volume_heldout as vh  # noqa: E402
from propagation_grid import TRAIN_STRUCTURES  # noqa: E402

from imis.data.brain_templates import HELDOUT_AAL_STRUCTURES, read_aal_names  # noqa: E402
from imis.io import read_image  # noqa: E402
from imis.models import load_model  # noqa: E402
from imis.models.interactive import PromptSpec  # noqa: E402
from imis.session.propagation import PropagationRules, default_rules, grown_box, predict_next  # noqa: E402

T = Path("/usr/share/mricron/templates")
rules = PropagationRules()  # the default walk's prompt (box + 1 px and logits)
REACH = (0.5, 0.75, 1.0, 1.5)


def dice(a, b):
    return 2 * float((a & b).sum()) / max(1, a.sum() + b.sum())


def run(model, slices, gt3: np.ndarray, kind: str) -> dict:
    """3D Dice of every variant and reach for one structure (``gt3``) and seed kind."""
    areas = gt3.sum((1, 2))
    seed = int(np.argmax(areas))
    pred, _ = vh.seed_prediction(model, slices[seed], gt3[seed], kind, default_rules(kind))
    sm, sl = pred.mask, pred.low_res_logits
    per_slice = 1.0 / (2 * np.sqrt(sm.sum() / np.pi))
    maxoff = int(max(REACH) / per_slice) + 1
    masks: dict[str, dict[int, np.ndarray]] = {
        v: {} for v in ("copy", "seedprompt", "seedbox", "walk", "walk_seedmask")
    }
    sbox = grown_box(sm, rules)
    for step in (-1, 1):
        prev, prev_l = sm, sl
        prev2 = sm
        dead = {"walk": False, "walk_seedmask": False, "seedprompt": False, "seedbox": False}
        for off in range(1, maxoff + 1):
            k = seed + step * off
            if not 0 <= k < gt3.shape[0]:
                break
            emb = slices[k]
            masks["copy"][k] = sm
            if not dead["seedprompt"]:
                m = model.decode(emb, PromptSpec(box=sbox, mask_logits=sl)).mask
                masks["seedprompt"][k] = m
                dead["seedprompt"] = not m.any()
            if not dead["seedbox"]:
                m = model.decode(emb, PromptSpec(box=sbox)).mask
                masks["seedbox"][k] = m
                dead["seedbox"] = not m.any()
            if not dead["walk"]:
                p = predict_next(model, emb, prev, prev_l, rules)
                masks["walk"][k] = p.mask
                dead["walk"] = not p.mask.any()
                prev, prev_l = p.mask, p.low_res_logits
            if not dead["walk_seedmask"]:
                p = model.decode(emb, PromptSpec(box=grown_box(prev2, rules), mask_logits=sl))
                masks["walk_seedmask"][k] = p.mask
                dead["walk_seedmask"] = not p.mask.any()
                prev2 = p.mask
    out = {}
    for v, mk in masks.items():
        for r in REACH:
            vol = np.zeros_like(gt3)
            vol[seed] = sm
            for k, m in mk.items():
                if abs(k - seed) * per_slice <= r:
                    vol[k] = m
            out[f"{v}@{r}"] = round(dice(vol, gt3), 4)
        # fusions: walk AND copy-dilated / vote(walk, seedprompt, copy)
    for r in REACH:
        vol = np.zeros_like(gt3)
        vol[seed] = sm
        for k in masks["copy"]:
            if abs(k - seed) * per_slice <= r:
                parts = [masks[v].get(k, np.zeros_like(sm)) for v in ("copy", "seedprompt", "walk")]
                vol[k] = sum(p.astype(int) for p in parts) >= 2
        out[f"vote3@{r}"] = round(dice(vol, gt3), 4)
    out["seed_dice"] = round(dice(sm, gt3[seed]), 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--structures", default=",".join(TRAIN_STRUCTURES))
    ap.add_argument("--emb-dir", type=Path, default=Path("runs/emb/bf16"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    structures = args.structures.split(",")
    held = [n for n in structures if any(n.startswith(h) for h in HELDOUT_AAL_STRUCTURES)]
    if held:
        raise SystemExit(f"held-out structures are for evaluation only: {held}")
    image = read_image(T / "ch2.nii.gz").array
    aal = read_image(T / "aal.nii.gz").array
    by_name = {n: v for v, n in read_aal_names(T / "aal.nii.txt").items()}
    model = load_model("imis-lite")
    slices = vh.Slices(model, image, args.emb_dir, 0)
    rows = {}
    for name in structures:
        for kind in ("box", "click"):
            rows[(name, kind)] = run(model, slices, aal == by_name[name], kind)
            print(name, kind, json.dumps(rows[(name, kind)]), file=sys.stderr, flush=True)
    summary = {}
    for kind in ("box", "click"):
        keys = rows[(structures[0], kind)].keys()
        summary[kind] = {k: round(float(np.mean([rows[(n, kind)][k] for n in structures])), 4) for k in keys}
    print(json.dumps(summary, indent=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
