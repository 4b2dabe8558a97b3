"""Zoom-in refinement (as RITM and FocalClick do it): decode once on the whole image, then again on a crop
around the object, at the model's full input size, and paste the crop's mask back.

A small structure (a thalamus on a 181 x 217 MRI slice, a kidney on a 512 x 512 CT slice) covers only a
few dozen pixels of a 256 px network input; encoding a crop around it gives the decoder several times the
resolution. :class:`ZoomModel` wraps any :class:`~imis.models.interactive.InteractiveModel`-like model
and keeps its interface (``encode``/``decode``/``prompt_types``...), so the Session, the benchmark, the
CLI and the app get zoom by wrapping the model, without code of their own.

Rule (:class:`ZoomConfig`): the object's extent is the bounding box of the first mask, the positive
clicks and the box prompt; when its longer side is at most ``max_object_frac`` of the image's longer
side, the crop is that extent grown by ``expand`` (a square of side ``expand`` x the longer side, at
least ``min_crop`` pixels, shifted to stay inside the image). The crop is min-max normalised with the whole image's
range, and the first mask goes in as the crop's mask prompt (without it a lone click in the enlarged view
often picks a neighbouring structure). Each crop is encoded once per image (a small LRU in the
embedding). Earlier logits fed back as a mask prompt are carried into the crop frame
and the returned low-res logits are the pasted full-image ones, so an interactive loop can go on.

Measured (imis-lite, which was not trained on zoomed crops; 28 Colin27 AAL training-structure masks on
6 slices, the validation data we may tune on): 1 click 0.687 -> 0.392 (expand 3, min_crop 64) / 0.554
(expand 4, min_crop 96), tight box 0.792 -> 0.693 / 0.759. ``start`` = K leaves the first K-1
interactions unzoomed: zooming only the corrections (``--zoom 2``) lifts stage 13's Dice after 5
interactions on the OOD test half from 0.681 to 0.733, while its first correction gains less (0.606 vs
0.634; docs/training.md). Zoom stays off by default (``Session(zoom=False)``, no ``--zoom``): the model
has to learn zoomed views first (issue 18).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from imis.models.interactive import Embedding, Prediction, PromptSpec
from imis.models.preprocess import logits_to_native

# Logit given to pixels outside the crop in the pasted full-image logits: clearly background.
OUTSIDE_LOGIT = -20.0


@dataclass(frozen=True)
class ZoomConfig:
    """max_object_frac: zoom only when the object's longer side is at most this share of the image's;
    expand: crop side / object's longer side; min_crop: smallest crop side in pixels; cache: crops
    kept per image; start: zoom from this interaction on (`interaction_count`: a box, a text and each
    click count one), so that with ``start`` > 1 the first masks are the unzoomed model's."""

    max_object_frac: float = 0.5
    expand: float = 4.0
    min_crop: int = 96
    cache: int = 4
    feed_first: bool = True
    start: int = 1


@dataclass
class ZoomEmbedding:
    """The whole image's embedding plus the image itself (crops are encoded from it on demand)."""

    full: Embedding
    image: np.ndarray
    crops: OrderedDict = field(default_factory=OrderedDict)

    @property
    def value_range(self) -> tuple[float, float]:
        return float(self.image.min()), float(self.image.max())


def interaction_count(prompts: PromptSpec) -> int:
    """The interactions a prompt holds: one per click, one for a box, one for a text."""
    clicks = 0 if prompts.points is None else len(prompts.points)
    return clicks + int(prompts.box is not None) + int(prompts.text is not None)


def object_extent(mask: np.ndarray, prompts: PromptSpec) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive bounds of the mask, the positive clicks and the box; None if none."""
    xs: list[float] = []
    ys: list[float] = []
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        ys += [rows[0], rows[-1]]
        xs += [cols[0], cols[-1]]
    if prompts.points is not None and len(prompts.points):
        pos = np.asarray(prompts.points)[np.asarray(prompts.labels) == 1]
        xs += list(pos[:, 0])
        ys += list(pos[:, 1])
    if prompts.box is not None:
        x0, y0, x1, y1 = np.asarray(prompts.box, dtype=np.float64)
        xs += [x0, x1]
        ys += [y0, y1]
    if not xs:
        return None
    return int(np.floor(min(xs))), int(np.floor(min(ys))), int(np.ceil(max(xs))), int(np.ceil(max(ys)))


def crop_window(
    extent: tuple[int, int, int, int], hw: tuple[int, int], cfg: ZoomConfig
) -> tuple[int, int, int, int] | None:
    """The square crop (x0, y0, x1, y1), end-exclusive, around ``extent``; None when no zoom pays."""
    h, w = hw
    x0, y0, x1, y1 = extent
    side_obj = max(x1 - x0 + 1, y1 - y0 + 1)
    if side_obj > cfg.max_object_frac * max(h, w):
        return None
    side = int(round(max(cfg.expand * side_obj, cfg.min_crop)))
    side_x, side_y = min(side, w), min(side, h)
    if side_x >= w and side_y >= h:
        return None  # the crop would be the whole image
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    left = int(np.clip(round(cx - side_x / 2), 0, w - side_x))
    top = int(np.clip(round(cy - side_y / 2), 0, h - side_y))
    return left, top, left + side_x, top + side_y


def native_to_low_res(native: torch.Tensor, full: Embedding, low_hw: tuple[int, int]) -> torch.Tensor:
    """Native logits (H, W) -> (1, 1, h, w) logits in the network's mask-prompt frame (padding: background)."""
    frame = full.frame
    lh, lw = low_hw
    vh = max(1, round(frame.valid_hw[0] * lh / frame.input_size))
    vw = max(1, round(frame.valid_hw[1] * lw / frame.input_size))
    small = F.interpolate(native[None, None].float(), size=(vh, vw), mode="bilinear", align_corners=False)
    out = torch.full((1, 1, lh, lw), OUTSIDE_LOGIT)
    out[..., :vh, :vw] = small
    return out


