"""3D Dice / NSD@1mm / HD95 on the 24 Colin27 AAL structures held out of imis-lite's training.

Per structure: the largest cross-section (``--seed-axis z``, the default: the largest axial slice;
``largest``: over the z, y and x slices by mm^2, imis.prompts.seed.largest_section; the axis is recorded
per structure) is prompted with the tight box (or one click at the interior point) of the
ground truth, then propagated both ways along that axis. Walks are recorded *unstopped* (to the
structure's end plus --beyond slices, or an empty prediction) with each slice's mask, predicted IoU,
growth and overlap; the stop rules (imis.session.propagation) only truncate a walk, so applying the
rules measured on training structures (benchmarks/tune_propagation.py) to these records gives exactly
what `VolumeSession.propagate` returns with those rules, and the same records score any rule set. The
per-slice oracle (the tight GT box on every axial slice of the structure) is the ceiling. With
``--refine`` (imis.session.orthogonal.RefineOptions fields as JSON) the walk's 3D mask under each seed
kind's default rules (as `VolumeSession.propagate` gives it; an unstopped walk charged as below) is also
refined by orthogonal consensus and stored; --summarise scores it as the kind "box+refine" /
"click+refine".

Writes one JSON line per structure to --out (resumable: structures already there are skipped; --part
splits the structures between processes, --only runs some kinds, e.g. the oracle alone); with
--summarise FILES prints the summary as one JSON line (rows of a structure in several files are merged;
--rules gives stop-rule fields, default: each seed kind's measured rules, imis.session.propagation.default_rules).

    PYTHONPATH=src:benchmarks python benchmarks/volume_heldout.py --model imis-lite \
        --emb-dir runs/emb/imis-lite --mode '{"prompt": "box+mask"}' --out runs/heldout-imis-lite.jsonl
    PYTHONPATH=src:benchmarks python benchmarks/volume_heldout.py --summarise runs/heldout-imis-lite.jsonl
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

import numpy as np
from propagation_grid import SPACING_ZYX, charged_slices
from propagation_grid import record_walk as grid_record_walk
from tune_propagation import Slices, seed_prediction

from imis.bench.metrics import mask_metrics
from imis.data.brain_templates import heldout_aal_labels, read_aal_names
from imis.io import read_image
from imis.models.interactive import PromptSpec
from imis.prompts import tight_box
from imis.prompts.seed import SEED_AXES, largest_section, seed_axes
from imis.session.orthogonal import RefineOptions, refine_orthogonal
from imis.session.propagation import PropagationRules, SliceRecord, default_rules, seed_reach, stop_reason

TEMPLATES = Path("/usr/share/mricron/templates")


def _pack(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(mask.ravel()).tobytes()).decode()


def _unpack(text: str, shape: tuple[int, int]) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))
    return bits[: shape[0] * shape[1]].reshape(shape).astype(bool)


def record_walk(model, slices: Slices, gt: np.ndarray, seed_pred, seed: int, step: int, rules, beyond: int):
    """One unstopped walk (to the structure's end plus ``beyond`` slices, or an empty prediction): per
    slice the stop signals (SliceRecord fields) and the packed mask."""
    recs = grid_record_walk(model, slices, gt, seed_pred, seed, step, rules, beyond)
    return [
        {**{k: v for k, v in r.items() if k not in ("inter", "gt")}, "mask": _pack(r["mask"])} for r in recs
    ]


def run_structure(
    model,
    slices: list[Slices],
    gt3: np.ndarray,
    rules,
    beyond: int,
    oracle: bool,
    kinds: tuple[str, ...],
    seed_axis: str = "z",
    refine: RefineOptions | None = None,
) -> dict:
    """Records of one structure; ``slices``: one Slices per array axis; walks are recorded in the
    volume moved so that the seed's axis comes first (Colin27's voxels are isotropic)."""
    ax, seed, _ = largest_section(gt3, SPACING_ZYX, seed_axes(seed_axis))
    gt = np.moveaxis(gt3, ax, 0)
    rec = {"seed": seed, "axis": "zyx"[ax]}
    for kind in kinds:
        pred, _ = seed_prediction(model, slices[ax][seed], gt[seed], kind, rules)
        walk = slices[ax]
        rec[kind] = {
            "seed_mask": _pack(pred.mask),
            "seed_quality": pred.quality,
            "down": record_walk(model, walk, gt, pred, seed, -1, rules, beyond) if pred.mask.any() else [],
            "up": record_walk(model, walk, gt, pred, seed, 1, rules, beyond) if pred.mask.any() else [],
        }
        if refine is not None:
            walked, _ = assemble(rec, kind, gt3.shape, default_rules(kind))
            t0 = time.perf_counter()
            refined = refine_orthogonal(model, lambda a, i: slices[a][i], walked, ax, refine)
            rec[kind]["refined"] = {
                "options": refine.__dict__,
                "seconds": time.perf_counter() - t0,
                **_pack_box(refined),
            }
    if oracle:
        masks = {}
        for k in np.nonzero(gt3.any(axis=(1, 2)))[0]:
            box = np.asarray(tight_box(gt3[k]), np.float32)
            masks[int(k)] = _pack(model.decode(slices[0][int(k)], PromptSpec(box=box)).mask)
        rec["oracle"] = masks
    return rec


def _pack_box(mask: np.ndarray) -> dict:
    """A 3D mask as its bounding box (lo, hi inclusive) and the packed crop."""
    if not mask.any():
        return {"lo": [0, 0, 0], "hi": [-1, -1, -1], "mask": ""}
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    crop = mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    return {"lo": lo.tolist(), "hi": hi.tolist(), "mask": _pack(crop)}


def _unpack_box(d: dict, shape: tuple[int, int, int]) -> np.ndarray:
    vol = np.zeros(shape, bool)
    lo, hi = d["lo"], d["hi"]
    if hi[0] < lo[0]:
        return vol
    size = tuple(h - lo_ + 1 for lo_, h in zip(lo, hi, strict=True))
    bits = np.unpackbits(np.frombuffer(base64.b64decode(d["mask"]), np.uint8))
    vol[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = bits[: int(np.prod(size))].reshape(size)
    return vol


def assemble(
    rec: dict, kind: str, shape: tuple[int, int, int], rules: PropagationRules | None, charge: bool = True
) -> tuple[np.ndarray, int]:
    """The 3D mask a propagation with ``rules`` gives (kind "oracle": the per-slice oracle masks), and
    how many of its walks ran through the whole recording without a stop. Such a walk is charged its
    last mask on every slice to the volume's edge (as the tuner does), so the figure is a lower bound,
    not a flattering cut at the recording's end."""
    if kind == "oracle":
        vol = np.zeros(shape, bool)
        for k, m in rec["oracle"].items():
            vol[int(k)] = _unpack(m, shape[1:])
        return vol, 0
    if kind.endswith("+refine"):
        return _unpack_box(rec[kind.removesuffix("+refine")]["refined"], shape), 0
    # walks were recorded along the seed's axis, moved first; the mask is moved back at the end
    ax = "zyx".index(rec.get("axis", "z"))
    full_shape = shape
    shape = (shape[ax], *(n for d, n in enumerate(shape) if d != ax))
    vol = np.zeros(shape, bool)
    r = rec[kind]
    seed_mask = _unpack(r["seed_mask"], shape[1:])
    vol[rec["seed"]] = seed_mask
    unstopped = 0
    per_slice = seed_reach(int(seed_mask.sum()), SPACING_ZYX, 0)

    def reach_of(index: int) -> float:
        return abs(index - rec["seed"]) * per_slice

    for d, step in (("down", -1), ("up", 1)):
        last = None
        for s in r[d]:
            # records made before the stability / quality-ratio / IoU signals were recorded lack them
            # (1.0: never a stop); the seed ratio is recomputed for those too
            row = {
                **s,
                "seed_ratio": s["area"] / seed_mask.sum(),
                "reach": s.get("reach", reach_of(s["index"])),
            }
            if stop_reason(SliceRecord.from_row(row), rules):
                last = None
                break
            last = s
            vol[s["index"]] = _unpack(s["mask"], shape[1:])
        if last is not None and last["area"]:
            unstopped += 1
            if not charge:  # the flattering cut at the recording's end, for comparison only
                continue
            edge = shape[0] - 1 - last["index"] if step > 0 else last["index"]
            recs = [dict(x, reach=x.get("reach", reach_of(x["index"]))) for x in r[d]]
            n = charged_slices(recs, edge, rules.max_reach)
            # explicit indices: a slice stop of -1 would mean the last slice, not "past index 0"
            charged = [last["index"] + step * t for t in range(1, n + 1)]
            vol[charged] = _unpack(last["mask"], shape[1:])
    vol = np.moveaxis(vol, 0, ax)
    assert vol.shape == full_shape
    return vol, unstopped


