"""Our automask generator against Segment Anything's official `SamAutomaticMaskGenerator`.

Both decode the same grid of clicks against the SAME image embedding (the model's TinyViT encoder on
its own preprocessing of the slice: the official repository has no TinyViT, so its `Sam` gets ours as
image encoder), with the official `PromptEncoder`/`MaskDecoder` holding the same weights as ours, and
the same thresholds: predicted IoU 0.85, stability 0.95 (offset 1), box NMS 0.7, the multimask
outputs, no area limits, no crops, no GT. Reported per 512x512 slice: wall and CPU seconds of each
(encode + generation until the native masks), the masks kept, and how ours match the official ones
(each official mask's best IoU among ours). Prints one JSON line.

The official code is not part of this repository and is not installed with it. Point
IMIS_OFFICIAL_SAM at a folder holding the official `segment_anything/` package (its git repository,
facebookresearch/segment-anything) and run this script in an environment that has torch, numpy,
Pillow, scipy, pyyaml and tqdm (a scratch venv: `python3 -m venv v && v/bin/pip install torch==2.13.0
numpy pillow scipy pyyaml tqdm`). The official generator imports torchvision (box NMS, PIL resizing);
where torchvision is not importable this script registers a stand-in module written here
(`batched_nms`, `box_area`, `resize`, `to_pil_image`), and the JSON says so. Without IMIS_OFFICIAL_SAM
only our side runs and the official part is "skipped", unless `segment_anything` is importable
(pip-installed in a benchmark environment).

Run: `IMIS_OFFICIAL_SAM=/path/to/segment-anything PYTHONPATH=src python benchmarks/automask.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from imis.automask.generate import generate_candidates
from imis.automask.memory import retain_freed_memory
from imis.automask.pipeline import native_regions, select_masks
from imis.automask.settings import AutomaskSettings
from imis.data.formats import imed
from imis.models import load_model
from imis.models.preprocess import prepare_image

STANDIN = (
    "torchvision stand-in written in benchmarks/automask.py (batched_nms, box_area, resize, to_pil_image)"
)


def _standin_torchvision() -> None:
    """Register a minimal `torchvision` with the functions the official generator imports."""
    from PIL import Image

    def box_area(boxes: torch.Tensor) -> torch.Tensor:
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.empty(0, dtype=torch.int64)
        b = boxes.double() + idxs.double()[:, None] * (boxes.max().double() + 1)  # no cross-category overlap
        order = torch.argsort(scores, descending=True, stable=True)
        b = b[order]
        lt = torch.maximum(b[:, None, :2], b[None, :, :2])
        rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        area = box_area(b)
        iou = inter / (area[:, None] + area[None] - inter).clamp(min=1e-12)
        alive = torch.ones(len(b), dtype=torch.bool)
        keep = []
        for i in range(len(b)):
            if alive[i]:
                keep.append(i)
                alive &= ~(iou[i] > iou_threshold)
        return order[torch.tensor(keep, dtype=torch.int64)]

    def resize(img, size):
        return img.resize((size[1], size[0]), Image.BILINEAR)

    def to_pil_image(arr):
        return Image.fromarray(np.asarray(arr))

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    boxes.batched_nms, boxes.box_area = batched_nms, box_area
    fn.resize, fn.to_pil_image = resize, to_pil_image
    tv.ops, ops.boxes, tv.transforms, tr.functional = ops, boxes, tr, fn
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes,
            "torchvision.transforms": tr,
            "torchvision.transforms.functional": fn,
        }
    )


def official_generator(model, settings: AutomaskSettings):
    """(SamAutomaticMaskGenerator on the model's weights, the encoder wrapper to set the image on)."""
    root = os.environ.get("IMIS_OFFICIAL_SAM")
    standin = importlib.util.find_spec("torchvision") is None
    if standin:
        _standin_torchvision()
    if root:
        sys.path.insert(0, root)
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    net = model.net

    class SameEmbedding(torch.nn.Module):
        """The model's encoder on its own preprocessing of the native image (the official input is ignored)."""

        img_size = model.preprocess.input_size

        def __init__(self):
            super().__init__()
            self.native = None

        def forward(self, x):
            y, _ = prepare_image(self.native, model.preprocess)
            return net.image_encoder(y)

    s = model.preprocess.input_size
    g = s // 4
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(g, g), input_image_size=(s, s), mask_in_chans=16)
    tr = TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    dec = MaskDecoder(num_multimask_outputs=3, transformer=tr, transformer_dim=256)
    sd = net.state_dict()
    for prefix, mod in (("prompt_encoder.", pe), ("mask_decoder.", dec)):
        own = {k[len(prefix) :]: v.float() for k, v in sd.items() if k.startswith(prefix)}
        missing, _ = mod.load_state_dict(own, strict=False)
        assert not missing, missing
    enc = SameEmbedding()
    sam = Sam(enc, pe, dec, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3).eval()
    gen = SamAutomaticMaskGenerator(
        sam,
        points_per_side=settings.points_per_side,
        points_per_batch=64,
        pred_iou_thresh=settings.iou_thresh,
        stability_score_thresh=settings.stability_thresh,
        stability_score_offset=settings.stability_offset,
        box_nms_thresh=settings.nms,
        crop_n_layers=0,
        min_mask_region_area=0,
        output_mode="binary_mask",
    )
    return gen, enc, standin


