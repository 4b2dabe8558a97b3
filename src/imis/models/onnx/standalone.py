"""Segment one image with an `imis export` folder, using only numpy and onnxruntime (no torch, no imis).

`imis export` copies this file into the export folder as run_onnx.py. It follows manifest.json:
preprocess the image, run encoder.onnx once, build the decoder's prompt tokens, run decoder.onnx,
pick a mask token, bring the logits back to native resolution.

  python run_onnx.py image.npy --box 60,190,315,385 -o mask.npy
  python run_onnx.py image.npy --click 180,280,+ --click 100,100,- -o mask.npy [--int8]

image.npy: a 2D grey (H, W) or RGB (H, W, 3) array of any numeric dtype. Coordinates are native
pixels (x = column, y = row). The mask is saved as a bool (H, W) array; a JSON line is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

LABELS = {"pad": -1.0, "neg": 0.0, "pos": 1.0, "tl": 2.0, "br": 3.0}


def _taps(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """(n_out, n_in) matrix of a 1-D resize, as torch's interpolate (align_corners=False, no antialias)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        if mode == "nearest":
            m[i, min(int(math.floor(i * scale)), n_in - 1)] = 1.0
            continue
        src = (i + 0.5) * scale - 0.5
        if mode == "bilinear":
            src = max(src, 0.0)
            i0 = int(src)
            i1, t = min(i0 + 1, n_in - 1), src - i0
            m[i, i0] += 1.0 - t
            m[i, i1] += t
        else:  # bicubic, cubic convolution with A = -0.75, edge taps clamped
            i0 = math.floor(src)
            t = src - i0
            a = -0.75
            w = [
                ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                ((a + 2) * t - (a + 3)) * t * t + 1,
                ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
            ]
            for k in range(4):
                m[i, min(max(i0 - 1 + k, 0), n_in - 1)] += w[k]
    return m


def resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(H, W[, C]) -> (size[0], size[1][, C]) float32."""
    ry, rx = _taps(img.shape[0], size[0], mode), _taps(img.shape[1], size[1], mode)
    out = np.einsum("ij,jk...->ik...", ry, img.astype(np.float64))
    out = np.einsum("lk,ik...->il...", rx, out)
    return out.astype(np.float32)


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-8)


def preprocess(image: np.ndarray, recipe: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Native image -> ((1, 3, S, S) float32 network input, (valid_h, valid_w))."""
    a = np.asarray(image)
    a = np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a[..., :3]
    a = a.astype(np.float32)
    h, w = a.shape[:2]
    s = recipe["input_size"]
    if recipe["resize"] == "square":
        valid = (s, s)
    else:
        scale = s / max(h, w)
        valid = (int(h * scale + 0.5), int(w * scale + 0.5))
    if recipe["intensity"] == "minmax01" and recipe["minmax_before_resize"]:
        a = minmax(a)
    elif recipe["intensity"] == "imagenet" and not (a.min() >= 0 and 1 < a.max() <= 255):
        a = minmax(a) * 255.0
    a = resize(a, valid, recipe["interpolation"])
    if recipe["intensity"] == "minmax01" and not recipe["minmax_before_resize"]:
        a = minmax(a)
    if recipe["intensity"] == "imagenet":
        a = (a - np.array(recipe["mean"], np.float32)) / np.array(recipe["std"], np.float32)
    x = np.zeros((1, 3, s, s), np.float32)
    x[0, :, : valid[0], : valid[1]] = a.transpose(2, 0, 1)
    return x, valid


def tokens(clicks, box, sx: float, sy: float) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's (1, N, 2) coordinates and (1, N) labels, in the manifest's order."""
    coords, labels = [], []
    for x, y, positive in clicks:
        coords.append((x * sx, y * sy))
        labels.append(LABELS["pos"] if positive else LABELS["neg"])
    if clicks and box is None:
        coords.append((0.0, 0.0))
        labels.append(LABELS["pad"])
    if box is not None:
        coords += [(box[0] * sx, box[1] * sy), (box[2] * sx, box[3] * sy)]
        labels += [LABELS["tl"], LABELS["br"]]
    return np.array([coords], np.float32), np.array([labels], np.float32)


def segment(folder: Path, image: np.ndarray, clicks, box, int8: bool = False) -> tuple[np.ndarray, float]:
    """(bool (H, W) mask, predicted IoU) of one object."""
    man = json.loads((folder / "manifest.json").read_text())
    so = ort.SessionOptions()
    enc_file = man["files"]["encoder_int8" if int8 else "encoder"]
    enc = ort.InferenceSession(str(folder / enc_file), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(folder / man["files"]["decoder"]), so, providers=["CPUExecutionProvider"])
    x, (vh, vw) = preprocess(image, man["preprocess"])
    (emb,) = enc.run(None, {"image": x})
    h, w = image.shape[:2]
    coords, labels = tokens(clicks, box, vw / w, vh / h)
    feeds = {
        "image_embeddings": emb,
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros(man["mask_input_shape"], np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    }
    if man.get("text_dim"):
        feeds["text_embedding"] = np.zeros((1, man["text_dim"]), np.float32)
    low, iou = dec.run(None, feeds)
    multi = man["multimask"] == "best_iou" or (
        man["multimask"] == "auto" and len(clicks) == 1 and box is None
    )
    k = 1 + int(np.argmax(iou[0, 1:])) if multi else 0
    s = man["input_size"]
    logits = low[0, k]
    if logits.shape != (s, s):
        logits = resize(logits, (s, s), "bilinear")
    logits = resize(logits[:vh, :vw], (h, w), "bilinear")
    return logits > 0, float(iou[0, k])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path, help="a .npy 2D grey or (H, W, 3) RGB image")
    ap.add_argument("--box", default=None, help="x0,y0,x1,y1 in native pixels")
    ap.add_argument("--click", action="append", default=[], help="x,y[,+|-]; repeatable")
    ap.add_argument("-o", "--output", type=Path, required=True, help="mask .npy to write")
    ap.add_argument("--export", type=Path, default=Path(__file__).resolve().parent, help="export folder")
    ap.add_argument("--int8", action="store_true", help="use encoder.int8.onnx")
    args = ap.parse_args(argv)
    box = [float(v) for v in args.box.split(",")] if args.box else None
    clicks = []
    for c in args.click:
        parts = c.split(",")
        clicks.append((float(parts[0]), float(parts[1]), len(parts) < 3 or parts[2] != "-"))
    if box is None and not clicks:
        ap.error("pass --box and/or --click")
    mask, quality = segment(args.export, np.load(args.image), clicks, box, args.int8)
    np.save(args.output, mask)
    print(json.dumps({"mask_px": int(mask.sum()), "pred_iou": round(quality, 4), "output": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