def summarise(
    paths: list[Path], rules: PropagationRules | None, tolerance: float = 1.0, charge: bool = True
) -> dict:
    """Metrics per seed kind; rows of the same structure in several files (e.g. the oracle run on its
    own) are merged. ``rules`` None: each seed kind's measured defaults (default_rules)."""
    aal = read_image(TEMPLATES / "aal.nii.gz")
    spacing = tuple(reversed(aal.geometry.spacing))  # (z, y, x) mm
    merged: dict[str, dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                merged.setdefault(row["name"], {}).update(row)
    rows = list(merged.values())
    out: dict = {"structures": len(rows), "model": rows[0]["model"] if rows else None}
    for kind in ("box", "click", "box+refine", "click+refine", "oracle"):
        ms, unstopped, per = [], 0, {}
        for row in rows:
            base = kind.removesuffix("+refine")
            if base not in row or (base != kind and "refined" not in row[base]):
                continue
            gt = aal.array == row["label"]
            vol, n = assemble(row, kind, gt.shape, rules or default_rules(kind), charge)
            unstopped += n
            ms.append(mask_metrics(vol, gt, spacing, tolerance))
            per[row["name"]] = round(ms[-1].dice, 3)
        if ms:
            hd = [m.hd95 for m in ms]
            out[kind] = {
                "n": len(ms),
                "dice": round(float(np.mean([m.dice for m in ms])), 4),
                f"nsd@{tolerance:g}mm": round(float(np.mean([m.nsd for m in ms])), 4),
                "hd95_mm_median": round(float(np.median(hd)), 2),
                "hd95_mm_mean_finite": round(float(np.mean([h for h in hd if np.isfinite(h)])), 2),
                "walks_unstopped": unstopped,
                "dice_per_structure": per,
                "seed_axes": {
                    r["name"]: r.get("axis", "z") + str(r["seed"])
                    for r in rows
                    if kind.removesuffix("+refine") in r
                },
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument(
        "--mode", default="{}", help="PropagationRules prompt fields as JSON (default: the default rules)"
    )
    ap.add_argument("--beyond", type=int, default=4)
    ap.add_argument(
        "--seed-axis", choices=SEED_AXES, default="z", help="where the seed section is looked for"
    )
    ap.add_argument("--refine", default=None, help="RefineOptions fields as JSON: also refine orthogonally")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="encoder precision")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated kinds to run (box,click,oracle)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--part", default="0/1", help="i/n: this process runs every n-th structure from i")
    ap.add_argument("--zrange", default=None, help="LO:HI: only structures whose slices +-beyond lie inside")
    ap.add_argument("--no-charge", action="store_true", help="cut unstopped walks at the recording's end")
    ap.add_argument("--reverse", action="store_true", help="run this part's structures last to first")
    ap.add_argument(
        "--done-from", type=Path, nargs="*", default=(), help="also skip structures already in these files"
    )
    ap.add_argument("--summarise", type=Path, nargs="+", default=None, help="summarise these JSONL files")
    ap.add_argument(
        "--rules",
        default=None,
        help="PropagationRules fields as JSON for --summarise (default: per seed kind)",
    )
    ap.add_argument("--emb-dir", type=Path, default=None, help="embeddings stored by encode_slices.py")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded CPU)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.summarise:
        print(
            json.dumps(
                summarise(
                    args.summarise,
                    PropagationRules(**json.loads(args.rules)) if args.rules else None,
                    charge=not args.no_charge,
                )
            )
        )
        return 0
    from imis.models import load_model

    names = read_aal_names(TEMPLATES / "aal.nii.txt")
    held = heldout_aal_labels(names)
    image, aal = read_image(TEMPLATES / "ch2.nii.gz"), read_image(TEMPLATES / "aal.nii.gz")
    done = set()
    if args.out.exists():
        done = {json.loads(x)["name"] for x in args.out.read_text().splitlines() if x.strip()}
    model = load_model(args.model, dtype=torch.bfloat16 if args.precision == "bf16" else None)
    slices = [Slices(model, image.array, args.emb_dir, ax) for ax in range(3)]
    refine = RefineOptions(**json.loads(args.refine)) if args.refine else None
    rules = PropagationRules(**json.loads(args.mode))
    lo, hi = (int(v) for v in args.zrange.split(":")) if args.zrange else (0, image.array.shape[0])
    t0 = time.perf_counter()
    part, nparts = (int(v) for v in args.part.split("/"))
    order = list(enumerate(held.items()))
    for pos, (value, name) in reversed(order) if args.reverse else order:
        if pos % nparts != part:
            continue
        # Re-read before each structure: another process working from the other end may have done it.
        for other in args.done_from:
            if other.exists():
                done |= {json.loads(x)["name"] for x in other.read_text().splitlines() if x.strip()}
        zs = np.nonzero((aal.array == value).any(axis=(1, 2)))[0]
        if name in done or args.zrange and not (lo <= zs.min() - args.beyond and zs.max() + args.beyond < hi):
            continue
        only = (
            args.only.split(",") if args.only else ["box", "click"] + ([] if args.no_oracle else ["oracle"])
        )
        kinds = tuple(k for k in only if k != "oracle")
        rec = run_structure(
            model,
            slices,
            aal.array == value,
            rules,
            args.beyond,
            "oracle" in only,
            kinds,
            args.seed_axis,
            refine,
        )
        rec.update(name=name, label=value, model=args.model, mode=json.loads(args.mode))
        rec.update(seed_axis=args.seed_axis, precision=args.precision)
        with args.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"{name}: {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
