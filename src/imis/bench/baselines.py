"""Baselines that need no learned weights, behind the same interface as :class:`InteractiveModel`.

They give every benchmark table real peers offline: GrabCut (OpenCV) for boxes, optionally refined by
clicks, and the random walker (scikit-image) for clicks, optionally bounded by a box. Each adapter
implements :class:`~imis.models.interactive.PromptableModel`: ``name``, ``prompt_types``, ``license``,
``encode(image, name)`` (-> :class:`BaselineEmbedding`, the preprocessed image and its :class:`Frame`),
``check_supported(spec)`` (raises :class:`PromptError`) and ``decode(embedding, spec, threshold=0.0,
multimask=None)`` (one mask per prompt set, so ``multimask`` changes nothing; -> :class:`Prediction` with
``low_res_logits=None`` and ``quality=nan``; ``logits`` is a float32 native map whose ``> 0`` is the mask).
Coordinates are native pixels: clicks (x, y), boxes inclusive (x0, y0, x1, y1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imis.errors import InputError, ModelNotAvailableError, PromptError
from imis.models.interactive import MultimaskPolicy, Prediction, PromptSpec, check_prompt_support
from imis.models.preprocess import Frame

__all__ = [
    "BASELINES",
    "BaselineEmbedding",
    "GrabCutBaseline",
    "RandomWalkerBaseline",
    "load_baseline",
    "to_uint8_rgb",
]


@dataclass
class BaselineEmbedding:
    """What a baseline's ``encode`` keeps: the preprocessed image and its geometry.

    image: GrabCut: uint8 RGB (H, W, 3) at native size; random walker: float64 in [0, 1], (h, w) or
    (h, w, 3), possibly downsampled. frame: orig_hw native, valid_hw the size of ``image``.
    """

    image: np.ndarray
    frame: Frame
    name: str = "image"


# ---------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------
def _as_channels(image: np.ndarray, name: str) -> np.ndarray:
    """Any-dtype 2D / (H, W, 1|3|4) array -> float64 (H, W, C) with C in (1, 3); alpha is dropped."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: unsupported image dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{name}: expected a (H, W) or (H, W, 1|3|4) image, got shape {arr.shape}")
    arr = arr[..., :3].astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: image contains NaN or infinite values")
    return arr


def _minmax01(arr: np.ndarray) -> np.ndarray:
    """Min-max over all pixels and channels jointly (keeps colour balance) to [0, 1]; constant -> 0."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float64)
    return (arr - lo) * (1.0 / (hi - lo))


def to_uint8_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any dtype, grey or RGB(A) -> uint8 RGB (H, W, 3) by a joint min-max to 0..255 (identity on a
    uint8 image that already spans 0..255)."""
    arr = _minmax01(_as_channels(image, name))
    out = np.rint(arr * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out)