def ours(model, image, settings):
    emb = model.encode(image)
    sel = select_masks(generate_candidates(model, emb, settings), settings)
    return [r.mask for r in native_regions(sel, emb, settings.mask_threshold)]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def best_ious(ref: list[np.ndarray], got: list[np.ndarray]) -> list[float]:
    out = []
    for r in ref:
        best = 0.0
        for g in got:
            inter = np.logical_and(r, g).sum()
            best = max(best, inter / max(np.logical_or(r, g).sum(), 1))
        out.append(float(best))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--model", default="imis-lite")
    ap.add_argument("--images", type=int, default=2, help="first N btcv-demo test slices")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--iou-thresh", type=float, default=0.85)
    ap.add_argument("--stability", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=["auto", "fp32"],
        help="our side at each (--precision of imis automask)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # as an `imis automask` worker does; the official generator below runs in the same process with it
    retained = retain_freed_memory()
    settings = AutomaskSettings(
        points_per_side=args.points_per_side,
        iou_thresh=args.iou_thresh,
        stability_thresh=args.stability,
        outputs="multimask",
        nms_kind="box",
        max_area=1.0,
        min_area=0.0,
        gt_qc=False,
        morphology=0,
    )
    from imis.automask.loading import load_automask_model, runtime_tag

    model = load_model(args.model)
    entries = imed.read_dataset(args.shared / "data" / "btcv-demo").split("test")[: args.images]
    images = [imed.read_image(e.image) for e in entries]
    load = os.getloadavg()
    res = {"benchmark": "automask", "model": args.model, "points_per_side": args.points_per_side}
    res.update(
        iou_thresh=args.iou_thresh, stability_thresh=args.stability, nms="box 0.7", outputs="multimask"
    )
    res.update(
        images=[e.stem for e in entries], torch_threads=args.threads, cpu=platform.processor() or "cpu"
    )
    res["loadavg_at_start"] = [round(v, 2) for v in load]
    res["malloc_retains_freed_memory"] = retained  # both sides
    runs = {}
    for p in args.precisions:
        m = load_automask_model(args.model, None, "cpu", "torch", p)
        key = f"ours_{runtime_tag(args.model, 'torch', p, 'cpu').replace(':', '_')}"
        out = [timed(lambda im=im, m=m: ours(m, im, settings)) for im in images]
        runs[key] = out
        res[key] = {
            "s_per_slice": round(float(np.mean([t for _, t, _ in out])), 2),
            "cpu_s_per_slice": round(float(np.mean([c for _, _, c in out])), 2),
            "masks": [len(x) for x, _, _ in out],
        }
    res["ours"] = "; ".join(runs)
    if not os.environ.get("IMIS_OFFICIAL_SAM") and importlib.util.find_spec("segment_anything") is None:
        res["official"] = "skipped (set IMIS_OFFICIAL_SAM to the official segment-anything folder)"
        print(json.dumps(res))
        return
    gen, enc, standin = official_generator(model, settings)
    res["torchvision"] = STANDIN if standin else "installed"
    off = []
    for im in images:
        enc.native = im
        with torch.inference_mode():
            out, w, c = timed(lambda im=im: gen.generate(np.ascontiguousarray(im[..., :3])))
        off.append(([o["segmentation"] for o in out], w, c))
    res["official"] = {
        "s_per_slice": round(float(np.mean([w for _, w, _ in off])), 2),
        "cpu_s_per_slice": round(float(np.mean([c for _, _, c in off])), 2),
        "masks": [len(m) for m, _, _ in off],
    }
    for key in runs:
        res[f"{key}_time_ratio_over_official"] = round(
            res[key]["s_per_slice"] / res["official"]["s_per_slice"], 3
        )
        res[f"{key}_cpu_ratio_over_official"] = round(
            res[key]["cpu_s_per_slice"] / res["official"]["cpu_s_per_slice"], 3
        )
        m = [best_ious(o, x) for (o, _, _), (x, _, _) in zip(off, runs[key], strict=True)]
        flat_k = [v for row in m for v in row]
        res[f"{key}_official_masks_mean_best_iou"] = round(float(np.mean(flat_k)), 4) if flat_k else None
    res["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
