"""Propagation of a 2D mask through a volume, slice by slice, with a 2D promptable model.

From the seed slice, each direction is walked one slice at a time; slice k+1 is prompted with what
slice k gave (:class:`PropagationRules` ``prompt``): the tight box of its mask (or of the seed's mask)
grown by ``box_margin`` pixels plus ``box_margin_frac`` of its side, its low-res mask logits, and/or a
positive click at its interior point (the pixel farthest from the background), plus ``neg_clicks``
negative clicks on a ring outside it. The walk stops at the first slice where

* the prediction is empty or smaller than ``min_area`` pixels (the structure has ended),
* the model's predicted IoU is below ``min_quality`` (it is unsure it still sees the structure),
* the area grows by more than ``max_growth`` times the previous slice's (a leak into a neighbour),
* less than ``min_overlap`` of the new mask overlaps the previous one (it jumped to another structure),
* the area is below ``min_seed_ratio`` times the seed slice's (the tail the walk keeps painting where the
  structure has moved or thinned out),
* the model's own signals fall (``min_stability``, ``min_quality_ratio``, ``min_iou_prev``; off by default),
* the walk is farther from the seed than ``max_reach`` seed diameters (a shape prior),

or at the volume's edge, or before the next slice the user prompted (an anchor: a second prompted slice
bounds the walk). The slice that triggers a stop is left empty, and so is every slice after it up to
the next anchor, so that re-propagating after a correction replaces what an earlier walk left there.
Slices are encoded ``batch_size`` at a time ahead of the walk (the encoder dominates the time).

The defaults were measured, not guessed: ``benchmarks/propagation_grid.py`` walks the Colin27 AAL
structures that were in imis-lite's training (never the 24 held-out ones) without stopping, records
every slice's signals (:class:`SliceRecord`) and its intersection with the ground truth, scores every
stop-rule combination of a grid from the records, and the prompt mode was picked by
leave-one-structure-out Dice; a click-only seed gets its own stops (:data:`CLICK_SEED_RULES`,
:func:`default_rules`). Tables in docs/volumes.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from imis.errors import PromptError
from imis.models.interactive import Prediction, PromptSpec

#: Axis names of the (z, y, x) array axes 0, 1, 2.
AXIS_NAMES = ("z", "y", "x")
# The walk gets the VolumeSession as ``vs`` (typed Any: importing it here would close an import cycle).
VolumeSession = Any


def plane_view(mask: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """A writable 2D view of a (z, y, x) array at (axis, index)."""
    ax, i = key
    return mask[(slice(None),) * ax + (i,)]


__all__ = [
    "AXIS_NAMES",
    "CLICK_SEED_RULES",
    "default_rules",
    "seed_kind",
    "PropagationResult",
    "PropagationRules",
    "SliceRecord",
    "STOP_RULES",
    "stop_reason",
    "next_prompt",
    "predict_next",
    "refine_seed",
    "grown_box",
    "ring_points",
    "seed_reach",
    "slice_record",
    "plane_view",
    "propagate_object",
]

PROMPT_PARTS = ("box", "mask", "point")


@dataclass(frozen=True)
class PropagationRules:
    """How one slice prompts the next, and when the walk stops (see the module docstring)."""

    # Measured on the 8 training AAL structures only (docs/volumes.md, benchmarks/propagation_grid.py):
    # the previous slice's box grown by 1 px plus its mask logits; negative ring clicks, an interior
    # click, a shrunk box and a lower logit threshold did not do better across the structures (chosen by
    # leave-one-structure-out Dice). Stops for a box seed: predicted IoU < 0.5, growth > 1.1x, area <
    # 0.2x the seed's, or farther than 0.5 seed diameters (box seed 0.464 -> 0.550 3D Dice); the model's
    # own stability / IoU-ratio / previous-mask IoU stops added <= 0.002 and are off.
    prompt: str = "box+mask"
    box_margin: int = 1
    # Margin grown on each side as a share of the box's own width/height (added to box_margin), at most
    # box_margin_max pixels: a fixed margin is too much for a small cross-section and too little for a big one.
    box_margin_frac: float = 0.0
    box_margin_max: int = 1000
    # Logit threshold of propagated slices (0 = the model's own): below 0 counters the shrink of a box
    # prompt (the model segments inside the box it is given).
    mask_threshold: float = 0.0
    # Where the box comes from: "previous" (the previous slice's mask) or "seed" (the seed slice's mask
    # on every slice: it cannot drift, though it does not follow the structure either).
    box_from: str = "previous"
    # A seed slice prompted by clicks alone is first re-decoded with the box of its mask, its logits and
    # the clicks (click -> mask -> box+mask), so the walk starts from a box-quality mask.
    refine_seed: bool = False
    min_quality: float = 0.5
    min_area: int = 1
    max_growth: float = 1.1
    min_overlap: float = 0.0
    # Stop once the area falls below this share of the seed slice's: a structure's tail that the walk
    # keeps painting at the old place after the structure itself has moved or thinned out.
    min_seed_ratio: float = 0.2
    # Negative clicks on a ring ``neg_distance`` px outside the previous mask (0: none), spread evenly by
    # angle around it: they tell the decoder where the structure is not, against leaks into neighbours.
    neg_clicks: int = 0
    neg_distance: int = 3
    # Stops on the model's own signals (0 = off): the mask's stability between the logit thresholds
    # +-1 (IoU of the two masks, as SAM's stability score), the predicted IoU relative to the seed
    # slice's, and the IoU with the previous slice's mask (a structure changes slowly between slices).
    min_stability: float = 0.0
    min_quality_ratio: float = 0.0
    min_iou_prev: float = 0.0
    # A shape prior, not a model signal: stop once the walk is farther from the seed (mm) than this many
    # times the seed's equivalent diameter (mm, of a disc of the seed mask's area). Atlas parcels end at
    # planes the image does not show, so the model keeps segmenting past them; this bounds the walk.
    max_reach: float = 0.5
    batch_size: int = 4
    max_slices: int | None = None

    def __post_init__(self) -> None:
        parts = self.prompt.split("+")
        if (
            not parts
            or any(p not in PROMPT_PARTS for p in parts)
            or "box" not in parts
            and "point" not in parts
        ):
            raise PromptError(
                f"propagation prompt {self.prompt!r}: join box, mask, point with '+' and include box or point"
            )
        if self.box_from not in ("previous", "seed"):
            raise PromptError(f"propagation box_from {self.box_from!r}: 'previous' or 'seed'")
        if self.batch_size < 1:
            raise PromptError("propagation batch_size must be >= 1")
        if self.neg_clicks < 0 or self.neg_distance < 1:
            raise PromptError("propagation neg_clicks must be >= 0 and neg_distance >= 1")

    @property
    def parts(self) -> frozenset[str]:
        return frozenset(self.prompt.split("+"))


#: Stop rules measured for a walk from a seed prompted by clicks alone: its mask is smaller and worse
#: than a box seed's (seed-slice Dice 0.62 vs 0.86 on the training structures), its predicted IoU says
#: less, and the walk is cut where it thins out below 0.4x the seed; docs/volumes.md.
CLICK_SEED_RULES = PropagationRules(min_quality=0.0, max_growth=1.3, min_seed_ratio=0.4, max_reach=0.75)


def default_rules(seed_kind: str) -> PropagationRules:
    """The measured rules for a walk from a seed prompted by "box" (or text) or by "click"s alone."""
    return CLICK_SEED_RULES if seed_kind == "click" else PropagationRules()


def seed_kind(vs: VolumeSession, key: tuple[int, int]) -> str:
    """ "click" when the slice's latest prompt was clicks alone, else "box" (a box, text, or a seed made
    by an earlier propagation)."""
    last = vs._draft.last_predict(key) if vs._draft is not None else None
    if last is not None and last.clicks and last.box is None and last.text is None:
        return "click"
    return "box"


@dataclass(frozen=True)
class SliceRecord:
    """What one propagated slice gave: the measures the stop rules look at."""

    index: int
    area: int
    quality: float
    growth: float  # area / previous area
    overlap: float  # |mask & previous| / |mask|
    seed_ratio: float = 1.0  # area / the seed slice's area
    stability: float = 1.0  # IoU of the masks at logits > +1 and > -1
    quality_ratio: float = 1.0  # predicted IoU / the seed slice's
    iou_prev: float = 1.0  # IoU with the previous slice's mask
    reach: float = 0.0  # distance from the seed slice / the seed's equivalent diameter (both mm)

    @classmethod
    def from_row(cls, row: dict) -> SliceRecord:
        """The record in a recorded JSON row (benchmarks' walk records): keys that are not measures are
        ignored, and a measure a row lacks takes its default, which never stops a walk."""
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass
class PropagationResult:
    """axis/seed: where the walk started; slices: indices filled (sorted); stops: per direction
    ("up" = increasing index, "down") the index where it stopped (None at the volume's edge or an
    anchor) and why; records: every slice visited; logits: the low-res logits of the filled slices;
    rules: the rules the walk ran with."""

    axis: str
    seed: int
    rules: PropagationRules | None = None
    slices: list[int] = field(default_factory=list)
    stops: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    records: list[SliceRecord] = field(default_factory=list)
    logits: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def visited(self) -> int:
        return len(self.records)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the foreground pixel farthest from the background (first in raster order on ties)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _grown_side(lo: int, hi: int, size: int, rules: PropagationRules) -> tuple[int, int]:
    """One side of the box, grown (or, with negative margins, shrunk) by the rules' margin and kept
    inside the image; a shrink never turns the side inside out (it stops at the middle)."""
    m = min(rules.box_margin_max, round(rules.box_margin + rules.box_margin_frac * (hi - lo + 1)))
    a, b = max(0, lo - m), min(size - 1, hi + m)
    if a > b:
        a = b = (lo + hi) // 2
    return a, b


def grown_box(mask: np.ndarray, rules: PropagationRules) -> np.ndarray:
    """(x0, y0, x1, y1) float32: the tight box of ``mask`` (bool (h, w), not empty) grown by the rules'
    margin (`_grown_side`), inside the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x0, x1 = _grown_side(xs.min(), xs.max(), w, rules)
    y0, y1 = _grown_side(ys.min(), ys.max(), h, rules)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def ring_points(mask: np.ndarray, n: int, distance: int) -> list[tuple[int, int]]:
    """Up to ``n`` (x, y) background pixels at ``distance`` px (Euclidean, rounded) outside ``mask``,
    evenly spread by angle around the mask's centroid; fewer where the ring leaves the image."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~mask)
    ys, xs = np.nonzero(np.rint(dist) == distance)
    if len(xs) == 0:
        return []
    cy, cx = np.argwhere(mask).mean(axis=0)
    angle = np.arctan2(ys - cy, xs - cx)
    order = np.argsort(angle, kind="stable")
    picks = order[(np.arange(n) * len(order)) // n] if len(order) >= n else order
    return [(int(xs[i]), int(ys[i])) for i in picks]


def next_prompt(
    prev: np.ndarray,
    prev_logits: torch.Tensor | None,
    rules: PropagationRules,
    seed: np.ndarray | None = None,
) -> PromptSpec:
    """The prompts a slice gets from its neighbour's mask ``prev`` (bool (h, w), not empty); ``seed``:
    the seed slice's mask, for ``box_from="seed"``."""
    parts = rules.parts
    box = points = labels = None
    if "box" in parts:
        box = grown_box(seed if rules.box_from == "seed" and seed is not None else prev, rules)
    pts: list[tuple[int, int]] = [interior_point(prev)] if "point" in parts else []
    negs = ring_points(prev, rules.neg_clicks, rules.neg_distance) if rules.neg_clicks else []
    if pts or negs:
        points = np.array(pts + negs, dtype=np.float32)
        labels = np.array([1] * len(pts) + [0] * len(negs), dtype=np.int64)
    logits = prev_logits if "mask" in parts else None
    return PromptSpec(points=points, labels=labels, box=box, mask_logits=logits)


def predict_next(
    model: Any,
    embedding: Any,
    prev: np.ndarray,
    prev_logits: torch.Tensor | None,
    rules: PropagationRules,
    seed: np.ndarray | None = None,
) -> Prediction:
    """The next slice's prediction from its neighbour's mask and logits, thresholded as the rules say."""
    pred = model.decode(embedding, next_prompt(prev, prev_logits, rules, seed))
    if rules.mask_threshold != 0.0:
        pred = replace(pred, mask=pred.logits > rules.mask_threshold)
    return pred


def refine_seed(
    model: Any, embedding: Any, pred: Prediction, clicks: tuple[tuple[float, float, bool], ...]
) -> Prediction:
    """The seed slice re-decoded from the box of its click-made mask, its logits and the clicks."""
    ys, xs = np.nonzero(pred.mask)
    spec = PromptSpec(
        points=np.array([[x, y] for x, y, _ in clicks], dtype=np.float32),
        labels=np.array([1 if p else 0 for *_, p in clicks], dtype=np.int64),
        box=np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32),
        mask_logits=pred.low_res_logits,
    )
    return model.decode(embedding, spec)


