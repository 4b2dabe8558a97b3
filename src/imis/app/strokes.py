"""Scribble and lasso strokes -> the prompts the models take (clicks and a box).

The models of imis take points, a box, text and their own low-resolution logits, not free-hand strokes,
so the page's strokes are converted here. The rules were chosen with benchmarks/stroke_prompts.py on
btcv-demo's training split with imis-lite (simulated strokes on 52 organs of 12 slices; mean Dice):

* scribble: `SCRIBBLE_POINTS` = 3 clicks spread along the stroke by arc length, at the centres of equal
  stretches (the ends of a stroke often stray onto the border), all with the stroke's sign; they join
  the plane's earlier clicks. 1, 2, 3 and 5 clicks gave 0.880, 0.880, 0.878, 0.862 (3 was best, 0.866,
  on a first run of 19 organs), 8 and 12 clicks 0.794 and 0.497: imis-lite was trained with few clicks.
* lasso: the bounding box of the polygon, replacing the plane's box (earlier clicks stay). The box alone
  gave 0.900; adding 1 or 3 positive clicks at the deepest points of the filled polygon 0.894 and 0.882,
  3 such clicks without the box 0.878, and the box with the filled polygon as the decoder's mask input
  (+-8 logits in its low-res frame) 0.895 (these models read that input as their own earlier logits).
  `deep_points` stays for `lasso_prompt(n_points=...)`, measured above.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from imis.errors import PromptError

#: Clicks per scribble (measured on btcv-demo train: see the module docstring).
SCRIBBLE_POINTS = 3
#: Positive clicks deep inside a lasso besides its bounding box: none measured best (module docstring).
LASSO_POINTS = 0
MAX_STROKE_VERTICES = 5000

Click = tuple[float, float, bool]


def parse_stroke(value, kind: str) -> np.ndarray:
    """The page's stroke: a list of [x, y] pixel coordinates -> (n, 2) float array (n >= 2)."""
    try:
        pts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        pts = np.zeros((0, 0))
    if pts.ndim != 2 or pts.shape[1] != 2 or not 2 <= len(pts) <= MAX_STROKE_VERTICES:
        raise PromptError(
            f"a {kind} needs 2 to {MAX_STROKE_VERTICES} points [[x, y], ...] (got {np.shape(value)})"
        )
    if not np.isfinite(pts).all():
        raise PromptError(f"a {kind} has a non-finite coordinate")
    return pts


def clip_to(pts: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Coordinates clamped into the plane (a stroke may run past its edge)."""
    h, w = hw
    return np.column_stack([np.clip(pts[:, 0], 0, w - 1), np.clip(pts[:, 1], 0, h - 1)])


def resample(pts: np.ndarray, n: int) -> np.ndarray:
    """`n` points along the polyline at the centres of n stretches of equal arc length."""
    seg = np.hypot(*np.diff(pts, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] == 0:
        return pts[:1].repeat(n, axis=0)
    at = (np.arange(n) + 0.5) / n * arc[-1]
    return np.column_stack([np.interp(at, arc, pts[:, 0]), np.interp(at, arc, pts[:, 1])])


def scribble_clicks(value, positive: bool, hw: tuple[int, int], n: int = SCRIBBLE_POINTS) -> list[Click]:
    """A scribble -> n clicks along it, all of its sign (rounded to pixels, duplicates dropped)."""
    pts = clip_to(parse_stroke(value, "scribble"), hw)
    out: list[Click] = []
    for x, y in np.rint(resample(pts, n)):
        click = (float(x), float(y), bool(positive))
        if click not in out:
            out.append(click)
    return out


def polygon_mask(pts: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The filled polygon (its outline included) as a boolean (h, w) mask."""
    h, w = hw
    img = Image.new("1", (w, h), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in pts], fill=1, outline=1)
    return np.asarray(img, dtype=bool)


def deep_points(mask: np.ndarray, n: int) -> list[tuple[float, float]]:
    """n points well inside `mask`: the deepest, then each next one the farthest from those chosen among
    the pixels at least half as deep (spread over the region, never near its outline)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(depth >= depth.max() / 2)
    first = int(np.argmax(depth[ys, xs]))
    chosen = [first]
    dist = np.hypot(xs - xs[first], ys - ys[first])
    for _ in range(n - 1):
        k = int(np.argmax(dist))
        if dist[k] == 0:
            break
        chosen.append(k)
        dist = np.minimum(dist, np.hypot(xs - xs[k], ys - ys[k]))
    return [(float(xs[k]), float(ys[k])) for k in chosen]


def lasso_prompt(
    value, hw: tuple[int, int], n_points: int = LASSO_POINTS
) -> tuple[tuple[float, float, float, float], list[Click]]:
    """A lasso (closed polygon) -> (bounding box, `n_points` positive clicks deep inside it)."""
    pts = clip_to(parse_stroke(value, "lasso"), hw)
    x0, y0 = np.floor(pts.min(axis=0))
    x1, y1 = np.ceil(pts.max(axis=0))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise PromptError("the lasso encloses no area: draw around the object")
    box = (float(x0), float(y0), float(x1), float(y1))
    if n_points == 0:
        return box, []
    inside = deep_points(polygon_mask(pts, hw), n_points)
    return box, [(x, y, True) for x, y in inside]
