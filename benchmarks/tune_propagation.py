"""Measure propagation rules on Colin27 AAL structures that were in imis-lite's training (first round).

Superseded by benchmarks/propagation_grid.py (more prompts and stop signals, leave-one-structure-out
choice). A mode's unspecified prompt fields take PropagationRules' current defaults (box_margin 1 since
the second round): pass ``"box_margin": 0`` to repeat the first round.

Never on the 24 held-out structures (imis.data.brain_templates.HELDOUT_AAL_STRUCTURES): this script
refuses them. For each structure, seed kind (tight box or one interior click on the largest axial
slice) and prompt mode (how a slice prompts the next: a JSON object of PropagationRules prompt fields,
e.g. ``{"prompt": "box+mask", "box_margin_frac": 0.1}``), it walks both directions *without* stopping
(to the structure's end plus ``--beyond`` slices, or an empty prediction), recording per slice the
area, predicted IoU, growth, overlap and the intersection with the ground truth. A stop rule only
truncates a walk, so every threshold combination of GRID is then scored exactly from these records:
3D Dice = 2 sum(inter) / (sum(area) + |GT|). A walk that reaches the recording limit without stopping
is charged its last area on every remaining slice to the volume's edge (no credit for a rule that never
stops). The per-slice oracle (the tight GT box on every slice) is recorded too, for the diagnosis:
per structure and direction, how much of the loss is drift (slices inside the structure segmented
worse than the oracle), an early stop (structure slices never reached) or overshoot (slices past its end).

Prints one JSON line: per mode and seed the best stop rules, their Dice and the loss split; ``--out``
writes all records. Embeddings come from ``benchmarks/encode_slices.py`` (``--emb-dir``), else encoded.

    PYTHONPATH=src:benchmarks python benchmarks/tune_propagation.py --emb-dir runs/emb/imis-lite \
        --modes '[{"prompt": "box+mask"}, {"prompt": "box+mask", "box_margin_frac": 0.1}]'
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
from imis.models.interactive import PromptSpec
from imis.prompts import center_click, tight_box
from imis.session.propagation import PropagationRules, SliceRecord, predict_next, refine_seed, stop_reason

TEMPLATES = Path("/usr/share/mricron/templates")
# Training structures of the kinds the held-out list has (deep nuclei, medial temporal, cortex of several
# lobes, cerebellum, vermis), left and right, small and large.
TUNE_STRUCTURES = (
    "Cerebelum_8_R",
    "ParaHippocampal_L",
    "Vermis_4_5",
    "Olfactory_R",
    "Pallidum_L",
    "Lingual_R",
    "Rolandic_Oper_R",
    "Cingulum_Ant_R",
    "Cuneus_L",
    "SupraMarginal_R",
)
GRID = {
    "min_quality": (0.0, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7),
    "min_area": (1, 10, 20),
    "max_growth": (1.1, 1.2, 1.3, 1.5, float("inf")),
    "min_overlap": (0.0, 0.5),
    "min_seed_ratio": (0.0, 0.2, 0.3, 0.4, 0.5),
}

NO_STOP = {
    "min_quality": 0.0,
    "min_area": 1,
    "max_growth": float("inf"),
    "min_overlap": 0.0,
    "min_seed_ratio": 0.0,
}


class Slices:
    """Slice embeddings of one volume along one axis (``np.take(volume, k, axis)``, as VolumeSession
    slices it): stored ones from --emb-dir (encode_slices.py names them {axis}{k:03d}.pt), the rest
    encoded when first asked."""

    def __init__(self, model, volume: np.ndarray, emb_dir: Path | None, axis: int = 0) -> None:
        self.model, self.volume, self.emb_dir, self.cache = model, volume, emb_dir, {}
        self.axis = axis

    def __getitem__(self, k: int):
        if k not in self.cache:
            name = f"{'zyx'[self.axis]}{k:03d}.pt"
            f = self.emb_dir / name if self.emb_dir is not None else None
            if f is not None and f.exists():
                import torch

                from imis.models.interactive import Embedding
                from imis.models.preprocess import Frame

                d = torch.load(f, weights_only=True)
                self.cache[k] = Embedding(d["features"], Frame(*d["frame"]))
            else:
                self.cache[k] = self.model.encode(np.ascontiguousarray(np.take(self.volume, k, self.axis)))
        return self.cache[k]


def seed_prediction(model, emb, gt2d: np.ndarray, kind: str, rules: PropagationRules):
    """The seed slice's prediction from a tight GT box or one interior click (refined as the rules say)."""
    if kind == "box":
        pred = model.decode(emb, PromptSpec(box=np.asarray(tight_box(gt2d), np.float32)))
        return pred, ()
    c = center_click(gt2d)
    clicks = ((float(c.x), float(c.y), True),)
    pred = model.decode(emb, PromptSpec(points=np.array([[c.x, c.y]], np.float32), labels=np.array([1])))
    if rules.refine_seed and pred.mask.any():
        pred = refine_seed(model, emb, pred, clicks)
    return pred, clicks


