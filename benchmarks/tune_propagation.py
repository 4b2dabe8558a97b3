"""Measure the propagation rules on Colin27 AAL structures that were in imis-lite's training.

Never on the 24 held-out structures (imis.data.brain_templates.HELDOUT_AAL_STRUCTURES): this script
refuses them. For each structure and prompt kind (box, box+mask, box+point) it seeds
the largest axial slice with the tight ground-truth box, then walks both directions *without* stopping
(to the edge of the structure plus ``--beyond`` slices, or an empty prediction), recording per slice the
area, predicted IoU, growth, overlap and the intersection with the ground truth. A stop rule only
truncates a walk, so every threshold combination is then scored exactly from these records: 3D Dice
= 2 sum(inter) / (sum(area) + |GT|). A walk that reaches the recording limit without stopping is charged
its last area on every remaining slice to the volume's edge (no credit for a rule that never stops).

Prints one JSON line: the best rules per prompt kind and overall; ``--out`` writes all records.

    PYTHONPATH=src python benchmarks/tune_propagation.py --out runs/tune_propagation.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from imis.data.brain_templates import HELDOUT_AAL_STRUCTURES, read_aal_names
from imis.io import read_image
from imis.models import load_model
from imis.prompts import tight_box
from imis.session.propagation import PropagationRules, SliceRecord, next_prompt, stop_reason
from imis.session.volume import VolumeSession

TEMPLATES = Path("/usr/share/mricron/templates")
# Training structures of several kinds and sizes (a small deep nucleus, a small orbital gyrus, occipital
# and opercular cortex), all inside the axial slices 38-101 that the held-out evaluation also encodes,
# because the CPU this was measured on was shared by eight engineers (see docs/volumes.md).
TUNE_STRUCTURES = (
    "Pallidum_L",
    "Olfactory_R",
    "Lingual_R",
    "Rolandic_Oper_R",
)
PROMPTS = ("box@2", "box+mask@2", "box+point@2")
GRID = {
    "min_quality": (0.0, 0.3, 0.5, 0.6, 0.7, 0.8),
    "min_area": (1, 5, 10, 20),
    "max_growth": (1.3, 1.5, 2.0, 3.0, float("inf")),
    "min_overlap": (0.0, 0.2, 0.4, 0.6),
}


def _rules(mode: str, **kw) -> PropagationRules:
    """PropagationRules of a mode 'PROMPT@MARGIN' (e.g. 'box+mask@2')."""
    prompt, _, margin = mode.partition("@")
    return PropagationRules(prompt=prompt, box_margin=int(margin or 2), **kw)


def walk(vs: VolumeSession, gt: np.ndarray, seed: int, step: int, mode: str, beyond: int) -> list[dict]:
    """Records of one unstopped walk: SliceRecord fields plus 'inter' with the ground truth."""
    rules = _rules(mode)
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    last = min(gt.shape[0] - 1, zs.max() + beyond) if step > 0 else max(0, zs.min() - beyond)
    prev = vs.plane("z", seed)
    prev_logits = vs.current.low_res_logits
    out = []
    for i in range(seed + step, last + step, step):
        vs.encode_slices(0, list(range(i, last + step, step))[:4])
        pred = vs.model.decode(vs.embedding((0, i)), next_prompt(prev, prev_logits, rules))
        area, inter = int(pred.mask.sum()), int((pred.mask & gt[i]).sum())
        prev_area = int(prev.sum())
        overlap = float((pred.mask & prev).sum() / area) if area else 0.0
        out.append(
            {
                "index": i,
                "area": area,
                "quality": pred.quality,
                "inter": inter,
                "overlap": overlap,
                "growth": area / prev_area if prev_area else float("inf"),
            }
        )
        if area == 0:
            break
        prev, prev_logits = pred.mask, pred.low_res_logits
    return out


def score(walks: list[dict], rules: PropagationRules) -> float:
    """Mean 3D Dice over structures when ``rules`` truncate the recorded walks."""
    dices = []
    for w in walks:
        inter, area = w["seed_inter"], w["seed_area"]
        for recs, edge_left in ((w["down"], w["down_edge"]), (w["up"], w["up_edge"])):
            stopped = False
            for r in recs:
                rec = SliceRecord(r["index"], r["area"], r["quality"], r["growth"], r["overlap"])
                if stop_reason(rec, rules) is not None:
                    stopped = True
                    break
                inter, area = inter + r["inter"], area + r["area"]
            if not stopped and recs:
                area += recs[-1]["area"] * edge_left  # never stopped: charged to the edge
        dices.append(2 * inter / (area + w["gt"]))
    return float(np.mean(dices))


def choose(walks: list[dict], model: str, seconds: float = 0.0, encodes: int = 0) -> dict:
    """The best rules per prompt kind (grid search on the recorded walks) and the best kind overall."""
    best = {}
    for prompt in dict.fromkeys(w["prompt"] if "@" in w["prompt"] else f"{w['prompt']}@2" for w in walks):
        ws = [w for w in walks if (w["prompt"] if "@" in w["prompt"] else f"{w['prompt']}@2") == prompt]
        scored = []
        for combo in itertools.product(*GRID.values()):
            rules = _rules(prompt, **dict(zip(GRID, combo, strict=True)))
            scored.append((score(ws, rules), combo))
        top, combo = max(scored, key=lambda t: t[0])
        best[prompt] = {
            "dice": round(top, 4),
            **dict(zip(GRID, combo, strict=True)),
            "no_stop_dice": round(score(ws, _rules(prompt)), 4),
        }
    return {
        "benchmark": "tune_propagation",
        "model": model,
        "structures": sorted({w["structure"] for w in walks}),
        "best": best,
        "chosen": max(best, key=lambda p: best[p]["dice"]),
        "seconds": round(seconds, 1),
        "encodes": encodes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument("--structures", default=",".join(TUNE_STRUCTURES))
    ap.add_argument(
        "--modes", default=",".join(PROMPTS), help="PROMPT@MARGIN kinds, e.g. box+mask@0,point+mask"
    )
    ap.add_argument("--beyond", type=int, default=4, help="slices recorded past the structure's end")
    ap.add_argument("--out", type=Path, default=None, help="write every record here (JSON)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None, help="choose from these --out files")
    ap.add_argument("--emb-dir", type=Path, default=None, help="embeddings stored by encode_slices.py")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded CPU)")
    args = ap.parse_args(argv)
    if args.combine:
        runs = [json.loads(p.read_text()) for p in args.combine]
        print(json.dumps(choose([w for r in runs for w in r["walks"]], runs[0]["model"]), default=str))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    names = read_aal_names(TEMPLATES / "aal.nii.txt")
    held = {f"{s}_{side}" for s in HELDOUT_AAL_STRUCTURES for side in "LR"}
    wanted = [s.strip() for s in args.structures.split(",")]
    bad = [s for s in wanted if s in held or s not in names.values()]
    if bad:
        sys.exit(f"--structures: {bad} are held out of training or not AAL names; tune on training ones")
    image, aal = read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")
    vs = VolumeSession(load_model(args.model), cache_size=aal.array.shape[0])
    vs.open(image)
    if args.emb_dir is not None:
        from encode_slices import load_into

        load_into(vs, args.emb_dir)
    by_name = {v: k for k, v in names.items()}
    walks, t0 = [], time.perf_counter()
    for s in wanted:
        gt = aal.array == by_name[s]
        seed = int(np.argmax(gt.sum(axis=(1, 2))))
        for prompt in args.modes.split(","):
            vs.reset()
            vs.set_slice("z", seed)
            pred = vs.predict(box=tight_box(gt[seed]))
            w = {
                "structure": s,
                "prompt": prompt,
                "gt": int(gt.sum()),
                "seed": seed,
                "seed_area": int(pred.mask.sum()),
                "seed_inter": int((pred.mask & gt[seed]).sum()),
            }
            for key, step in (("down", -1), ("up", 1)):
                w[key] = walk(vs, gt, seed, step, prompt, args.beyond)
                end = w[key][-1]["index"] if w[key] else seed
                w[f"{key}_edge"] = (gt.shape[0] - 1 - end) if step > 0 else end
            walks.append(w)
            print(
                f"{s} {prompt}: {len(w['down']) + len(w['up'])} slices, {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "walks": walks}, default=float))
    print(json.dumps(choose(walks, args.model, time.perf_counter() - t0, vs.cache_stats.encodes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