# The stop rules in the order they are checked (the first that fires names the stop): the record's
# measure, the rules' threshold, whether the walk stops when the measure is "below" or "above" it, and
# the reason reported. One table, so that a new signal is one line here and one field on each dataclass.
STOP_RULES = (
    ("area", "min_area", "below", "too small"),
    ("quality", "min_quality", "below", "low confidence"),
    ("growth", "max_growth", "above", "size jump"),
    ("overlap", "min_overlap", "below", "no overlap"),
    ("seed_ratio", "min_seed_ratio", "below", "thinned out"),
    ("stability", "min_stability", "below", "unstable"),
    ("quality_ratio", "min_quality_ratio", "below", "confidence fell"),
    ("iou_prev", "min_iou_prev", "below", "drifted"),
    ("reach", "max_reach", "above", "too far"),
)


def stop_reason(rec: SliceRecord, rules: PropagationRules) -> str | None:
    """Which rule stops the walk at this slice ("empty", or a reason of :data:`STOP_RULES`), or None."""
    if rec.area == 0:
        return "empty"
    for measure, threshold, side, reason in STOP_RULES:
        value, limit = getattr(rec, measure), getattr(rules, threshold)
        if value < limit if side == "below" else value > limit:
            return reason
    return None


def _walk_end(vs: VolumeSession, axis: int, seed: int, step: int, rules: PropagationRules) -> tuple[int, str]:
    """First index past the walk in one direction (exclusive), and the reason it ends there."""
    n = vs.shape[axis]
    anchors = {a for a in vs._draft.anchors(axis) if a != seed}
    stop, reason = (n, "edge") if step > 0 else (-1, "edge")
    ahead = sorted(a for a in anchors if (a - seed) * step > 0)
    if ahead:
        stop, reason = (ahead[0], "anchor") if step > 0 else (ahead[-1], "anchor")
    if rules.max_slices is not None and abs(stop - seed) - 1 > rules.max_slices:
        stop, reason = seed + step * (rules.max_slices + 1), "limit"
    return stop, reason