def walk(model, slices: Slices, gt: np.ndarray, seed_pred, seed: int, step: int, rules, beyond: int):
    """Records of one unstopped walk: SliceRecord fields plus 'inter' with the ground truth."""
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    last = min(gt.shape[0] - 1, zs.max() + beyond) if step > 0 else max(0, zs.min() - beyond)
    prev, prev_logits = seed_pred.mask, seed_pred.low_res_logits
    out = []
    for i in range(seed + step, last + step, step):
        pred = predict_next(model, slices[i], prev, prev_logits, rules, seed_pred.mask)
        area, prev_area = int(pred.mask.sum()), int(prev.sum())
        out.append(
            {
                "index": i,
                "area": area,
                "quality": pred.quality,
                "inter": int((pred.mask & gt[i]).sum()),
                "gt": int(gt[i].sum()),
                "overlap": float((pred.mask & prev).sum() / area) if area else 0.0,
                "growth": area / prev_area if prev_area else float("inf"),
            }
        )
        if area == 0:
            break
        prev, prev_logits = pred.mask, pred.low_res_logits
    return out


def oracle(model, slices: Slices, gt: np.ndarray) -> dict[int, tuple[int, int]]:
    """Per structure slice: (intersection, area) of the tight-GT-box prediction."""
    out = {}
    for k in np.nonzero(gt.any(axis=(1, 2)))[0]:
        m = model.decode(slices[int(k)], PromptSpec(box=np.asarray(tight_box(gt[k]), np.float32))).mask
        out[int(k)] = (int((m & gt[k]).sum()), int(m.sum()))
    return out


def truncate(w: dict, rules: PropagationRules) -> tuple[int, int, dict]:
    """(sum inter, sum area, loss split) of walk ``w`` cut by the stop rules."""
    inter, area = w["seed_inter"], w["seed_area"]
    split = {"drift": 0.0, "early": 0, "over": 0}
    for d in ("down", "up"):
        recs, kept = w[d], []
        for r in recs:
            if stop_reason(
                SliceRecord(
                    r["index"], r["area"], r["quality"], r["growth"], r["overlap"], r["area"] / w["seed_area"]
                ),
                rules,
            ):
                break
            kept.append(r)
        if len(kept) == len(recs) and recs:
            area += recs[-1]["area"] * w[f"{d}_edge"]  # never stopped: charged to the edge
        for r in kept:
            inter, area = inter + r["inter"], area + r["area"]
        reached = {r["index"] for r in kept}
        for r in recs:
            if r["gt"] and r["index"] not in reached:
                split["early"] += r["gt"]  # structure voxels of slices the walk never filled
            if not r["gt"] and r["index"] in reached:
                split["over"] += r["area"]  # voxels painted past the structure's end
    return inter, area, split


def dice_of(w: dict, rules: PropagationRules) -> float:
    inter, area, _ = truncate(w, rules)
    return 2 * inter / (area + w["gt_total"])


