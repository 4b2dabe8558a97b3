"""Click-to-mask latency with a cached embedding: ours vs the official SamPredictor, same weights.

Measures prompt encoder + mask decoder + resize to a 512x512 image, for one positive click (SAM's
multimask rule) and for a box, on a real btcv-demo slice geometry. Prints one JSON line with median
milliseconds, ratios and the IoU between the two implementations' masks; ``*_onnx_*``: the same model's
decoder exported to ONNX and run through the ONNX Runtime backend (`load_model(..., backend="onnx")`'s
decode), timed in the same interleaved loop. ``*_first_*``: ours with the decoder's per-image cache
emptied before every call (the first click on a slice, see `imis.models.fast_decode`). ``refine``: two
clicks plus the previous mask's low-res logits as the mask prompt (a correction click).
Needs `pip install --no-deps segment-anything==1.0` (benchmarks only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from _official_sam import official_sam


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sa = official_sam()
    build = __import__("segment_anything.build_sam", fromlist=["build_sam_vit_b"])
    torch.manual_seed(0)
    sam = build.build_sam_vit_b(checkpoint=None).eval()
    predictor = sa.predictor.SamPredictor(sam)

    from imis.models.build import build_sam_vit
    from imis.models.formats import load_strict
    from imis.models.formats import sam as sam_format
    from imis.models.interactive import Embedding, InteractiveModel, PromptSpec
    from imis.models.preprocess import frame_for
    from imis.models.registry import get_spec

    spec = get_spec("sam-vit-b")
    net = build_sam_vit()
    load_strict(net, sam_format.to_internal(sam.state_dict()), "sam")
    ours = InteractiveModel(
        "sam-vit-b", net, spec.preprocess, spec.multimask, spec.prompt_types, spec.license
    )

    torch.manual_seed(2)
    feats = torch.randn(1, 256, 64, 64) * 0.5
    predictor.features = feats
    predictor.original_size = (512, 512)
    predictor.input_size = (1024, 1024)
    predictor.is_image_set = True
    emb = Embedding(feats, frame_for((512, 512), spec.preprocess))

    click = np.array([[250.0, 300.0]])
    box = np.array([62.0, 193.0, 313.0, 385.0])

    def off_click():
        masks, scores, _ = predictor.predict(
            point_coords=click, point_labels=np.array([1]), multimask_output=True
        )
        return masks[int(np.argmax(scores))]

    def off_box():
        masks, _, _ = predictor.predict(box=box, multimask_output=False)
        return masks[0]

    def ours_click():
        return ours.decode(emb, PromptSpec(points=click.astype(np.float32), labels=np.array([1]))).mask

    def ours_box():
        return ours.decode(emb, PromptSpec(box=box.astype(np.float32))).mask

    def first(fn):
        def run():
            ours.image_sides.clear()
            return fn()

        return run

    refine_pts = np.array([[250.0, 300.0], [180.0, 260.0]])
    refine_lab = np.array([1, 0])
    prev = ours.decode(emb, PromptSpec(points=click.astype(np.float32), labels=np.array([1])))
    prev_logits = prev.low_res_logits

    def off_refine():
        masks, _, _ = predictor.predict(
            point_coords=refine_pts,
            point_labels=refine_lab,
            mask_input=prev_logits[0].numpy(),
            multimask_output=False,
        )
        return masks[0]

    def ours_refine():
        spec = PromptSpec(points=refine_pts.astype(np.float32), labels=refine_lab, mask_logits=prev_logits)
        return ours.decode(emb, spec).mask

    onnx_model = onnx_decoder_model(ours, args.threads)

    def onnx_click():
        return onnx_model.decode(emb, PromptSpec(points=click.astype(np.float32), labels=np.array([1]))).mask

    def onnx_box():
        return onnx_model.decode(emb, PromptSpec(box=box.astype(np.float32))).mask

    res = {"benchmark": "click_latency_512", "torch": torch.__version__, "threads": args.threads}
    cases = (
        ("click", off_click, ours_click, onnx_click),
        ("box", off_box, ours_box, onnx_box),
        ("click_first", off_click, first(ours_click), None),
        ("box_first", off_box, first(ours_box), None),
        ("refine", off_refine, ours_refine, None),
    )
    for name, fo, fu, fx in cases:
        if fx is None:
            res.update(interleaved(name, args.reps, fo, fu))
            continue
        a, b, c = fo(), fu(), fx()
        t_o, t_u, t_x = [], [], []
        for _ in range(args.reps):  # interleaved so drift affects all alike
            for fn, acc in ((fo, t_o), (fu, t_u), (fx, t_x)):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
        mo, mu, mx = (statistics.median(t) * 1e3 for t in (t_o, t_u, t_x))
        res[f"{name}_official_ms"] = round(mo, 2)
        res[f"{name}_ours_ms"] = round(mu, 2)
        res[f"{name}_ratio"] = round(mu / mo, 3)
        res[f"{name}_mask_iou"] = round(iou(a, b), 4)
        res[f"{name}_onnx_ms"] = round(mx, 2)
        res[f"{name}_onnx_ratio_vs_ours"] = round(mx / mu, 3)
        res[f"{name}_onnx_ratio_vs_official"] = round(mx / mo, 3)
        res[f"{name}_onnx_mask_iou_vs_official"] = round(iou(a, c), 4)
    print(json.dumps(res))


def interleaved(name: str, reps: int, fo, fu) -> dict:
    """Official vs ours, interleaved: medians, ratio and mask IoU."""
    a, b = fo(), fu()
    t_o, t_u = [], []
    for _ in range(reps):
        for fn, acc in ((fo, t_o), (fu, t_u)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    mo, mu = (statistics.median(t) * 1e3 for t in (t_o, t_u))
    return {
        f"{name}_official_ms": round(mo, 2),
        f"{name}_ours_ms": round(mu, 2),
        f"{name}_ratio": round(mu / mo, 3),
        f"{name}_mask_iou": round(iou(a, b), 4),
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def onnx_decoder_model(model, threads: int):
    """``model``'s decoder exported to ONNX (no encoder: the embedding is given), on the ONNX backend."""
    import tempfile

    from imis.models.onnx.export import export_onnx
    from imis.models.onnx.runtime import load_onnx_model

    out = tempfile.mkdtemp(prefix="imis-dec-onnx-")
    export_onnx(model, out, encoder=False)
    return load_onnx_model(out, model.name, threads=threads)


if __name__ == "__main__":
    main()
