"""The settings of one automask run (every CLI option that changes the output) and their fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from imis.errors import InputError

__all__ = ["AutomaskSettings"]

OUTPUTS = ("auto", "single", "multimask", "all")
NMS_KINDS = ("mask", "box")
NMS_SCORES = ("iou", "support")
# `--no-gt` ("segment everything") defaults, chosen on btcv-demo TRAIN slices (see segment_everything)
NO_GT = {
    "iou_thresh": 0.5,
    "stability_thresh": 0.6,
    "support_thresh": 0.5,
    "nms_score": "support",
    "min_area": 0.0005,
}


@dataclass(frozen=True)
class AutomaskSettings:
    """Generation (paper §3.2 defaults) and quality control.

    points_per_side: n of the n x n click grid. iou_thresh: keep outputs whose predicted IoU is at
    least this. stability_thresh / stability_offset: SAM's stability filter (0 disables it).
    nms: suppress a mask whose IoU with a more confident kept one exceeds this; nms_kind: 'mask' (mask
    IoU, the paper) or 'box' (box IoU of the masks' bounding boxes, SAM's generator).
    support_thresh: keep masks whose click consensus (`filters.support_score`) is at least this (0
    disables it); nms_score: what NMS keeps first, 'iou' (predicted IoU, the paper) or 'support'.
    max_area / min_area: drop masks above / below these fractions of the image. outputs: which mask
    tokens each click is scored on (see `generate.output_tokens`). gt_qc: ground-truth quality
    control; box_overlap: a generated mask stands for a single-connected GT region when their boxes'
    IoU exceeds this; morphology: opening then closing of each generated mask (radius in pixels).
    """

    points_per_side: int = 32
    iou_thresh: float = 0.85
    stability_thresh: float = 0.95
    stability_offset: float = 1.0
    mask_threshold: float = 0.0
    nms: float = 0.7
    nms_kind: str = "mask"
    support_thresh: float = 0.0
    nms_score: str = "iou"
    max_area: float = 0.8
    min_area: float = 0.005
    outputs: str = "auto"
    gt_qc: bool = True
    box_overlap: float = 0.95
    morphology: int = 1
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise InputError(f"--points-per-side must be >= 1, got {self.points_per_side}")
        names = (
            "iou_thresh",
            "stability_thresh",
            "support_thresh",
            "nms",
            "max_area",
            "min_area",
            "box_overlap",
        )
        for name in names:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"--{name.replace('_', '-')} must be within [0, 1], got {v}")
        if self.min_area >= self.max_area:
            raise InputError(f"--min-area {self.min_area} must be below --max-area {self.max_area}")
        if self.outputs not in OUTPUTS:
            raise InputError(f"--outputs must be one of {', '.join(OUTPUTS)}, got {self.outputs!r}")
        if self.nms_score not in NMS_SCORES:
            raise InputError(f"--nms-score must be iou or support, got {self.nms_score!r}")
        if self.nms_kind not in NMS_KINDS:
            raise InputError(f"--nms-kind must be mask or box, got {self.nms_kind!r}")
        if self.batch_size < 1 or self.morphology < 0:
            raise InputError("batch size must be >= 1 and morphology radius >= 0")

    @classmethod
    def segment_everything(cls, **overrides) -> AutomaskSettings:
        """`--no-gt` defaults: no GT quality control, thresholds chosen on btcv-demo TRAIN for imis-lite
        (benchmarks/automask_tune.py; README). The paper's predicted IoU >= 0.85, stability >= 0.95
        and 0.5% area rule assume SAM's calibrated heads and GT QC to put small organs back: with
        imis-lite on a grid they kept 0-1 mask per slice. Here: a low IoU/stability floor, the click
        consensus (support >= 0.5) to tell organ masks from edge/background ones, NMS keeping the best
        supported, and masks down to 0.05% of the image (the aorta, adrenal glands, vessels)."""
        values = dict(
            iou_thresh=NO_GT["iou_thresh"],
            stability_thresh=NO_GT["stability_thresh"],
            support_thresh=NO_GT["support_thresh"],
            nms_score=NO_GT["nms_score"],
            min_area=NO_GT["min_area"],
            gt_qc=False,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, model: str, weights: str, runtime: str = "torch:fp32") -> str:
        """What decides the output: every setting except the batch size, the model, its weights and the
        runtime (backend:precision, which changes the embedding by float rounding)."""
        d = self.to_json()
        d.pop("batch_size")
        for name, off in (("support_thresh", 0.0), ("nms_score", "iou")):
            if d[name] == off:  # settings from before these options keep their fingerprint
                d.pop(name)
        d.update(model=model, weights=weights)
        if runtime != "torch:fp32":  # fp32 runs keep the fingerprint they had before runtimes existed
            d["runtime"] = runtime
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
