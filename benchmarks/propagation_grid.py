"""Grid search of propagation prompts and stop rules on Colin27 AAL structures that were in imis-lite's training.

Never on the 24 held-out structures (imis.data.brain_templates.HELDOUT_AAL_STRUCTURES): refused. For each
structure, seed kind (tight ground-truth box, or one click at the interior point, on the largest axial
slice) and prompt mode (PropagationRules prompt fields as JSON, e.g. ``{"neg_clicks": 4}``), both
directions are walked *without* stopping, with the same functions VolumeSession.propagate uses
(predict_next, slice_record), to the structure's end plus ``--beyond`` slices or an empty prediction.
Every slice's stop signals (imis.session.propagation.SliceRecord) and its intersection with the ground
truth are recorded. A stop rule only truncates a walk, so every combination of STOP_GRID is scored
exactly from the records, vectorised: 3D Dice = 2 sum(inter) / (sum(area) + |GT|), a walk that is still
going at the end of its recording being charged its last area on every slice to the volume's edge (no
credit for a rule that never stops), as benchmarks/volume_heldout.py charges it.

Records are cached per mode in ``--cache`` (a JSON file per mode), so a new grid costs no decoding.
Prints one JSON line: per (mode, seed kind) the best stop rule and its mean Dice, the Dice of the
default rules, of no stop, and the per-slice oracle; ``--rules`` scores one given rule set too.

    PYTHONPATH=src:benchmarks python benchmarks/propagation_grid.py --emb-dir runs/emb/imis-lite \\
        --modes '[{}, {"neg_clicks": 4}]' --kinds box,click
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
from tune_propagation import Slices, recording_arguments, seed_prediction, training_structures

from imis.io import read_image
from imis.models.interactive import PromptSpec
from imis.prompts import tight_box
from imis.prompts.seed import SEED_AXES, largest_section, seed_axes
from imis.session.propagation import PropagationRules, default_rules, predict_next, seed_reach, slice_record

TEMPLATES = Path("/usr/share/mricron/templates")
SPACING_ZYX = (1.0, 1.0, 1.0)  # Colin27's voxels (mm), checked in main
# The eight training structures the earlier rules were chosen on (docs/volumes.md): deep nucleus,
# orbital, vermis, occipital, opercular, cingulate, cuneus and parietal cortex.
TRAIN_STRUCTURES = (
    "Pallidum_L",
    "Olfactory_R",
    "Vermis_4_5",
    "Lingual_R",
    "Rolandic_Oper_R",
    "Cingulum_Ant_R",
    "Cuneus_L",
    "SupraMarginal_R",
)
# Stop-rule field -> values tried, and whether a record stops when its signal is below ("min") or above.
STOP_GRID: dict[str, tuple[float, ...]] = {
    "min_quality": (0.0, 0.4, 0.5, 0.55, 0.6),
    "min_area": (1,),
    "max_growth": (1.1, 1.2, 1.3, float("inf")),
    "min_overlap": (0.0, 0.5),
    "min_seed_ratio": (0.0, 0.2, 0.3, 0.4),
    "min_stability": (0.0, 0.5, 0.7, 0.8, 0.9),
    "min_quality_ratio": (0.0, 0.6, 0.7, 0.8, 0.9),
    "min_iou_prev": (0.0, 0.5, 0.6, 0.7, 0.8),
    "max_reach": (0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, float("inf")),
}
SIGNAL = {
    "min_quality": "quality",
    "min_area": "area",
    "max_growth": "growth",
    "min_overlap": "overlap",
    "min_seed_ratio": "seed_ratio",
    "min_stability": "stability",
    "min_quality_ratio": "quality_ratio",
    "min_iou_prev": "iou_prev",
    "max_reach": "reach",
}
STOP_FIELDS = tuple(SIGNAL)
PROMPT_FIELDS = {f.name for f in fields(PropagationRules)} - set(STOP_FIELDS) - {"batch_size", "max_slices"}


def record_walk(model, slices, gt: np.ndarray, seed_pred, seed: int, step: int, rules, beyond: int):
    """One unstopped walk: per slice the SliceRecord fields, 'inter' and 'gt' (voxels) and the mask."""
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    last = min(gt.shape[0] - 1, zs.max() + beyond) if step > 0 else max(0, zs.min() - beyond)
    prev, prev_logits = seed_pred.mask, seed_pred.low_res_logits
    seed_area = int(seed_pred.mask.sum())
    per_slice = seed_reach(seed_area, SPACING_ZYX, 0)
    out = []
    for i in range(seed + step, last + step, step):
        pred = predict_next(model, slices[i], prev, prev_logits, rules, seed_pred.mask)
        rec = slice_record(i, pred, prev, seed_area, seed_pred.quality, abs(i - seed) * per_slice)
        out.append(
            {
                **asdict(rec),
                "inter": int((pred.mask & gt[i]).sum()),
                "gt": int(gt[i].sum()),
                "mask": pred.mask,
            }
        )
        if rec.area == 0:
            break
        prev, prev_logits = pred.mask, pred.low_res_logits
    return out


def oracle_dice(model, slices, gt: np.ndarray) -> float:
    """3D Dice of the tight ground-truth box on every slice of the structure (the ceiling)."""
    inter = area = 0
    for k in np.nonzero(gt.any(axis=(1, 2)))[0]:
        m = model.decode(slices[int(k)], PromptSpec(box=np.asarray(tight_box(gt[k]), np.float32))).mask
        inter, area = inter + int((m & gt[k]).sum()), area + int(m.sum())
    return 2 * inter / (area + int(gt.sum()))


def record_mode(
    model, slices, aal, by_name, structures, mode: dict, kinds, beyond: int, seed_axis: str = "z"
) -> list[dict]:
    """Walks of every structure and seed kind for one prompt mode (masks dropped). ``slices``: one
    :class:`Slices` per array axis; ``seed_axis``: where the seed section is looked for
    (imis.prompts.seed.SEED_AXES); the walk runs along the seed's axis, recorded in the volume
    moved so that axis comes first (Colin27's voxels are isotropic, so the reach needs no other change)."""
    rules = PropagationRules(**mode)
    walks = []
    for s in structures:
        ax, seed, _ = largest_section(aal == by_name[s], SPACING_ZYX, seed_axes(seed_axis))
        gt = np.moveaxis(aal == by_name[s], ax, 0)
        for kind in kinds:
            pred, _ = seed_prediction(model, slices[ax][seed], gt[seed], kind, rules)
            w = {
                "structure": s,
                "axis": "zyx"[ax],
                "seed": seed,
                "kind": kind,
                "gt_total": int(gt.sum()),
                "seed_area": int(pred.mask.sum()),
                "seed_inter": int((pred.mask & gt[seed]).sum()),
            }
            for d, step in (("down", -1), ("up", 1)):
                recs = (
                    record_walk(model, slices[ax], gt, pred, seed, step, rules, beyond)
                    if pred.mask.any()
                    else []
                )
                w[d] = [{k: v for k, v in r.items() if k != "mask"} for r in recs]
                end = recs[-1]["index"] if recs else seed
                w[f"{d}_edge"] = (gt.shape[0] - 1 - end) if step > 0 else end
            walks.append(w)
    return walks


def charged_slices(recs: list[dict], edge: int, max_reach: float) -> int:
    """Slices past a recording that never stopped which the walk would still fill: to the volume's edge,
    or to where the reach rule stops it (the charge: each gets the last mask, none of it counted right)."""
    if not recs or not np.isfinite(max_reach):
        return edge
    per_slice = recs[0]["reach"]  # the first record is one slice from the seed
    allowed = int(np.floor(max_reach / per_slice + 1e-9)) if per_slice > 0 else edge + len(recs)
    return max(0, min(edge, allowed - len(recs)))


def cache_tag(
    model: str, mode: dict, structures: list[str], kinds: tuple[str, ...], beyond: int, seed_axis: str = "z"
) -> str:
    """Records' file name: from every prompt field as resolved (a changed default is a new recording)
    and the seed-axis choice (the axial one keeps the earlier rounds' names)."""
    rules = PropagationRules(**mode)
    resolved = json.dumps({f: getattr(rules, f) for f in sorted(PROMPT_FIELDS)})
    axis = "" if seed_axis == "z" else f" seed_axis={seed_axis}"
    return hashlib.sha1(f"{model} {resolved} {structures} {kinds} {beyond}{axis}".encode()).hexdigest()[:12]


def fill_reach(walks: list[dict]) -> None:
    """Add the reach signal to records made before it was recorded (it follows from index and seed area)."""
    for w in walks:
        per_slice = seed_reach(w["seed_area"], SPACING_ZYX, 0) if w["seed_area"] else 0.0
        for d, step in (("down", -1), ("up", 1)):
            if w[d]:
                seed = w[d][0]["index"] - step
                for r in w[d]:
                    r.setdefault("reach", abs(r["index"] - seed) * per_slice)


def _first_stops(recs: list[dict]) -> dict[str, np.ndarray]:
    """Per stop field: for each of its grid values, the index of the first record it stops at (len: none)."""
    n = len(recs)
    out = {}
    empty = next((j for j, r in enumerate(recs) if r["area"] == 0), n)
    for f, values in STOP_GRID.items():
        sig = np.array([r[SIGNAL[f]] for r in recs], float)
        firsts = []
        for v in values:
            bad = sig > v if f.startswith("max_") else sig < v
            hit = np.nonzero(bad)[0]
            firsts.append(min(empty, int(hit[0]) if len(hit) else n))
        out[f] = np.array(firsts)
    return out


def score_grid(walks: list[dict], per_walk: bool = False) -> tuple[np.ndarray, list[tuple]]:
    """Mean 3D Dice over ``walks`` of every STOP_GRID combination (vectorised), and the combinations;
    ``per_walk``: the (walks, combinations) Dice instead of the mean."""
    combos = list(itertools.product(*(range(len(v)) for v in STOP_GRID.values())))
    idx = np.array(combos)  # (C, F)
    rows = []
    for w in walks:
        inter = np.full(len(combos), float(w["seed_inter"]))
        area = np.full(len(combos), float(w["seed_area"]))
        for d in ("down", "up"):
            recs = w[d]
            if not recs:
                continue
            firsts = _first_stops(recs)
            k = np.min(np.stack([firsts[f][idx[:, j]] for j, f in enumerate(STOP_GRID)]), axis=0)
            ci = np.concatenate([[0], np.cumsum([r["inter"] for r in recs])])
            ca = np.concatenate([[0], np.cumsum([r["area"] for r in recs])])
            charge = np.array([charged_slices(recs, w[f"{d}_edge"], v) for v in STOP_GRID["max_reach"]])
            reach_col = list(STOP_GRID).index("max_reach")
            inter += ci[k]
            area += ca[k] + np.where(k == len(recs), recs[-1]["area"] * charge[idx[:, reach_col]], 0)
        rows.append(2 * inter / (area + w["gt_total"]))
    values = [tuple(list(STOP_GRID.values())[j][i] for j, i in enumerate(c)) for c in combos]
    table = np.stack(rows)
    return (table if per_walk else table.mean(axis=0)), values


def leave_one_out(table: np.ndarray) -> float:
    """Mean Dice of each walk under the combination chosen on the other walks: how well choosing on
    these few structures carries to a structure the choice has not seen."""
    n = len(table)
    rest = (table.sum(axis=0, keepdims=True) - table) / max(1, n - 1)
    return float(np.mean([table[i, int(np.argmax(rest[i]))] for i in range(n)]))


def dice_with(w: dict, rules: PropagationRules) -> float:
    """3D Dice of one walk cut by ``rules`` (same charge as score_grid)."""
    from imis.session.propagation import SliceRecord, stop_reason

    inter, area = w["seed_inter"], w["seed_area"]
    for d in ("down", "up"):
        kept = 0
        for r in w[d]:
            if stop_reason(SliceRecord.from_row(r), rules):
                break
            inter, area, kept = inter + r["inter"], area + r["area"], kept + 1
        if w[d] and kept == len(w[d]):
            area += w[d][-1]["area"] * charged_slices(w[d], w[f"{d}_edge"], rules.max_reach)
    return 2 * inter / (area + w["gt_total"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recording_arguments(ap, ",".join(TRAIN_STRUCTURES), "[{}]", "box,click")
    ap.add_argument("--rules", default=None, help="also score this JSON stop rule set per mode")
    ap.add_argument(
        "--seed-axis", choices=SEED_AXES, default="z", help="where the seed section is looked for"
    )
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="encoder precision")
    ap.add_argument("--cache", type=Path, default=Path("runs/propagation_grid"), help="records per mode")
    args = ap.parse_args(argv)
    import torch

    from imis.models import load_model

    torch.set_num_threads(args.threads)
    names, wanted = training_structures(args.structures)
    modes = json.loads(args.modes)
    unknown = [k for m in modes for k in m if k not in PROMPT_FIELDS]
    if unknown:
        sys.exit(f"--modes: {unknown} are not prompt fields of PropagationRules ({sorted(PROMPT_FIELDS)})")
    kinds = tuple(args.kinds.split(","))
    image, aal = read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")
    if tuple(reversed(aal.geometry.spacing)) != SPACING_ZYX:
        sys.exit(f"{aal.source}: expected 1 mm voxels, got spacing {aal.geometry.spacing}")
    model = None
    slices = None
    by_name = {v: k for k, v in names.items()}
    args.cache.mkdir(parents=True, exist_ok=True)
    out: dict = {"benchmark": "propagation_grid", "model": args.model, "structures": wanted, "modes": {}}
    out["seed_axis"] = args.seed_axis
    t0 = time.perf_counter()
    for mode in modes:
        key = json.dumps(mode, sort_keys=True)
        tag = cache_tag(args.model, mode, wanted, kinds, args.beyond, args.seed_axis)
        cache = args.cache / f"{tag}.json"
        if cache.exists():
            walks = json.loads(cache.read_text())["walks"]
        else:
            if model is None:
                model = load_model(args.model, dtype=torch.bfloat16 if args.precision == "bf16" else None)
                slices = [Slices(model, image.array, args.emb_dir, ax) for ax in range(3)]
            walks = record_mode(
                model, slices, aal.array, by_name, wanted, mode, kinds, args.beyond, args.seed_axis
            )
            cache.write_text(json.dumps({"mode": mode, "walks": walks}))
            print(f"{key}: recorded, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        fill_reach(walks)
        for kind in kinds:
            ws = [w for w in walks if w["kind"] == kind]
            table, values = score_grid(ws, per_walk=True)
            scores = table.mean(axis=0)
            top = int(np.argmax(scores))
            best = dict(zip(STOP_GRID, values[top], strict=True))
            row = {
                "best_dice": round(float(scores[top]), 4),
                "leave_one_structure_out_dice": round(leave_one_out(table), 4),
                "best_rules": best,
                "best_per_structure": {
                    w["structure"]: round(dice_with(w, PropagationRules(**mode, **best)), 3) for w in ws
                },
                # this mode's prompt with the seed kind's default stops (imis.session.propagation)
                "default_rules_dice": round(
                    float(np.mean([dice_with(w, replace(default_rules(kind), **mode)) for w in ws])), 4
                ),
            }
            # the best rule set without the three model-signal stops, to see what they add
            old = [
                i
                for i, v in enumerate(values)
                if v[list(STOP_GRID).index("min_stability")] == 0
                and v[list(STOP_GRID).index("min_quality_ratio")] == 0
                and v[list(STOP_GRID).index("min_iou_prev")] == 0
            ]
            j = old[int(np.argmax(scores[old]))]
            row["best_without_model_signals_dice"] = round(float(scores[j]), 4)
            row["best_without_model_signals_rules"] = dict(zip(STOP_GRID, values[j], strict=True))
            if args.rules:
                given = json.loads(args.rules)
                row["given_rules_dice"] = round(
                    float(np.mean([dice_with(w, PropagationRules(**mode, **given)) for w in ws])), 4
                )
            out["modes"][f"{key} {kind}"] = row
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