def _refined_seed(vs: VolumeSession, key: tuple[int, int], rules: PropagationRules) -> Prediction | None:
    """The seed re-decoded by :func:`refine_seed` when the rules ask and it was prompted by clicks alone."""
    last = vs._draft.last_predict(key) if rules.refine_seed else None
    if last is None or not last.clicks or last.box is not None or last.text is not None:
        return None
    return refine_seed(vs.model, vs.embedding(key), last.prediction, last.clicks)


def _seed_signals(vs: VolumeSession, key: tuple[int, int]) -> tuple[torch.Tensor | None, float | None]:
    """The seed slice's low-res logits and predicted IoU (None for a propagated seed: it has no own)."""
    draft = vs._draft
    last = draft.last_predict(key)
    if last is not None and last.prediction is not None:
        return last.prediction.low_res_logits, last.prediction.quality
    return draft.propagated_logits(key), None


def propagate_object(
    vs: VolumeSession,
    key: tuple[int, int],
    direction: str,
    rules: PropagationRules,
    progress: Callable[[int, int], None] | None,
) -> tuple[PropagationResult, dict[tuple[int, int], np.ndarray]]:
    """Walk from the draft's mask on slice ``key``; return the result and the planes to write."""
    t0 = time.perf_counter()
    enc0 = vs.cache_stats.encode_seconds
    axis, seed = key
    steps = [s for d, s in (("down", -1), ("up", 1)) if direction in (d, "both")]
    ends = {s: _walk_end(vs, axis, seed, s, rules) for s in steps}
    total = sum(abs(ends[s][0] - seed) - 1 for s in steps)
    result = PropagationResult(axis=AXIS_NAMES[axis], seed=seed, rules=rules)
    planes: dict[tuple[int, int], np.ndarray] = {}
    seed_mask = plane_view(vs._draft.mask, key).copy()
    seed_logits, seed_quality = _seed_signals(vs, key)
    refined = _refined_seed(vs, key, rules)
    if refined is not None and refined.mask.any():
        planes[key] = refined.mask
        result.logits[seed] = refined.low_res_logits
        seed_mask, seed_logits, seed_quality = refined.mask, refined.low_res_logits, refined.quality
    done = 0
    for step in steps:
        end, end_reason = ends[step]
        prev, prev_logits = seed_mask, seed_logits
        seed_area = int(seed_mask.sum())
        per_slice = seed_reach(seed_area, tuple(reversed(vs.geometry.spacing)), axis)
        stopped: tuple[int | None, str] = (None, end_reason)
        for i in range(seed + step, end, step):
            if (axis, i) not in vs._cache:
                ahead = list(range(i, end, step))[: rules.batch_size]
                vs.encode_slices(axis, ahead)
            pred = predict_next(vs.model, vs.embedding((axis, i)), prev, prev_logits, rules, seed_mask)
            rec = slice_record(i, pred, prev, seed_area, seed_quality, abs(i - seed) * per_slice)
            result.records.append(rec)
            done += 1
            if progress is not None:
                progress(done, total)
            reason = stop_reason(rec, rules)
            if reason is not None:
                stopped = (i, reason)
                # Slices from the stop up to the next anchor are cleared: an earlier walk's masks there
                # came from prompts this walk has replaced.
                for j in range(i, end, step):
                    if plane_view(vs._draft.mask, (axis, j)).any():
                        planes[(axis, j)] = np.zeros_like(prev)
                break
            planes[(axis, i)] = pred.mask
            result.logits[i] = pred.low_res_logits
            prev, prev_logits = pred.mask, pred.low_res_logits
        result.stops["up" if step > 0 else "down"] = stopped
    if progress is not None and done < total:
        progress(total, total)
    result.slices = sorted(result.logits)
    result.seconds = time.perf_counter() - t0
    result.encode_seconds = vs.cache_stats.encode_seconds - enc0
    return result, planes


