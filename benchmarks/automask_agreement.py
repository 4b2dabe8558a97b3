"""Automask on btcv-demo's test split against the released imasks and the ground truth.

For each model (at `--precision auto`, as `imis automask` runs it), each of the 14 test slices is
encoded once and its click grid decoded once (predicted IoU >= 0.3, no stability filter; --cache keeps
these pools); the candidates then go through these variants (`variants_for`):

  qc                      the paper's thresholds (IoU 0.85, stability 0.95, 0.5% min area) + GT QC
                          (the `imis automask` default)
  no-gt                   `imis automask --no-gt`: the segment-everything defaults chosen on train
                          (IoU 0.5, stability 0.6, click consensus 0.5, NMS on it, 0.05% min area)
  paper-no-gt             the paper's thresholds without GT QC (`--no-gt` before the consensus rule)
  paper-no-gt-stability0  the same without the stability filter

Reported per variant: masks per image and image coverage (ours and released), the mean best-IoU of
each released imask region against our regions, and the recall of the GT organ masks (a GT mask is
found when one of our regions has IoU >= 0.5 / 0.75 with it). Prints one JSON line; --out writes it.
Run: `PYTHONPATH=src .venv/bin/python benchmarks/automask_agreement.py --models imis-lite litemedsam`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from imis.automask.generate import click_cells, generate_candidates
from imis.automask.pipeline import native_regions, select_masks
from imis.automask.qc import apply_gt_qc, clean_regions, paint_id_map
from imis.automask.settings import AutomaskSettings
from imis.data.formats import imed

FLOOR = 0.3  # candidates decoded down to this predicted IoU: one cached pool serves every variant


def variants_for(pps: int) -> dict[str, AutomaskSettings]:
    """The rows of the table: `imis automask` with GT QC, with --no-gt, and the paper's thresholds
    without GT (the --no-gt defaults before the click-consensus rule), with and without stability."""
    paper = AutomaskSettings(points_per_side=pps)
    return {
        "qc": paper,
        "no-gt": AutomaskSettings.segment_everything(points_per_side=pps),
        "paper-no-gt": dataclasses.replace(paper, gt_qc=False),
        "paper-no-gt-stability0": dataclasses.replace(paper, gt_qc=False, stability_thresh=0.0),
    }


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every non-zero id of id map ``a`` with every non-zero id of ``b`` (rows: a's ids 1..)."""
    na, nb = int(a.max()), int(b.max())
    pair = np.bincount((a.ravel() * (nb + 1) + b.ravel()), minlength=(na + 1) * (nb + 1))
    inter = pair.reshape(na + 1, nb + 1)[1:, 1:].astype(np.float64)
    area_a = np.bincount(a.ravel(), minlength=na + 1)[1:, None]
    area_b = np.bincount(b.ravel(), minlength=nb + 1)[None, 1:]
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def gt_recall_ious(gt: np.ndarray, ids: np.ndarray) -> list[float]:
    out = []
    for c in range(gt.shape[0]):
        if not gt[c].any():
            continue
        if ids.max() == 0:
            out.append(0.0)
            continue
        out.append(float(iou_matrix(gt[c].astype(np.int64), ids).max()))
    return out


def variant_id_map(cand, emb, gt, names, s: AutomaskSettings):
    """The id map `imis automask` writes with settings ``s``, from the cached candidate pool."""
    if cand.cell is None and len(cand):
        cand.cell = click_cells(cand.point, emb, tuple(cand.logits.shape[-2:]))
    keep = np.flatnonzero((cand.stability >= s.stability_thresh) & (cand.iou >= s.iou_thresh))
    sel = select_masks(cand.select(keep), s)
    regions = native_regions(sel, emb, s.mask_threshold)
    if s.gt_qc:
        regions = apply_gt_qc(regions, gt, names, s.box_overlap)
    regions = clean_regions(regions, s.morphology)
    hw = gt.shape[1:]
    return paint_id_map(regions, int(np.ceil(s.min_area * hw[0] * hw[1])), hw)[0]


