"""Scribble and lasso strokes -> the prompts the models take (clicks and a box).

The models of imis take points, a box, text and their own low-resolution logits, not free-hand strokes,
so the page's strokes are converted here (rules chosen on btcv-demo's training split with imis-lite by
benchmarks/stroke_prompts.py; the figures are in the README's browser-tool section):

* scribble: `SCRIBBLE_POINTS` clicks spread along the stroke by arc length, at the centres of equal
  stretches (the ends of a stroke often stray onto the border), all with the stroke's sign; they join
  the plane's earlier clicks like clicks would.
* lasso: the bounding box of the polygon plus one positive click at the point of the filled polygon
  farthest from its outline; it replaces the plane's box (earlier clicks stay), like a box would.

A filled polygon as a mask prompt was measured too and is not used: the mask input of these models
is their own low-resolution logits, and a binary polygon fed there does worse than its box (README).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from imis.errors import PromptError

#: Clicks per scribble (measured on btcv-demo train: see the module docstring).
SCRIBBLE_POINTS = 3
#: Positive clicks inside a lasso, besides its bounding box.
LASSO_POINTS = 1
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
    """A lasso (closed polygon) -> (bounding box, positive clicks inside it)."""
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
