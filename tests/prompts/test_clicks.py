"""Click, box and text simulators on constructed masks with hand-known answers."""

from __future__ import annotations

import numpy as np
import pytest

from imis.prompts import (
    Click,
    center_click,
    centroid_candidates,
    centroid_click,
    jittered_box,
    largest_component_click,
    offset_box,
    ritm_click,
    text_prompt,
    tight_box,
    uniform_click,
    uniform_error_click,
)


def rect(shape, y0, y1, x0, x1):
    """Bool mask with rows y0..y1-1 and columns x0..x1-1 set."""
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------------------------------------------------
# first clicks
# ---------------------------------------------------------------------------------------------------------
def test_center_click_known_argmax_and_raster_tie_break():
    # 5 rows x 9 columns: depth 3 along the middle row at x = 5..9; the first in raster order is x = 5.
    m = rect((11, 15), 2, 7, 3, 12)
    assert center_click(m) == Click(5, 4, True)
    # Two identical squares: the upper-left one's centre comes first in raster order.
    two = rect((20, 20), 12, 17, 12, 17) | rect((20, 20), 2, 7, 2, 7)
    assert center_click(two) == Click(4, 4, True)


def test_center_click_image_border_counts_as_boundary():
    assert center_click(np.ones((5, 5), dtype=bool)) == Click(2, 2, True)
    # A band touching the left border: without the border as boundary its deepest point would be x = 0.
    band = rect((7, 10), 2, 5, 0, 10)
    c = center_click(band)
    assert (c.y, c.x) == (3, 1)


def test_single_pixel_and_empty_masks():
    m = np.zeros((6, 6), dtype=bool)
    m[4, 1] = True
    rng = np.random.default_rng(0)
    for click in (center_click(m), centroid_click(m, rng), uniform_click(m, rng)):
        assert click == Click(1, 4, True)
    empty = np.zeros((6, 6), dtype=bool)
    for fn in (center_click, lambda x: centroid_click(x, rng), lambda x: uniform_click(x, rng)):
        with pytest.raises(ValueError, match="empty mask"):
            fn(empty)
    with pytest.raises(ValueError, match="2D"):
        center_click(np.ones((2, 3, 3), dtype=bool))


