"""Helpers of the ONNX tests: small fixture models as InteractiveModels, and torch-vs-ONNX comparisons."""

from __future__ import annotations

import numpy as np
from model_helpers import small_imis_kwargs, small_sam_kwargs

from imis.models.interactive import InteractiveModel, PromptSpec
from imis.models.preprocess import Preprocess

LIVER_BOX = np.array([62.0, 193.0, 313.0, 385.0])  # ABD_001_100, native pixels
LIVER_CLICK = np.array([[180.0, 280.0]])


def small_sam_model(fixture: dict) -> InteractiveModel:
    """sam-vit-b's recipe on the sam_small.pt fixture's network (input 256, official key layout)."""
    from imis.models.build import build_sam_vit
    from imis.models.formats import load_strict, sam

    c = fixture["config"]
    net = build_sam_vit(**small_sam_kwargs(c))
    official = {f"{m}{k}": v for m in sam.PREFIXES for k, v in fixture[m.rstrip(".")].items()}
    load_strict(net, sam.to_internal(sam.unwrap(official)), "sam")
    pre = Preprocess(c["img_size"], "longest_side", "bilinear", "imagenet", False)
    return InteractiveModel("sam-vit-b", net, pre, "auto", frozenset({"box", "point", "mask"}), "Apache-2.0")


def small_imis_model(fixture: dict) -> InteractiveModel:
    """imis-net-b's recipe on the imisnet_small.pt fixture's network; text = the fixture's embedding."""
    from imis.models.build import build_imis_net
    from imis.models.formats import imis, load_strict

    c = fixture["config"]
    net = build_imis_net(**small_imis_kwargs(c))
    load_strict(net, imis.to_internal(fixture["state_dict"]), "imis-net")
    pre = Preprocess(c["img_size"], "square", "nearest", "imagenet", False)
    emb = fixture["text_embedding"].float()
    kinds = frozenset({"box", "point", "mask", "text"})
    return InteractiveModel("imis-net-b", net, pre, "best_iou", kinds, "Apache-2.0", text_fn=lambda _t: emb)


def prompt_cases(text: bool) -> dict[str, PromptSpec]:
    neg = np.array([[100.0, 120.0]])
    cases = {
        "box": PromptSpec(box=LIVER_BOX),
        "click": PromptSpec(points=LIVER_CLICK, labels=np.array([1])),
        "clicks+box": PromptSpec(
            points=np.concatenate([LIVER_CLICK, neg]), labels=np.array([1, 0]), box=LIVER_BOX
        ),
    }
    if text:
        cases["text"] = PromptSpec(text="liver")
        cases["box+text"] = PromptSpec(box=LIVER_BOX, text="liver")
        cases["click+text"] = PromptSpec(points=LIVER_CLICK, labels=np.array([1]), text="liver")
    return cases


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def compare(torch_model, onnx_model, image: np.ndarray, text: bool) -> dict[str, dict[str, float]]:
    """Per prompt case (and the same case with the previous mask fed back): mask IoU, logits max diff."""
    et, eo = torch_model.encode(image), onnx_model.encode(image)
    out = {"embedding": {"max_abs_diff": float((et.features - eo.features).abs().max())}}
    for name, spec in prompt_cases(text).items():
        a, b = torch_model.decode(et, spec), onnx_model.decode(et, spec)
        again = PromptSpec(spec.points, spec.labels, spec.box, a.low_res_logits, spec.text)
        c, d = torch_model.decode(et, again), onnx_model.decode(et, again)
        e = onnx_model.decode(eo, spec)  # the whole ONNX path, its own embedding
        out[name] = {
            "iou": iou(a.mask, b.mask),
            "max_abs_diff": float(np.abs(a.logits - b.logits).max()),
            "iou_with_mask": iou(c.mask, d.mask),
            "max_abs_diff_with_mask": float(np.abs(c.logits - d.logits).max()),
            "iou_onnx_embedding": iou(a.mask, e.mask),
            "quality_diff": abs(a.quality - b.quality),
        }
    return out


def check(report: dict, max_diff: float) -> None:
    for name, r in report.items():
        if name == "embedding":
            continue
        assert r["iou"] >= 0.99 and r["iou_with_mask"] >= 0.99 and r["iou_onnx_embedding"] >= 0.99, (name, r)
        assert r["max_abs_diff"] <= max_diff and r["max_abs_diff_with_mask"] <= max_diff, (name, r)
        assert r["quality_diff"] <= 1e-3, (name, r)