def choose(walks: list[dict]) -> dict:
    """Per (mode, seed kind): the best stop rules of GRID, the Dice without stops and the loss split."""
    best = {}
    for key in dict.fromkeys((w["mode"], w["kind"]) for w in walks):
        ws = [w for w in walks if (w["mode"], w["kind"]) == key]
        base = json.loads(key[0])
        scored = []
        for combo in itertools.product(*GRID.values()):
            rules = PropagationRules(**base, **dict(zip(GRID, combo, strict=True)))
            scored.append((float(np.mean([dice_of(w, rules) for w in ws])), combo))
        top, combo = max(scored, key=lambda t: t[0])
        rules = PropagationRules(**base, **dict(zip(GRID, combo, strict=True)))
        splits = [truncate(w, rules)[2] for w in ws]
        best[f"{key[0]} {key[1]}"] = {
            "dice": round(top, 4),
            **dict(zip(GRID, combo, strict=True)),
            "no_stop_dice": round(
                float(np.mean([dice_of(w, PropagationRules(**base, **NO_STOP)) for w in ws])), 4
            ),
            "oracle_dice": round(float(np.mean([w["oracle_dice"] for w in ws])), 4),
            "per_structure": {w["structure"]: round(dice_of(w, rules), 3) for w in ws},
            "early_voxels": int(sum(s["early"] for s in splits)),
            "over_voxels": int(sum(s["over"] for s in splits)),
        }
    return best


def recording_arguments(ap: argparse.ArgumentParser, structures: str, modes: str, kinds: str) -> None:
    """The options of a script that records propagation walks (this one and propagation_grid.py)."""
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument("--structures", default=structures)
    ap.add_argument("--modes", default=modes, help="JSON list of PropagationRules prompt-field objects")
    ap.add_argument("--kinds", default=kinds, help="seed kinds: box,click")
    ap.add_argument("--beyond", type=int, default=4, help="slices recorded past the structure's end")
    ap.add_argument("--emb-dir", type=Path, default=None, help="embeddings stored by encode_slices.py")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded CPU)")


def training_structures(arg: str) -> tuple[dict, list[str]]:
    """(AAL id -> name, the structures named in ``arg``); exits when one is held out or not AAL's."""
    names = read_aal_names(TEMPLATES / "aal.nii.txt")
    held = {f"{s}_{side}" for s in HELDOUT_AAL_STRUCTURES for side in "LR"}
    wanted = [s.strip() for s in arg.split(",")]
    bad = [s for s in wanted if s in held or s not in names.values()]
    if bad:
        sys.exit(f"--structures: {bad} are held out of training or not AAL names; tune on training ones")
    return names, wanted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recording_arguments(ap, ",".join(TUNE_STRUCTURES), '[{"prompt": "box+mask"}]', "box")
    ap.add_argument("--out", type=Path, default=None, help="write every record here (JSON)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None, help="choose from these --out files")
    args = ap.parse_args(argv)
    if args.combine:
        walks = [w for p in args.combine for w in json.loads(p.read_text())["walks"]]
        print(json.dumps({"benchmark": "tune_propagation", "best": choose(walks)}, default=str))
        return 0
    import torch

    from imis.models import load_model

    torch.set_num_threads(args.threads)
    names, wanted = training_structures(args.structures)
    image, aal = read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")
    model = load_model(args.model)
    slices = Slices(model, image.array, args.emb_dir)
    by_name = {v: k for k, v in names.items()}
    modes = json.loads(args.modes)
    walks, t0 = [], time.perf_counter()
    for s in wanted:
        gt = aal.array == by_name[s]
        seed = int(np.argmax(gt.sum(axis=(1, 2))))
        orc = oracle(model, slices, gt)
        oracle_dice = 2 * sum(i for i, _ in orc.values()) / (sum(a for _, a in orc.values()) + gt.sum())
        for mode in modes:
            rules = PropagationRules(**mode)
            for kind in args.kinds.split(","):
                pred, _ = seed_prediction(model, slices[seed], gt[seed], kind, rules)
                w = {
                    "structure": s,
                    "mode": json.dumps(mode, sort_keys=True),
                    "kind": kind,
                    "gt_total": int(gt.sum()),
                    "seed": seed,
                    "seed_area": int(pred.mask.sum()),
                    "seed_inter": int((pred.mask & gt[seed]).sum()),
                    "oracle_dice": float(oracle_dice),
                }
                for d, step in (("down", -1), ("up", 1)):
                    w[d] = (
                        walk(model, slices, gt, pred, seed, step, rules, args.beyond)
                        if pred.mask.any()
                        else []
                    )
                    end = w[d][-1]["index"] if w[d] else seed
                    w[f"{d}_edge"] = (gt.shape[0] - 1 - end) if step > 0 else end
                walks.append(w)
        if args.out:  # after every structure, so a run cut short still gives its records
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"model": args.model, "walks": walks}, default=float))
        print(f"{s}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out = {
        "benchmark": "tune_propagation",
        "model": args.model,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps({**out, "best": choose(walks)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
