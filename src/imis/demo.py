"""The main job on embedded real data (`make run`, `imis demo`).

Segments every ground-truth structure of btcv-demo's test split (real abdominal CT, cases 037-039)
with the embedded model from tight boxes, prints per-organ and mean Dice, and writes one slice's
label map and overlay. When Colin27 + AAL (Debian mricron-data) are installed, a few brain structures
of a real MRI volume are segmented too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from imis.bench.metrics import dice
from imis.data.formats import imed
from imis.errors import ImisError, InputError
from imis.prompts import tight_box

COLIN_DIR = Path("/usr/share/mricron/templates")
# AAL labels with compact shapes, segmented on the axial slice through their largest extent.
AAL_TARGETS = {"Thalamus_L": 77, "Caudate_R": 72, "Putamen_L": 73, "Hippocampus_R": 38}


def run_btcv(model, dataset_root: Path, out: Path, progress: bool = True) -> dict:
    from imis.io import write_label_map, write_overlay_png
    from imis.session import Session

    ds = imed.read_dataset(dataset_root)
    session = Session(model, cache_size=2)
    per_target: dict[str, list[float]] = defaultdict(list)
    example = None  # the largest liver of the split: (area, stem, image, predicted mask)
    t0 = time.perf_counter()
    for entry in tqdm(ds.split("test"), desc="btcv-demo test", unit="img", disable=not progress):
        image = imed.read_image(entry.image)
        labels = imed.read_label(entry.label)
        session.set_image(image, name=str(entry.image))
        for c in range(labels.shape[0]):
            gt = labels[c]
            if not gt.any():
                continue
            pred = session.predict(box=tight_box(gt))
            session.reset()
            name = ds.labels[c + 1]
            per_target[name].append(dice(pred.mask, gt))
            if name == "liver" and (example is None or gt.sum() > example[0]):
                example = (int(gt.sum()), entry.stem, image, pred.mask)
    if example is not None:
        _, stem, image, mask = example
        out.mkdir(parents=True, exist_ok=True)
        write_label_map(out / f"{stem}_liver.png", mask.astype(np.uint8))
        write_overlay_png(out / f"{stem}_liver_overlay.png", image, mask.astype(np.uint8))
    seconds = time.perf_counter() - t0
    scores = [d for v in per_target.values() for d in v]
    return {
        "dataset": "btcv-demo:test",
        "model": model.name,
        "prompt": "tight box",
        "masks": len(scores),
        "mean_dice": float(np.mean(scores)) if scores else float("nan"),
        "per_target": {k: float(np.mean(v)) for k, v in sorted(per_target.items())},
        "seconds": seconds,
    }


def run_colin(model, out: Path) -> dict | None:
    from imis.io import read_image, write_overlay_png
    from imis.session import Session

    t1, aal = COLIN_DIR / "ch2.nii.gz", COLIN_DIR / "aal.nii.gz"
    if not (t1.is_file() and aal.is_file()):
        return None
    vol = read_image(t1).array
    lab = read_image(aal).array
    session = Session(model)
    scores = {}
    for name, value in AAL_TARGETS.items():
        mask3d = lab == value
        z = int(np.argmax(mask3d.sum(axis=(1, 2))))
        gt = mask3d[z]
        session.set_image(vol, axis="z", index=z)
        pred = session.predict(box=tight_box(gt))
        scores[name] = dice(pred.mask, gt)
        if name == "Thalamus_L":
            write_overlay_png(out / f"colin27_z{z}_{name}_overlay.png", vol[z], pred.mask.astype(np.uint8))
    return {
        "dataset": "colin27+aal",
        "model": model.name,
        "prompt": "tight box",
        "masks": len(scores),
        "mean_dice": float(np.mean(list(scores.values()))),
        "per_target": scores,
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--shared", type=Path, default=Path("../shared"), help="folder holding data/btcv-demo")
    ap.add_argument("--model", default="litemedsam", help="registry model to run (default litemedsam)")
    ap.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")


def run(args: argparse.Namespace) -> int:
    """The demo as a CLI command; user errors propagate as ImisError (the CLI prints them)."""
    from imis.cli import print_table
    from imis.models import load_model

    btcv = args.shared / "data" / "btcv-demo"
    if not (btcv / "dataset.json").is_file():
        raise InputError(f"{btcv}: btcv-demo not found (pass --shared)")
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    results = [run_btcv(model, btcv, args.out)]
    colin = run_colin(model, args.out)
    if colin is not None:
        results.append(colin)
    else:
        print("Colin27/AAL not installed (apt-get install mricron-data): brain part skipped", file=sys.stderr)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    rows = [
        {"dataset": r["dataset"], "target": target, "dice": f"{d:.3f}"}
        for r in results
        for target, d in r["per_target"].items()
    ]
    print_table(rows)
    print()
    summary = [
        {
            "dataset": r["dataset"],
            "model": r["model"],
            "prompt": r["prompt"],
            "masks": r["masks"],
            "mean Dice": f"{r['mean_dice']:.3f}",
        }
        for r in results
    ]
    print_table(summary)
    print(f"\nwrote {args.out}/ (label map, overlays, results.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="imis demo", description=__doc__)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except ImisError as exc:
        print(f"imis demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
