"""How to turn the page's scribbles and lassos into model prompts: Dice of candidate rules on btcv-demo's
TRAINING split (never test) with imis-lite; prints one JSON line.

Simulated user strokes, per organ of at least MIN_AREA pixels:
  scribble  a stroke along the organ's long axis through its deepest point, inside the organ eroded by
            3 px, with a 2 px sinusoidal wobble, sampled every pixel as a mouse would
  lasso     the organ's outline dilated by 3-8 px (random), every 6th vertex, each jittered by up to 2 px
Rules measured (one stroke on an empty object):
  scribble_k    k clicks spread along the stroke by arc length (imis.app.strokes.resample)
  lasso_box     the polygon's bounding box; lasso_box_k: plus k positive clicks deep inside it
  lasso_points3 3 positive clicks deep inside the polygon, no box
  lasso_box_mask  the box plus the filled polygon as the model's low-res mask input (+-MASK_LOGIT); a mask
                alone is no prompt to these models
Usage: python benchmarks/stroke_prompts.py [--images 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import measure

from imis.app.strokes import deep_points, polygon_mask, resample
from imis.io import read_image
from imis.models import load_model
from imis.models.interactive import PromptSpec
from imis.models.preprocess import frame_for

REPO = Path(__file__).resolve().parents[1]
BTCV = Path(os.environ.get("IMIS_SHARED", REPO.parent / "shared")) / "data" / "btcv-demo"
MIN_AREA = 400
MASK_LOGIT = 8.0


def labels_of(entry: dict) -> np.ndarray:
    dense = scipy.sparse.load_npz(BTCV / entry["label"]).toarray()
    return dense.reshape(dense.shape[0], 512, 512) > 0


def sim_scribble(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    inner = ndimage.binary_erosion(mask, iterations=3)
    if not inner.any():
        inner = mask
    ys, xs = np.nonzero(inner)
    cov = np.cov(np.stack([xs, ys]))
    axis = np.linalg.eigh(cov)[1][:, -1]
    normal = np.array([-axis[1], axis[0]])
    depth = ndimage.distance_transform_edt(inner)
    y0, x0 = np.unravel_index(int(np.argmax(depth)), depth.shape)
    start = np.array([x0, y0], dtype=float)
    pts = []
    for sign in (-1, 1):  # walk both ways from the deepest point while inside
        t = 0.0
        while True:
            p = start + sign * t * axis
            x, y = int(round(p[0])), int(round(p[1]))
            if not (0 <= x < 512 and 0 <= y < 512 and inner[y, x]):
                break
            pts.append((sign * t, p))
            t += 1.0
    if len(pts) < 3:
        return None
    pts.sort(key=lambda tp: tp[0])
    arr = np.array([p for _, p in pts])
    phase = rng.uniform(0, 2 * np.pi)
    wob = 2.0 * np.sin(np.linspace(0, 3 * np.pi, len(arr)) + phase)
    arr = arr + wob[:, None] * normal[None]
    return arr


def sim_lasso(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grown = ndimage.binary_dilation(mask, iterations=int(rng.integers(3, 9)))
    contours = measure.find_contours(grown.astype(float), 0.5)
    contour = max(contours, key=len)[::6]
    xy = contour[:, ::-1] + rng.uniform(-2, 2, contour.shape)
    return np.clip(xy, 0, 511)


def polygon_logits(pts: np.ndarray, hw: tuple[int, int], preprocess, low_hw, logit: float = MASK_LOGIT):
    """The filled polygon as the mask input of the decoder: resized into the network input's frame
    (longest side, padded bottom/right), area-averaged to the decoder's low-res size `low_hw` (the size
    of its own low-res logits), mapped to +-`logit`; a (1, 1, *low_hw) tensor."""
    frame = frame_for(hw, preprocess)
    native = torch.from_numpy(polygon_mask(pts, hw).astype(np.float32))[None, None]
    valid = F.interpolate(native, size=frame.valid_hw, mode="bilinear", align_corners=False)
    full = torch.zeros(1, 1, frame.input_size, frame.input_size)
    full[..., : frame.valid_hw[0], : frame.valid_hw[1]] = valid
    low = F.interpolate(full, size=low_hw, mode="area")
    return (low * 2 - 1) * logit


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def spec(clicks=(), box=None, mask=None) -> PromptSpec:
    return PromptSpec(
        points=np.array([[x, y] for x, y, _ in clicks], np.float32) if clicks else None,
        labels=np.array([1 if p else 0 for *_, p in clicks], np.int64) if clicks else None,
        box=np.asarray(box, np.float32) if box is not None else None,
        mask_logits=mask,
    )


def rules_for(mask, rng, frame, preprocess, low_hw) -> dict[str, PromptSpec]:
    out: dict[str, PromptSpec] = {}
    scr = sim_scribble(mask, rng)
    if scr is not None:
        for k in (1, 2, 3, 5, 8, 12):
            out[f"scribble_{k}"] = spec([(float(x), float(y), True) for x, y in np.rint(resample(scr, k))])
    poly = sim_lasso(mask, rng)
    box = (*np.floor(poly.min(0)), *np.ceil(poly.max(0)))
    filled = polygon_mask(poly, frame.orig_hw)
    out["lasso_box"] = spec(box=box)
    for k in (1, 3):
        out[f"lasso_box_{k}"] = spec([(x, y, True) for x, y in deep_points(filled, k)], box=box)
    out["lasso_points3"] = spec([(x, y, True) for x, y in deep_points(filled, 3)])
    logits = polygon_logits(poly, frame.orig_hw, preprocess, low_hw)
    out["lasso_box_mask"] = spec(box=box, mask=logits)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40, help="training images (spread over the split)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    train = json.loads((BTCV / "dataset.json").read_text())["training"]
    picked = train[:: max(1, len(train) // args.images)][: args.images]
    model = load_model("imis-lite")
    scores: dict[str, list[float]] = {}
    t0 = time.time()
    n_obj = 0
    for entry in picked:
        img = read_image(BTCV / entry["image"]).array
        emb = model.encode(img, entry["image"])
        probe = model.decode(emb, spec([(256.0, 256.0, True)]))  # the decoder's own low-res logits size
        low_hw = tuple(probe.low_res_logits.shape[-2:])
        for mask in labels_of(entry):
            if mask.sum() < MIN_AREA:
                continue
            n_obj += 1
            for name, s in rules_for(mask, rng, emb.frame, model.preprocess, low_hw).items():
                pred = model.decode(emb, s)
                scores.setdefault(name, []).append(dice(pred.mask, mask))
    result = {
        "benchmark": "stroke_prompts",
        "model": model.name,
        "split": "btcv-demo train",
        "images": len(picked),
        "objects": n_obj,
        "seconds": round(time.time() - t0, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "mean_dice": {k: round(float(np.mean(v)), 4) for k, v in scores.items()},
        "median_dice": {k: round(float(np.median(v)), 4) for k, v in scores.items()},
        "n": {k: len(v) for k, v in scores.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