def _clicks(spec: PromptSpec, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer (row, col) of positive and of negative clicks, clipped to the image."""
    if spec.points is None or not len(spec.points):
        empty = np.zeros((0, 2), dtype=np.int64)
        return empty, empty
    pts = np.asarray(spec.points, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(spec.labels if spec.labels is not None else np.ones(len(pts)), dtype=np.int64)
    if labels.shape != (len(pts),):
        raise PromptError(f"{len(pts)} clicks but {labels.size} click labels")
    rc = np.stack(
        [np.clip(np.rint(pts[:, 1]), 0, hw[0] - 1), np.clip(np.rint(pts[:, 0]), 0, hw[1] - 1)], axis=1
    ).astype(np.int64)
    return rc[labels > 0], rc[labels <= 0]


def _box(spec: PromptSpec, hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Inclusive integer (x0, y0, x1, y1) clipped to the image, or None."""
    if spec.box is None:
        return None
    b = np.asarray(spec.box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise PromptError(f"a box needs 4 finite numbers (x0, y0, x1, y1), got {b.tolist()}")
    x0, x1 = sorted(np.clip(np.rint(b[[0, 2]]), 0, hw[1] - 1).astype(int).tolist())
    y0, y1 = sorted(np.clip(np.rint(b[[1, 3]]), 0, hw[0] - 1).astype(int).tolist())
    return x0, y0, x1, y1


def _disc_offsets(radius: int) -> np.ndarray:
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= r * r
    return np.stack([dy[keep], dx[keep]], axis=1)


def _paint_discs(target: np.ndarray, centres: np.ndarray, radius: int, value: int) -> None:
    """Set ``target`` to ``value`` on discs of ``radius`` pixels (radius 0: the pixel) around (row, col)."""
    if not len(centres):
        return
    h, w = target.shape
    pts = (centres[:, None, :] + _disc_offsets(radius)[None]).reshape(-1, 2)
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    target[pts[ok, 0], pts[ok, 1]] = value


class _Baseline:
    """Prompt checking shared by the baselines (same messages as ``InteractiveModel``)."""

    name: str
    prompt_types: frozenset[str]
    license: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, prompts={sorted(self.prompt_types)})"

    def check_supported(self, prompts: PromptSpec) -> None:
        if not check_prompt_support(self.name, self.prompt_types, prompts):
            raise PromptError("no prompt given: pass at least a click or a box")

    @staticmethod
    def _prediction(logits: np.ndarray, threshold: float) -> Prediction:
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        return Prediction(mask=logits > threshold, logits=logits, low_res_logits=None, quality=float("nan"))


# ---------------------------------------------------------------------------------------------------------
# GrabCut
# ---------------------------------------------------------------------------------------------------------
class GrabCutBaseline(_Baseline):
    """OpenCV GrabCut (Rother et al. 2004) from a box, optionally refined by clicks.

    The image is converted to 8-bit RGB by a joint min-max (any dtype). ``decode``: ``cv2.grabCut`` with
    ``GC_INIT_WITH_RECT`` from the inclusive box for ``iterations`` iterations; when clicks are also
    given, discs of ``click_radius`` pixels (default 3, i.e. 29 pixels) around them are then marked sure
    foreground (positive) / sure background (negative) in GrabCut's mask and ``iterations`` more
    iterations run with ``GC_INIT_WITH_MASK``. GrabCut runs on a window: the box grown on each side by
    ``margin`` (default 0.1) x the box's size, at least ``MIN_MARGIN`` = 8 px, clipped to the image
    (``margin=None``: the whole image); its background colour model is learned from that local ring,
    which on grey CT is far better than from the whole image (btcv-demo test, tight boxes: mean Dice
    0.22 with margin 0.1, 0.11 with 0.5, 0.05 with the whole image). A box is required (clicks alone give GrabCut no
    background model). Logits: +2 sure foreground, +1 probable foreground, -1 probable background,
    -2 sure background. Where GrabCut cannot run (a box covering the whole image leaves no background
    samples, or too few pixels to fit its colour models) the prediction falls back to the box itself
    (minus negative discs), so a prediction is always returned.
    """

    MIN_MARGIN = 8  # pixels: the least context kept around a small box

    def __init__(self, iterations: int = 5, click_radius: int = 3, margin: float | None = 0.1) -> None:
        if margin is not None and not margin >= 0:
            raise ValueError("margin must be >= 0 or None")
        if int(iterations) < 1:
            raise ValueError("iterations must be >= 1")
        if int(click_radius) < 0:
            raise ValueError("click_radius must be >= 0")
        self.iterations = int(iterations)
        self.click_radius = int(click_radius)
        self.margin = None if margin is None else float(margin)
        self.name = "grabcut"
        self.prompt_types = frozenset({"box", "point"})
        self.license = "Apache-2.0 (OpenCV); no learned weights"

    def encode(self, image: np.ndarray, name: str = "image") -> BaselineEmbedding:
        rgb = to_uint8_rgb(image, name)
        h, w = rgb.shape[:2]
        return BaselineEmbedding(rgb, Frame((h, w), (h, w), max(h, w)), name)

    def check_supported(self, prompts: PromptSpec) -> None:
        super().check_supported(prompts)
        if prompts.box is None:
            raise PromptError(f"model {self.name!r} needs a box; clicks only refine a box")

    def decode(
        self,
        embedding: BaselineEmbedding,
        prompts: PromptSpec,
        threshold: float = 0.0,
        multimask: MultimaskPolicy | None = None,  # one mask per prompt set: nothing to choose
    ) -> Prediction:
        import cv2

        self.check_supported(prompts)
        img = embedding.image
        hw = img.shape[:2]
        x0, y0, x1, y1 = _box(prompts, hw)
        pos, neg = _clicks(prompts, hw)
        # the window GrabCut sees: the box grown by `margin` x its size on each side (whole image: None)
        if self.margin is None:
            wy0, wx0, wy1, wx1 = 0, 0, hw[0], hw[1]
        else:
            my = max(self.MIN_MARGIN, math.ceil(self.margin * (y1 - y0 + 1)))
            mx = max(self.MIN_MARGIN, math.ceil(self.margin * (x1 - x0 + 1)))
            wy0, wx0 = max(0, y0 - my), max(0, x0 - mx)
            wy1, wx1 = min(hw[0], y1 + 1 + my), min(hw[1], x1 + 1 + mx)
        crop = np.ascontiguousarray(img[wy0:wy1, wx0:wx1])
        bx0, by0, bx1, by1 = x0 - wx0, y0 - wy0, x1 - wx0, y1 - wy0
        pos_c, neg_c = pos - (wy0, wx0), neg - (wy0, wx0)
        gc = np.full(crop.shape[:2], cv2.GC_BGD, dtype=np.uint8)
        gc[by0 : by1 + 1, bx0 : bx1 + 1] = cv2.GC_PR_FGD
        # GrabCut seeds its colour models with k-means++ from OpenCV's global RNG: reseed it so that a
        # prediction depends only on the image and the prompts, not on what ran before in the process.
        cv2.setRNGSeed(0)
        try:
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            rect = (bx0, by0, bx1 - bx0 + 1, by1 - by0 + 1)
            gc, bgd, fgd = cv2.grabCut(crop, gc, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
            if len(pos) or len(neg):
                _paint_discs(gc, neg_c, self.click_radius, cv2.GC_BGD)
                _paint_discs(gc, pos_c, self.click_radius, cv2.GC_FGD)
                gc, bgd, fgd = cv2.grabCut(crop, gc, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            # Degenerate input (no background pixel, too few samples): the box itself is the answer.
            gc = np.full(crop.shape[:2], cv2.GC_BGD, dtype=np.uint8)
            gc[by0 : by1 + 1, bx0 : bx1 + 1] = cv2.GC_PR_FGD
            _paint_discs(gc, neg_c, self.click_radius, cv2.GC_BGD)
            _paint_discs(gc, pos_c, self.click_radius, cv2.GC_FGD)
        full = np.full(hw, cv2.GC_BGD, dtype=np.uint8)
        full[wy0:wy1, wx0:wx1] = gc
        gc = full
        lut = np.zeros(4, dtype=np.float32)
        lut[[cv2.GC_BGD, cv2.GC_FGD, cv2.GC_PR_BGD, cv2.GC_PR_FGD]] = (-2.0, 2.0, -1.0, 1.0)
        return self._prediction(lut[gc], threshold)


# ---------------------------------------------------------------------------------------------------------
# random walker
# ---------------------------------------------------------------------------------------------------------
class RandomWalkerBaseline(_Baseline):
    """scikit-image random walker (Grady 2006) from clicks, optionally bounded by a box.

    ``encode`` min-max normalises the image to [0, 1] (any dtype; an RGB image whose channels are equal is
    treated as grey, otherwise all three channels are used) and, when its long side exceeds ``max_side``
    (default 256), downsamples it with anti-aliasing so that the long side is ``max_side``; the solve runs
    on that grid and the foreground probability is bilinearly upsampled back to native resolution.

    Seeds (on the solve grid): positive clicks -> label 1 (foreground), negative clicks -> label 2
    (background); automatic background seeds -> label 2: the one-pixel image border, and every pixel
    farther than ``bg_radius`` x the image's long side (default 0.15, i.e. 77 px on a 512 image) from
    every positive click; with a box, everything outside the box is background instead (the box bounds
    the object, so the distance rule is not used) and the mask is also cut to the box at native
    resolution. Clicks seed discs of ``click_radius`` native pixels (default 5, scaled to the solve
    grid): a single-pixel seed has almost no pull against the many background seeds (btcv-demo test,
    one centre click: mean Dice 0.25 with single pixels, 0.48 with 5 px discs). Clicks take precedence over automatic seeds. At least one positive click is needed
    (a box alone seeds no foreground). Logits: log(p / (1 - p)) of the upsampled foreground probability
    p, clipped to +-13.8, so ``> 0`` is p > 0.5.
    """

    def __init__(
        self,
        beta: float = 130.0,
        mode: str = "cg_j",
        max_side: int | None = 256,
        bg_radius: float = 0.15,
        click_radius: float = 5.0,
        tol: float = 1e-3,
    ) -> None:
        if mode not in ("cg_j", "cg", "bf"):
            raise ValueError(f"mode must be 'cg_j', 'cg' or 'bf', not {mode!r}")
        if max_side is not None and int(max_side) < 8:
            raise ValueError("max_side must be >= 8 or None")
        if not bg_radius > 0:
            raise ValueError("bg_radius must be > 0")
        self.beta = float(beta)
        self.mode = mode
        self.max_side = None if max_side is None else int(max_side)
        self.bg_radius = float(bg_radius)
        self.click_radius = float(click_radius)
        self.tol = float(tol)
        self.name = "random-walker"
        self.prompt_types = frozenset({"point", "box"})
        self.license = "BSD-3-Clause (scikit-image); no learned weights"

    def encode(self, image: np.ndarray, name: str = "image") -> BaselineEmbedding:
        arr = _minmax01(_as_channels(image, name))
        if (
            arr.shape[-1] == 3
            and np.array_equal(arr[..., 0], arr[..., 1])
            and np.array_equal(arr[..., 0], arr[..., 2])
        ):
            arr = arr[..., :1]
        h, w = arr.shape[:2]
        sh, sw = h, w
        if self.max_side is not None and max(h, w) > self.max_side:
            from skimage.transform import resize

            s = self.max_side / max(h, w)
            sh, sw = max(1, round(h * s)), max(1, round(w * s))
            arr = resize(arr, (sh, sw, arr.shape[-1]), order=1, anti_aliasing=True, preserve_range=True)
        data = arr[..., 0] if arr.shape[-1] == 1 else arr
        return BaselineEmbedding(np.ascontiguousarray(data), Frame((h, w), (sh, sw), max(sh, sw)), name)

    def check_supported(self, prompts: PromptSpec) -> None:
        super().check_supported(prompts)
        labels = prompts.labels
        n = 0 if prompts.points is None else len(prompts.points)
        if n == 0 or (labels is not None and not (np.asarray(labels) > 0).any()):
            raise PromptError(f"model {self.name!r} needs at least one positive click (a box only bounds it)")

    def _solve(self, data: np.ndarray, seeds: np.ndarray, crop: bool = True) -> np.ndarray:
        """Foreground probability of the random walker (seeds: 1 foreground, 2 background, 0 unknown).

        With ``crop`` the walk is solved on the bounding box of the unknown pixels grown by one pixel:
        the same linear system (each unknown's equation involves only its 4 neighbours, all inside that
        box), with ``beta`` rescaled so that the edge weights are the whole image's (scikit-image divides
        beta by 10 x the data's standard deviation). Outside the box every pixel is a seed.
        """
        from skimage.segmentation import random_walker

        channel_axis = -1 if data.ndim == 3 else None
        beta = self.beta
        box = None
        if crop:
            unknown = seeds == 0
            rows, cols = np.flatnonzero(unknown.any(axis=1)), np.flatnonzero(unknown.any(axis=0))
            h, w = seeds.shape
            box = (
                slice(max(0, int(rows[0]) - 1), min(h, int(rows[-1]) + 2)),
                slice(max(0, int(cols[0]) - 1), min(w, int(cols[-1]) + 2)),
            )
            std_full, std_crop = float(data.std()), float(data[box].std())
            if std_crop > 0 and std_full > 0:
                beta = self.beta * std_crop / std_full
            else:
                box = None  # a flat crop: scikit-image's weights would divide by zero; solve it all
        with warnings.catch_warnings():
            # "probability range is outside [0, 1] given the tolerance": the CG solve's round-off at
            # tol 1e-3; the probabilities are clipped by the caller
            warnings.filterwarnings(
                "ignore", message="The probability range is outside", category=UserWarning
            )
            sub = random_walker(
                data if box is None else np.ascontiguousarray(data[box]),
                seeds if box is None else np.ascontiguousarray(seeds[box]),
                beta=beta,
                mode=self.mode,
                tol=self.tol,
                return_full_prob=True,
                channel_axis=channel_axis,
            )[0]
        if box is None:
            return np.asarray(sub, dtype=np.float64)
        prob = (seeds == 1).astype(np.float64)
        prob[box] = sub
        return prob

    def decode(
        self,
        embedding: BaselineEmbedding,
        prompts: PromptSpec,
        threshold: float = 0.0,
        multimask: MultimaskPolicy | None = None,  # one mask per prompt set: nothing to choose
    ) -> Prediction:
        from scipy import ndimage

        self.check_supported(prompts)
        frame = embedding.frame
        H, W = frame.orig_hw
        sh, sw = frame.valid_hw
        sy, sx = sh / H, sw / W
        pos, neg = _clicks(prompts, (H, W))
        box = _box(prompts, (H, W))

        def to_grid(rc: np.ndarray) -> np.ndarray:  # native pixel -> the solve-grid pixel containing it
            r = np.clip(np.floor((rc[:, 0] + 0.5) * sy), 0, sh - 1)
            c = np.clip(np.floor((rc[:, 1] + 0.5) * sx), 0, sw - 1)
            return np.stack([r, c], axis=1).astype(np.int64)

        seeds = np.zeros((sh, sw), dtype=np.int32)
        if box is None:
            seeds[[0, -1], :] = 2
            seeds[:, [0, -1]] = 2
            near = np.ones((sh, sw), dtype=bool)
            g = to_grid(pos)
            near[g[:, 0], g[:, 1]] = False
            # distance in native pixels (the grid is scaled isotropically up to rounding)
            dist = ndimage.distance_transform_edt(near, sampling=(1.0 / sy, 1.0 / sx))
            seeds[dist > self.bg_radius * max(H, W)] = 2
        else:
            x0, y0, x1, y1 = box
            r0, c0 = int(math.floor(y0 * sy)), int(math.floor(x0 * sx))
            r1, c1 = int(math.ceil((y1 + 1) * sy)), int(math.ceil((x1 + 1) * sx))
            inside = np.zeros((sh, sw), dtype=bool)
            inside[r0:r1, c0:c1] = True
            seeds[~inside] = 2
        rad = round(self.click_radius * min(sy, sx))
        _paint_discs(seeds, to_grid(neg), rad, 2)
        _paint_discs(seeds, to_grid(pos), rad, 1)

        if not (seeds == 2).any():
            prob = np.ones((sh, sw), dtype=np.float64)  # nothing to separate from: all foreground
        elif (seeds == 0).any():
            prob = self._solve(embedding.image, seeds)
        else:
            prob = (seeds == 1).astype(np.float64)
        if (sh, sw) != (H, W):
            from skimage.transform import resize

            prob = resize(prob, (H, W), order=1, anti_aliasing=False, preserve_range=True)
        eps = 1e-6
        prob = np.clip(prob, eps, 1.0 - eps)
        logits = np.log(prob) - np.log1p(-prob)
        if box is not None:
            x0, y0, x1, y1 = box
            cut = np.full((H, W), True)
            cut[y0 : y1 + 1, x0 : x1 + 1] = False
            logits[cut] = np.log(eps) - np.log1p(-eps)
        return self._prediction(logits, threshold)


# ---------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------
BASELINES: dict[str, Callable[[], _Baseline]] = {
    "grabcut": GrabCutBaseline,
    "random-walker": RandomWalkerBaseline,
}


def load_baseline(name: str, **kwargs) -> GrabCutBaseline | RandomWalkerBaseline:
    """A baseline adapter by name (``grabcut``, ``random-walker``); kwargs go to its constructor."""
    try:
        factory = BASELINES[name]
    except KeyError:
        raise ModelNotAvailableError(
            f"unknown baseline {name!r} (known: {', '.join(sorted(BASELINES))})"
        ) from None
    return factory(**kwargs)
