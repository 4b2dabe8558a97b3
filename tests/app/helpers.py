"""Helpers of the browser tests: ground truth from btcv-demo, waiting for the page, driving the canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse
from scipy import ndimage

BTCV_CASE = "ABD_037_71"
LIVER, SPLEEN, KIDNEY_LEFT = 6, 1, 3


def btcv_label(btcv_dir: Path, case: str, label: int) -> np.ndarray:
    (path,) = (btcv_dir / "label").glob(f"x___{case}.*.npz")
    dense = scipy.sparse.load_npz(path).toarray()
    return dense[label - 1].reshape(512, 512) > 0


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel deepest inside the mask."""
    dist = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def bbox(mask: np.ndarray, pad: int = 0) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        max(0, int(xs.min()) - pad),
        max(0, int(ys.min()) - pad),
        min(w - 1, int(xs.max()) + pad),
        min(h - 1, int(ys.max()) + pad),
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_function("window.imis && window.imis.idle()", timeout=timeout_ms)


def open_upload(page, server: str, image: Path) -> None:
    """A fresh page (saved state cleared) with ``image`` uploaded and decoded."""
    _fresh(page, server)
    page.set_input_files("#upload", str(image))
    wait_idle(page)


def open_listed(page, server: str, name: str, depth: int) -> None:
    """A fresh page with the data folder's volume ``name`` (``depth`` slices) opened from the list."""
    _fresh(page, server)
    page.locator("#files li", has_text=name).click()
    wait_idle(page)
    page.wait_for_function(f"window.imis.S.doc && window.imis.S.doc.shape[0] === {int(depth)}")


def _fresh(page, server: str) -> None:
    page.goto(server)
    page.evaluate("localStorage.clear()")
    page.reload()


def screen_point(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y) of the plane shown (follows zoom, pan and flips)."""
    sx, sy = page.evaluate("([x, y]) => window.imis.viewer.toScreen(x + 0.5, y + 0.5)", [x, y])
    box = page.locator("#canvas").bounding_box()
    return box["x"] + sx, box["y"] + sy


def click_pixel(page, x: float, y: float, button: str = "left") -> None:
    px, py = screen_point(page, x, y)
    page.mouse.click(px, py, button=button)
    wait_idle(page)


def drag_box(page, x0: float, y0: float, x1: float, y1: float) -> None:
    a, b = screen_point(page, x0, y0), screen_point(page, x1, y1)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=3)
    page.mouse.move(*b, steps=3)
    page.mouse.up()
    wait_idle(page)


def label_count(page, label: int) -> int:
    return page.evaluate("(l) => window.imis.viewer.labels.filter((v) => v === l).length", label)


def export(page, fmt: str, dest: Path) -> Path:
    page.select_option("#fmt", fmt)
    with page.expect_download() as info:
        page.click("#export")
    dl = info.value
    out = dest / dl.suggested_filename
    dl.save_as(out)
    wait_idle(page)
    return out


def stroke_inside(mask: np.ndarray, step: float = 2.0) -> list[list[float]]:
    """A scribble as a user draws one: along the mask's long axis through its deepest pixel, staying
    inside the mask eroded by 3 px; [[x, y], ...] every `step` pixels."""
    inner = ndimage.binary_erosion(mask, iterations=3)
    ys, xs = np.nonzero(inner)
    axis = np.linalg.eigh(np.cov(np.stack([xs, ys])))[1][:, -1]
    x0, y0 = interior_point(inner)
    ends = []
    for sign in (-1, 1):
        t = 0.0
        while True:
            x, y = x0 + sign * (t + step) * axis[0], y0 + sign * (t + step) * axis[1]
            if not (
                0 <= round(y) < mask.shape[0] and 0 <= round(x) < mask.shape[1] and inner[round(y), round(x)]
            ):
                break
            t += step
        ends.append(sign * t)
    ts = np.arange(ends[0], ends[1] + step / 2, step)
    return [[float(x0 + t * axis[0]), float(y0 + t * axis[1])] for t in ts]


def lasso_around(mask: np.ndarray, pad: int = 5, every: int = 6) -> list[list[float]]:
    """A lasso as a user draws one: the mask's outline grown by `pad` px, every `every`-th vertex."""
    from skimage import measure

    grown = ndimage.binary_dilation(mask, iterations=pad)
    contour = max(measure.find_contours(grown.astype(float), 0.5), key=len)[::every]
    return [[float(x), float(y)] for y, x in contour]


def drag_path(page, points) -> None:
    """Press, move through image pixels `points` ([[x, y], ...]) and release: a scribble or a lasso."""
    first, *rest = [screen_point(page, x, y) for x, y in points]
    page.mouse.move(*first)
    page.mouse.down()
    for p in rest:
        page.mouse.move(*p)
    page.mouse.up()
    wait_idle(page)