def test_centroid_click_lies_in_nearest_half():
    m = rect((40, 40), 5, 30, 5, 12) | rect((40, 40), 22, 30, 5, 35)  # an L shape
    ys, xs = np.nonzero(m)
    xy = np.stack([xs, ys], 1)
    d = np.linalg.norm(xy - xy.mean(0), axis=1)
    cand = centroid_candidates(m)
    assert len(cand) == len(xy) // 2
    cand_d = np.linalg.norm(cand - xy.mean(0), axis=1)
    in_cand = {tuple(p) for p in cand.tolist()}
    rest_d = d[[tuple(p) not in in_cand for p in xy.tolist()]]
    assert cand_d.max() <= rest_d.min()
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(200):
        c = centroid_click(m, rng)
        assert c.positive and (c.x, c.y) in in_cand
        seen.add((c.x, c.y))
    assert len(seen) > 20  # really random among the candidates
    # determinism from the generator alone
    a = [centroid_click(m, np.random.default_rng(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_uniform_click_in_foreground_and_excludes_clicked():
    m = rect((10, 10), 2, 4, 3, 5)  # 4 pixels
    rng = np.random.default_rng(1)
    clicked = []
    for _ in range(4):
        c = uniform_click(m, rng, clicked)
        assert m[c.y, c.x] and c not in clicked
        clicked.append(c)
    with pytest.raises(ValueError, match="all pixels clicked"):
        uniform_click(m, rng, clicked)


# ---------------------------------------------------------------------------------------------------------
# correction clicks
# ---------------------------------------------------------------------------------------------------------
def test_no_error_gives_none():
    gt = rect((12, 12), 3, 8, 3, 8)
    rng = np.random.default_rng(0)
    assert ritm_click(gt, gt) is None
    assert largest_component_click(gt, gt) is None
    assert uniform_error_click(gt, gt, rng) is None


def test_ritm_fn_vs_fp_sign():
    shape = (30, 30)
    gt = rect(shape, 2, 9, 2, 9)  # 7x7 object, entirely missed: FN depth 4 at its centre (5, 5)
    pred = rect(shape, 20, 23, 20, 23)  # 3x3 false positive: depth 2
    assert ritm_click(pred, gt) == Click(5, 5, True)
    # swap roles: the 7x7 region is now a false positive
    assert ritm_click(gt, pred) == Click(5, 5, False)


def test_ritm_tie_between_fn_and_fp_goes_to_fp():
    shape = (20, 20)
    gt = rect(shape, 2, 5, 2, 5)
    pred = rect(shape, 10, 13, 10, 13)  # equal 3x3 regions: equal maxima
    assert ritm_click(pred, gt) == Click(11, 11, False)


def test_ritm_and_largest_component_differ():
    shape = (40, 40)
    strip = rect(shape, 2, 4, 2, 22)  # 2 x 20 = 40 px FN, depth 1
    square = rect(shape, 20, 26, 20, 26)  # 6 x 6 = 36 px FP, depth 3
    gt, pred = strip, square
    assert ritm_click(pred, gt) == Click(22, 22, False)  # global EDT maximum: the square's centre
    c = largest_component_click(pred, gt)
    assert c == Click(2, 2, True)  # largest component: the strip; depth-1 tie -> first in raster order


def test_largest_component_centre_and_fallback_to_next_component():
    shape = (30, 30)
    big = rect(shape, 2, 9, 2, 9)  # 49 px, centre (5, 5)
    small = rect(shape, 20, 23, 20, 23)  # 9 px, centre (21, 21)
    gt = big | small
    pred = np.zeros(shape, dtype=bool)
    assert largest_component_click(pred, gt) == Click(5, 5, True)
    # Next best pixel of the big component once its centre is clicked
    c2 = largest_component_click(pred, gt, [Click(5, 5, True)])
    assert c2 is not None and big[c2.y, c2.x] and (c2.x, c2.y) != (5, 5)
    # All of the big component clicked: fall back to the small one
    used = [(int(x), int(y)) for y, x in zip(*np.nonzero(big), strict=True)]
    assert largest_component_click(pred, gt, used) == Click(21, 21, True)
    used += [(int(x), int(y)) for y, x in zip(*np.nonzero(small), strict=True)]
    assert largest_component_click(pred, gt, used) is None


def test_largest_component_is_8_connected_and_sign_from_gt():
    shape = (20, 20)
    diag = np.zeros(shape, dtype=bool)
    for i in range(6):
        diag[2 + i, 2 + i] = True  # 6 px diagonal: one 8-connected component
    blob = rect(shape, 14, 16, 14, 16)  # 4 px
    pred = diag | blob  # both false positives
    c = largest_component_click(pred, np.zeros(shape, dtype=bool))
    assert c == Click(2, 2, False)


@pytest.mark.parametrize("sim", ["ritm", "largest", "uniform"])
def test_correction_clicks_never_repeat_and_exhaust_to_none(sim):
    shape = (16, 16)
    gt = rect(shape, 2, 6, 2, 6)  # 16 px, pred misses it (FN)
    pred = rect(shape, 10, 13, 10, 12)  # 6 px FP
    n_err = int((gt ^ pred).sum())
    rng = np.random.default_rng(5)
    clicked: list[Click] = []
    while True:
        if sim == "ritm":
            c = ritm_click(pred, gt, clicked)
        elif sim == "largest":
            c = largest_component_click(pred, gt, clicked)
        else:
            c = uniform_error_click(pred, gt, rng, clicked)
        if c is None:
            break
        assert (c.x, c.y) not in {(k.x, k.y) for k in clicked}
        assert (gt ^ pred)[c.y, c.x]
        assert c.positive == bool(gt[c.y, c.x])
        clicked.append(c)
        assert len(clicked) <= n_err
    assert len(clicked) == n_err
    assert {k.positive for k in clicked} == {True, False}


def test_uniform_error_click_covers_region_uniformly():
    shape = (10, 10)
    gt = rect(shape, 0, 2, 0, 2)  # 4 FN pixels
    pred = rect(shape, 8, 10, 8, 10)  # 4 FP pixels
    rng = np.random.default_rng(11)
    counts: dict[tuple[int, int], int] = {}
    for _ in range(4000):
        c = uniform_error_click(pred, gt, rng)
        counts[(c.x, c.y)] = counts.get((c.x, c.y), 0) + 1
    assert len(counts) == 8
    assert min(counts.values()) > 400  # expected 500 each


def test_correction_input_checks():
    with pytest.raises(ValueError, match="same shape"):
        ritm_click(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="outside"):
        ritm_click(np.zeros((4, 4), bool), np.ones((4, 4), bool), [(4, 0)])


# ---------------------------------------------------------------------------------------------------------
# boxes and text
# ---------------------------------------------------------------------------------------------------------
def test_tight_box():
    assert tight_box(rect((20, 30), 3, 8, 5, 17)) == (5, 3, 16, 7)


def test_jittered_box_bounds_and_clamping():
    m = rect((40, 50), 10, 20, 12, 30)
    tight = np.array(tight_box(m))
    rng = np.random.default_rng(2)
    deltas = []
    for _ in range(500):
        b = np.array(jittered_box(m, rng, 5))
        deltas.append(b - tight)
    deltas = np.array(deltas)
    assert np.abs(deltas).max() == 5 and deltas.min() == -5
    assert len(np.unique(deltas[:, 0])) == 11  # every offset in [-5, 5] occurs
    assert jittered_box(m, rng, 0) == tuple(tight)
    # a mask touching the corners stays inside the image
    corner = rect((10, 12), 0, 10, 0, 12)
    for _ in range(50):
        x0, y0, x1, y1 = jittered_box(corner, rng, 3)
        assert 0 <= x0 <= x1 <= 11 and 0 <= y0 <= y1 <= 9


@pytest.mark.parametrize("offset", [0, 5, 10, 20])
def test_offset_box_exact(offset):
    m = rect((200, 200), 60, 120, 70, 150)  # far from the border and wider than 2 x 20
    tight = np.array(tight_box(m))
    rng = np.random.default_rng(4)
    signs = set()
    for _ in range(40):
        b = np.array(offset_box(m, offset, rng))
        assert (np.abs(b - tight) == offset).all()
        signs.add(tuple(np.sign(b - tight)))
    if offset:
        assert len(signs) > 4  # outward and inward per coordinate
    else:
        assert signs == {(0, 0, 0, 0)}
    again = [offset_box(m, offset, np.random.default_rng(9)) for _ in range(2)]
    assert again[0] == again[1]


def test_offset_box_clamped_at_border():
    m = rect((50, 50), 0, 10, 0, 10)
    for seed in range(20):
        x0, y0, x1, y1 = offset_box(m, 20, np.random.default_rng(seed))
        assert 0 <= x0 <= x1 <= 49 and 0 <= y0 <= y1 <= 49
    with pytest.raises(ValueError):
        offset_box(m, -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        offset_box(np.zeros((5, 5), bool), 5, np.random.default_rng(0))


def test_text_prompt():
    assert text_prompt("liver") == "A segmentation area of a liver."
    # the sentence the towers read: a known target by its display name, free text lower-cased
    assert text_prompt("kidney_right", "a {} in CT") == "a right kidney in CT"
    assert text_prompt("Right-kidney") == "A segmentation area of a right kidney."
    assert text_prompt("a Brand-new lesion") == "A segmentation area of a a brand new lesion."
    # a recorded sentence replays as it is (never wrapped twice); another template wraps it
    sentence = text_prompt("kidney_right")
    assert text_prompt(sentence) == sentence
    assert text_prompt("liver", "a {} in CT") == text_prompt(text_prompt("liver", "a {} in CT"), "a {} in CT")
    with pytest.raises(ValueError):
        text_prompt("")
    with pytest.raises(ValueError):
        text_prompt("liver", "no field")


@pytest.mark.parametrize("seed", range(5))
def test_cropped_distance_transform_equals_whole_image(seed):
    from scipy import ndimage

    from imis.prompts.clicks import _edt

    rng = np.random.default_rng(seed)
    region = np.zeros((40, 50), bool)
    for _ in range(3):  # blobs, some touching the border
        y, x = int(rng.integers(0, 40)), int(rng.integers(0, 50))
        region[max(0, y - 6) : y + int(rng.integers(1, 9)), max(0, x - 7) : x + int(rng.integers(1, 9))] = (
            True
        )
    region &= rng.random(region.shape) > 0.1  # holes
    want = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    np.testing.assert_array_equal(_edt(region), want)
