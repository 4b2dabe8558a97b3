"""The benchmark's protocols as data: prompt kinds, the model prompt types each needs, the offsets and
click-position bins, and the imis-paper protocol's click, threshold and metrics (see docs/protocols.md).

Shared by the runner (:mod:`imis.bench.runner`), which produces the rows, and the reports
(:mod:`imis.bench.report`), which group them.
"""

from __future__ import annotations

import numpy as np

from imis.errors import InputError

PROTOCOLS = ("single", "iterative", "box-offset", "click-position", "imis-paper")
CLICK_SIMULATORS = ("ritm", "uniform", "largest-component")
FIRST_CLICKS = ("center", "centroid", "uniform")
#: single-protocol prompt kinds and the model prompt types each needs
SINGLE_KINDS: dict[str, tuple[str, ...]] = {
    "click": ("point",),
    "box": ("box",),
    "text": ("text",),
    "click+box": ("point", "box"),
    "box+text": ("box", "text"),
    "click+text": ("point", "text"),
}
#: imis-paper: the reference test.py's first-prompt modes (--prompt_mode points | bboxes | text) and the
#: model prompt type each needs
PAPER_KINDS: dict[str, str] = {"paper:click": "point", "paper:box": "box", "paper:text": "text"}
NOC_THRESHOLDS = (0.85, 0.90)
BOX_OFFSETS = (0, 5, 10, 20)
#: click-position bin edges, in units of the mask's equivalent radius sqrt(area/pi)
CLICK_BIN_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)
CLICK_BINS = tuple(f"[{a:g},{b:g})" for a, b in zip(CLICK_BIN_EDGES[:-1], CLICK_BIN_EDGES[1:], strict=True))
CLICK_BINS += (f">={CLICK_BIN_EDGES[-1]:g}",)


def click_distance(xy: tuple[float, float] | list[float], mask: np.ndarray) -> float:
    """Distance of the click ``(x, y)`` to the centroid of ``mask`` (non-empty), divided by the mask's
    equivalent radius sqrt(area / pi)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError("click distance of an empty mask")
    d = float(np.hypot(float(xy[0]) - xs.mean(), float(xy[1]) - ys.mean()))
    return d / float(np.sqrt(ys.size / np.pi))


def click_bin(distance: float) -> str:
    """The click-position bin (one of ``CLICK_BINS``) of a normalised distance."""
    for label, hi in zip(CLICK_BINS[:-1], CLICK_BIN_EDGES[1:], strict=True):
        if distance < hi:
            return label
    return CLICK_BINS[-1]


def paper_correction(
    pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator
) -> tuple[tuple[int, int], int]:
    """The IMIS-Bench reference's correction click (``get_points_from_interaction`` at test time, k = 1):
    ``((x, y), label)`` drawn uniformly over the error region ``pred XOR gt``, **with replacement** (an
    earlier click may be drawn again), label 1 on a false negative and 0 on a false positive.

    With no error left the reference feeds a padding point, label -1 ("not a point": the prompt encoder
    zeroes its position code, so only the previous logits steer the decoder); its coordinates are drawn
    uniformly in the image (the reference draws them in [0, 256), which does not change the result).
    """
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    ys, xs = np.nonzero(p ^ g)
    if ys.size:
        i = int(rng.integers(ys.size))
        x, y = int(xs[i]), int(ys[i])
        return (x, y), int(g[y, x])
    h, w = g.shape
    return (int(rng.integers(w)), int(rng.integers(h))), -1


def paper_mask(logits: np.ndarray) -> np.ndarray:
    """The reference's threshold: ``sigmoid(logits) > 0.5`` in float32 (logits in (0, ~3e-8) round to
    exactly 0.5 and stay background, unlike ``logits > 0``)."""
    import torch

    return (torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float32))) > 0.5).numpy()


def paper_dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The reference test.py's per-mask metrics: ``2|P∩G| / (|P| + |G| + 1e-8)`` and
    ``|P∩G| / (|P∪G| + 1e-8)`` (empty ground truth is never evaluated there)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    inter = float(np.count_nonzero(p & g))
    sp, sg = float(np.count_nonzero(p)), float(np.count_nonzero(g))
    return 2.0 * inter / (sp + sg + 1e-8), inter / (sp + sg - inter + 1e-8)