class ZoomModel:
    """A promptable model with zoom-in refinement; every other attribute is the wrapped model's."""

    def __init__(self, model, config: ZoomConfig | None = None) -> None:
        self.model = model
        self.config = config or ZoomConfig()
        self.name = f"{model.name}+zoom"
        self._takes_range = "value_range" in inspect.signature(model.encode).parameters

    def __getattr__(self, attr: str):
        return getattr(self.model, attr)

    def encode(self, image: np.ndarray, name: str = "image") -> ZoomEmbedding:
        return ZoomEmbedding(self.model.encode(image, name), np.asarray(image))

    def encode_batch(self, images, name: str = "image") -> list[ZoomEmbedding]:
        embs = self.model.encode_batch(images, name)
        return [ZoomEmbedding(e, np.asarray(im)) for e, im in zip(embs, images, strict=True)]

    def _crop_embedding(self, emb: ZoomEmbedding, window: tuple[int, int, int, int]) -> Embedding:
        hit = emb.crops.get(window)
        if hit is None:
            x0, y0, x1, y1 = window
            crop = np.ascontiguousarray(emb.image[y0:y1, x0:x1])
            if self._takes_range:  # normalise the crop as the whole image, not by its own extremes
                hit = self.model.encode(crop, "zoom crop", value_range=emb.value_range)
            else:
                hit = self.model.encode(crop, "zoom crop")
            emb.crops[window] = hit
            while len(emb.crops) > self.config.cache:
                emb.crops.popitem(last=False)
        emb.crops.move_to_end(window)
        return hit

    def decode(
        self,
        embedding: ZoomEmbedding,
        prompts: PromptSpec,
        threshold: float = 0.0,
        multimask=None,
    ) -> Prediction:
        """Decode on the whole image; when the object is small, decode again on a crop around it."""
        if not isinstance(embedding, ZoomEmbedding):  # an embedding made by the wrapped model itself
            return self.model.decode(embedding, prompts, threshold, multimask)
        first = self.model.decode(embedding.full, prompts, threshold, multimask)
        if interaction_count(prompts) < self.config.start:
            return first
        hw = first.mask.shape
        extent = object_extent(first.mask, prompts)
        window = crop_window(extent, hw, self.config) if extent is not None else None
        if window is None:
            return first
        crop_emb = self._crop_embedding(embedding, window)
        if self.config.feed_first and "mask" in self.model.prompt_types:
            # the first mask tells the decoder which structure the clicks meant at the new scale
            prompts = replace(prompts, mask_logits=first.low_res_logits)
        crop_pred = self.model.decode(
            crop_emb, shift_prompts(prompts, window, embedding.full, crop_emb), threshold, multimask
        )
        x0, y0, x1, y1 = window
        logits = np.full(hw, OUTSIDE_LOGIT, dtype=np.float32)
        logits[y0:y1, x0:x1] = crop_pred.logits
        low_res = native_to_low_res(torch.from_numpy(logits), embedding.full, first.low_res_logits.shape[-2:])
        return Prediction(
            mask=logits > threshold, logits=logits, low_res_logits=low_res, quality=crop_pred.quality
        )


def shift_prompts(
    prompts: PromptSpec, window: tuple[int, int, int, int], full: Embedding, crop: Embedding
) -> PromptSpec:
    """The prompts in the crop's pixel frame; a fed-back mask goes from the full frame to the crop's."""
    x0, y0, x1, y1 = window
    offset = np.array([x0, y0], dtype=np.float64)
    points = None if prompts.points is None else np.asarray(prompts.points, dtype=np.float64) - offset
    if points is not None:
        points[:, 0] = points[:, 0].clip(0, x1 - x0 - 1)
        points[:, 1] = points[:, 1].clip(0, y1 - y0 - 1)
    box = None
    if prompts.box is not None:
        b = np.asarray(prompts.box, dtype=np.float64) - np.tile(offset, 2)
        box = np.array([*b[:2].clip(0), min(b[2], x1 - x0 - 1), min(b[3], y1 - y0 - 1)])
    mask_in = None
    if prompts.mask_logits is not None:
        native = logits_to_native(prompts.mask_logits.float().cpu(), full.frame)[0, 0]
        mask_in = native_to_low_res(native[y0:y1, x0:x1], crop, tuple(prompts.mask_logits.shape[-2:]))
    return PromptSpec(points=points, labels=prompts.labels, box=box, mask_logits=mask_in, text=prompts.text)


__all__ = ["ZoomConfig", "ZoomEmbedding", "ZoomModel", "crop_window", "object_extent", "native_to_low_res"]