def candidate_pool(model, model_name: str, e, settings: AutomaskSettings, floor: float, cache: Path | None):
    """(embedding, candidates at predicted IoU >= floor, no stability filter, CPU s): one decode of the
    click grid per image, cached in ``cache`` (the variants are then evaluated from the cache)."""
    path = (
        None if cache is None else cache / f"{model_name}_{e.stem}_pps{settings.points_per_side}_f{floor}.pt"
    )
    if path is not None and path.exists():
        return torch.load(path, weights_only=False)
    t0 = time.process_time()
    emb = model.encode(imed.read_image(e.image), str(e.image))
    cand = generate_candidates(
        model, emb, dataclasses.replace(settings, iou_thresh=floor, stability_thresh=0.0, batch_size=64)
    )
    out = (emb, cand, time.process_time() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def evaluate(model_name: str, ds, entries, settings: AutomaskSettings, variants: dict, cache=None) -> dict:
    """Every variant on every entry, from one candidate pool per image (FLOOR, no stability)."""
    from imis.automask.loading import load_automask_model

    model = load_automask_model(model_name, None, "cpu", "torch", "auto")
    stats = {k: {"masks": [], "coverage": [], "best_iou": [], "gt_iou": []} for k in variants}
    released = {"masks": [], "coverage": []}
    t_gen = []
    floor = min([v.iou_thresh for v in variants.values()] + [FLOOR])
    for e in entries:
        gt = imed.read_label(e.label)
        names = ds.label_names(gt.shape[0])
        rel = imed.read_imask(e.imask)
        released["masks"].append(int(len(np.unique(rel[rel > 0]))))
        released["coverage"].append(float((rel > 0).mean()))
        emb, cand, cpu = candidate_pool(model, model_name, e, settings, floor, cache)
        t_gen.append(cpu)
        for k, v in variants.items():
            ids = variant_id_map(cand, emb, gt, names, v)
            s = stats[k]
            s["masks"].append(int(ids.max()))
            s["coverage"].append(float((ids > 0).mean()))
            if rel.max() > 0:
                best = iou_matrix(rel, ids).max(1) if ids.max() > 0 else np.zeros(int(rel.max()))
                present = np.bincount(rel.ravel(), minlength=int(rel.max()) + 1)[1:] > 0
                s["best_iou"].extend(best[present].tolist())
            s["gt_iou"].extend(gt_recall_ious(gt, ids))
        print(f"{model_name} {e.stem}: {len(cand)} candidates, {t_gen[-1]:.1f} CPU s", flush=True)
    out = {"cpu_s_per_image_generation": round(float(np.mean(t_gen)), 2)}
    for k, s in stats.items():
        g = np.asarray(s["gt_iou"])
        out[k] = {
            "masks_per_image": round(float(np.mean(s["masks"])), 2),
            "coverage": round(float(np.mean(s["coverage"])), 3),
            "released_regions_mean_best_iou": round(float(np.mean(s["best_iou"])), 3),
            "gt_masks": len(g),
            "recall@0.5": round(float((g >= 0.5).mean()), 3),
            "recall@0.75": round(float((g >= 0.75).mean()), 3),
        }
    out["released"] = {
        "masks_per_image": round(float(np.mean(released["masks"])), 2),
        "coverage": round(float(np.mean(released["coverage"])), 3),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--models", nargs="+", default=["imis-lite", "litemedsam"])
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--split", default="test", help="btcv-demo split (test; train to choose settings)")
    ap.add_argument("--every", type=int, default=1, help="every Nth image of the split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="folder caching each image's candidate pool")
    ap.add_argument("--shard", default="0/1", help="I/N: only every Nth image from the Ith (fill a cache)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = imed.read_dataset(args.shared / "data" / "btcv-demo")
    entries = ds.split(args.split)[:: args.every][: args.limit]
    i, n = (int(v) for v in args.shard.split("/"))
    entries = entries[i::n]
    variants = variants_for(args.points_per_side)
    settings = AutomaskSettings(points_per_side=args.points_per_side)
    result = {
        "benchmark": "automask_agreement",
        "dataset": f"btcv-demo {args.split}",
        "variants": {k: v.to_json() for k, v in variants.items()},
        "images": len(entries),
        "points_per_side": args.points_per_side,
        "settings": settings.to_json(),
        "torch_threads": args.threads,
    }
    for m in args.models:
        result[m] = evaluate(m, ds, entries, settings, variants, args.cache)
    line = json.dumps(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(line)


if __name__ == "__main__":
    main()
