"""One image through every stage: encode once -> grid candidates -> area filter -> NMS -> native
masks -> GT quality control -> clean-up -> id map (with a provenance record per id)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imis.automask.filters import area_fraction, box_nms, mask_boxes, mask_nms, support_score
from imis.automask.generate import Candidates, generate_candidates
from imis.automask.qc import Region, apply_gt_qc, clean_regions, paint_id_map
from imis.automask.settings import AutomaskSettings
from imis.errors import InputError
from imis.models.interactive import Embedding, InteractiveModel
from imis.models.preprocess import logits_to_native

__all__ = ["ImageMasks", "automask_image", "select_masks"]


@dataclass
class ImageMasks:
    """The id map of one image and what each id is (``ids[k - 1]`` describes id k)."""

    id_map: np.ndarray  # int64 (H, W)
    ids: list[dict]
    counts: dict[str, int]


def select_masks(cand: Candidates, settings: AutomaskSettings) -> Candidates:
    """Click consensus filter (when set), drop masks over ``max_area`` of the image, then NMS (highest
    ``nms_score`` first; support ties broken by predicted IoU)."""
    score = cand.iou
    if settings.support_thresh > 0 or settings.nms_score == "support":
        if cand.cell is None:
            raise ValueError("the click consensus needs the candidates' click cells (Candidates.cell)")
        support = support_score(cand.masks, cand.cell)
        keep = np.flatnonzero(support >= settings.support_thresh)
        cand, support = cand.select(keep), support[keep]
        score = support + 1e-3 * cand.iou if settings.nms_score == "support" else cand.iou
    keep = np.flatnonzero(area_fraction(cand.masks) <= settings.max_area)
    cand, score = cand.select(keep), score[keep]
    if settings.nms_kind == "box":
        order = box_nms(mask_boxes(cand.masks), score, settings.nms)
    else:
        order = mask_nms(cand.masks, score, settings.nms)
    return cand.select(order)


def native_regions(cand: Candidates, embedding: Embedding, threshold: float) -> list[Region]:
    """Kept candidates -> native-resolution masks with their provenance."""
    regions = []
    for i in range(len(cand)):
        logits = logits_to_native(cand.logits[i][None, None], embedding.frame)[0, 0]
        regions.append(
            Region(
                (logits > threshold).numpy(),
                "model",
                {
                    "pred_iou": round(float(cand.iou[i]), 4),
                    "stability": round(float(cand.stability[i]), 4),
                    "point": [round(float(v), 2) for v in cand.point[i]],
                    "output": int(cand.output[i]),
                },
            )
        )
    return regions


def check_gt(gt: np.ndarray | None, names: list[str] | None, hw: tuple[int, int], name: str):
    if gt is None:
        return
    if gt.ndim != 3 or gt.shape[1:] != tuple(hw):
        raise InputError(f"{name}: label masks of shape {tuple(gt.shape)} do not match the image {tuple(hw)}")
    if names is not None and len(names) != gt.shape[0]:
        raise InputError(f"{name}: {gt.shape[0]} label channels but {len(names)} names")


@torch.inference_mode()
def automask_image(
    model: InteractiveModel,
    image: np.ndarray,
    settings: AutomaskSettings,
    gt: np.ndarray | None = None,
    gt_names: list[str] | None = None,
    name: str = "image",
) -> ImageMasks:
    """The interactive masks of one image. ``gt`` (C, H, W) bool enables GT QC (when settings.gt_qc)."""
    arr = np.asarray(image)
    if arr.size == 0 or arr.ndim < 2:
        raise InputError(f"{name}: empty image (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.number) and arr.size and arr.min() == arr.max():
        raise InputError(f"{name}: empty image (every pixel is {arr.flat[0]})")
    embedding = model.encode(arr, name)
    hw = embedding.frame.orig_hw
    check_gt(gt, gt_names, hw, name)
    cand = generate_candidates(model, embedding, settings)
    n_cand = len(cand)
    cand = select_masks(cand, settings)
    regions = native_regions(cand, embedding, settings.mask_threshold)
    if settings.gt_qc and gt is not None:
        names = gt_names or [f"label_{c + 1}" for c in range(gt.shape[0])]
        regions = apply_gt_qc(regions, np.asarray(gt, dtype=bool), names, settings.box_overlap)
    regions = clean_regions(regions, settings.morphology)
    min_px = int(np.ceil(settings.min_area * hw[0] * hw[1]))
    id_map, kept = paint_id_map(regions, min_px, hw)
    visible = np.bincount(id_map.ravel(), minlength=len(kept) + 1)
    ids = [
        {"id": k, "source": r.source, "area": int(visible[k]), **r.info} for k, r in enumerate(kept, start=1)
    ]
    counts = {
        "prompts": cand.decoded,
        "candidates": n_cand,
        "after_nms": len(cand),
        "masks": len(kept),
        "from_gt": sum(r.source == "gt" for r in kept),
    }
    return ImageMasks(id_map, ids, counts)