def seed_reach(seed_area: int, spacing_zyx: tuple[float, float, float], axis: int) -> float:
    """mm between slices along ``axis`` over the seed's equivalent diameter in mm (reach per slice)."""
    pixel_area = float(np.prod([s for a, s in enumerate(spacing_zyx) if a != axis]))
    diameter = 2.0 * np.sqrt(seed_area * pixel_area / np.pi)
    return float(spacing_zyx[axis] / diameter) if diameter else float("inf")


def slice_record(
    index: int,
    pred: Prediction,
    prev: np.ndarray,
    seed_area: int,
    seed_quality: float | None,
    reach: float = 0.0,
) -> SliceRecord:
    """The measures the stop rules look at for prediction ``pred`` of slice ``index``; ``prev``: the
    previous slice's mask; ``seed_quality`` None (a seed without a prediction of its own): ratio 1;
    ``reach``: the slice's distance from the seed over the seed's diameter (:func:`seed_reach` x slices)."""
    mask = pred.mask
    area = int(mask.sum())
    prev_area = int(prev.sum())
    inter = int(np.logical_and(mask, prev).sum())
    union = area + prev_area - inter
    hi, lo = int((pred.logits > 1.0).sum()), int((pred.logits > -1.0).sum())
    return SliceRecord(
        index=index,
        area=area,
        quality=float(pred.quality),
        growth=area / prev_area if prev_area else float("inf"),
        overlap=inter / area if area else 0.0,
        seed_ratio=area / seed_area if seed_area else 0.0,
        # the +1 mask lies inside the -1 mask, so their IoU is the ratio of their areas
        stability=hi / lo if lo else 0.0,
        quality_ratio=float(pred.quality) / seed_quality if seed_quality else 1.0,
        iou_prev=inter / union if union else 0.0,
        reach=reach,
    )
