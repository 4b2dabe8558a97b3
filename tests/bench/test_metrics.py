"""Metrics on analytic shapes with hand-computed values (boundary-voxel surface definition)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imis.bench.metrics import MaskMetrics, dice, hd95, iou, mask_metrics, nsd, surface, surface_distances


def _square(shape: tuple[int, ...], start: int, side: int, shift: int = 0, axis: int = -1) -> np.ndarray:
    m = np.zeros(shape, bool)
    sl = [slice(start, start + side)] * len(shape)
    sl[axis] = slice(start + shift, start + shift + side)
    m[tuple(sl)] = True
    return m


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --- Dice / IoU (unchanged semantics) ------------------------------------------------------------------


def test_dice_iou_unchanged():
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 px
    b = np.zeros((4, 4), bool)
    b[:2, :] = True  # 8 px, overlap 4
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    assert iou(a, b) == pytest.approx(4 / 8)
    empty = np.zeros((4, 4), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(a, empty) == 0.0 and iou(empty, a) == 0.0


def test_offset_discs_dice_iou_from_pixel_counts():
    shape, r, d = (64, 64), 15.0, 6
    pred, gt = _disc(shape, 32, 26, r), _disc(shape, 32, 26 + d, r)
    # Independent count: explicit loop over pixel centres.
    n_p = n_g = n_i = 0
    for y in range(shape[0]):
        for x in range(shape[1]):
            in_p = (y - 32) ** 2 + (x - 26) ** 2 <= r * r
            in_g = (y - 32) ** 2 + (x - 26 - d) ** 2 <= r * r
            n_p += in_p
            n_g += in_g
            n_i += in_p and in_g
    m = mask_metrics(pred, gt)
    assert m.dice == pytest.approx(2 * n_i / (n_p + n_g))
    assert m.iou == pytest.approx(n_i / (n_p + n_g - n_i))
    # Directed distance from a point at angle t on one circle to the other is ~ d*|cos t|, so the 95th
    # percentile is ~ d*cos(0.05*pi/2) = 0.997*d; the max is d. Discretisation moves it by < 1 px.
    assert abs(m.hd95 - d) <= 1.0
    assert 0.0 < m.nsd < 1.0


# --- Squares shifted by k pixels --------------------------------------------------------------------


def test_square_surface_is_outer_ring():
    sq = _square((20, 20), 5, 10)
    s = surface(sq)
    assert s.sum() == 4 * (10 - 1)
    assert not s[6:14, 6:14].any()


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_shifted_square_hd95_is_k(k):
    gt = _square((30, 30), 5, 10)
    pred = _square((30, 30), 5, 10, shift=k, axis=1)
    assert hd95(pred, gt, (1.0, 1.0)) == k
    assert hd95(gt, pred, (1.0, 1.0)) == k


def test_shifted_square_nsd_hand_computed():
    n, k = 10, 3
    gt = _square((30, 30), 5, n)
    pred = _square((30, 30), 5, n, shift=k, axis=1)
    # Ring of 4(n-1) = 36 voxels per mask; by symmetry both directions count the same.
    # Pred ring -> gt ring, tolerance tau < k (integer distances):
    #   top and bottom rows: n-k voxels at 0 plus k voxels at 1..k  -> n-k+tau each within tau
    #   left column rows 1..n-2: distance min(k, r, n-1-r)           -> 2*tau within tau
    #   right column: distance k                                      -> 0 within tau
    # => (2(n-k+tau) + 2 tau) / (4(n-1)) = (2n - 2k + 4 tau) / (4(n-1))
    for tau in (0, 1, 2):
        expected = (2 * n - 2 * k + 4 * tau) / (4 * (n - 1))
        assert nsd(pred, gt, (1.0, 1.0), tolerance_mm=tau) == pytest.approx(expected)
    assert nsd(pred, gt, (1.0, 1.0), tolerance_mm=2) == pytest.approx(22 / 36)
    assert nsd(pred, gt, (1.0, 1.0), tolerance_mm=2.5) == pytest.approx(22 / 36)
    assert nsd(pred, gt, (1.0, 1.0), tolerance_mm=k) == 1.0  # boundary is inclusive (<=)
    assert nsd(pred, gt, (1.0, 1.0), tolerance_mm=k + 0.5) == 1.0


def test_surface_distances_shifted_square():
    n, k = 10, 3
    gt = _square((30, 30), 5, n)
    pred = _square((30, 30), 5, n, shift=k, axis=1)
    sd = surface_distances(pred, gt, (1.0, 1.0))
    assert sd.pred_to_gt.shape == sd.pred_weights.shape == (4 * (n - 1),)
    assert sd.gt_to_pred.shape == sd.gt_weights.shape == (4 * (n - 1),)
    assert np.all(sd.pred_weights == 1.0)
    assert sd.pred_to_gt.max() == k and sd.gt_to_pred.max() == k
    assert np.array_equal(np.sort(sd.pred_to_gt), np.sort(sd.gt_to_pred))
    assert (sd.pred_to_gt == 0).sum() == 2 * (n - k)


# --- Anisotropic spacing ----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4])
def test_anisotropic_spacing(k):
    spacing = (2.5, 1.0)
    gt = _square((40, 40), 8, 12)
    pred_rows = _square((40, 40), 8, 12, shift=k, axis=0)
    pred_cols = _square((40, 40), 8, 12, shift=k, axis=1)
    assert hd95(pred_rows, gt, spacing) == pytest.approx(2.5 * k)
    assert hd95(pred_cols, gt, spacing) == pytest.approx(1.0 * k)
    # NSD: a shift of k rows is 2.5k mm, so it is fully within tolerance only from 2.5k mm.
    assert nsd(pred_rows, gt, spacing, tolerance_mm=2.5 * k) == 1.0
    assert nsd(pred_rows, gt, spacing, tolerance_mm=2.5 * k - 0.1) < 1.0
    assert nsd(pred_cols, gt, spacing, tolerance_mm=k) == 1.0


# --- 3D cube ----------------------------------------------------------------------------------------


def test_cube_3d():
    n, k = 8, 2
    gt = _square((20, 20, 20), 4, n)
    pred = _square((20, 20, 20), 4, n, shift=k, axis=2)
    s = surface(gt)
    assert s.sum() == n**3 - (n - 2) ** 3
    m = mask_metrics(pred, gt, spacing=(1.0, 1.0, 1.0), tolerance_mm=1.0)
    assert m.dice == pytest.approx((n - k) / n)  # overlap n*n*(n-k), each cube n**3
    assert m.iou == pytest.approx((n - k) / (n + k))
    assert m.hd95 == k
    assert 0.0 < m.nsd < 1.0
    assert nsd(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=k) == 1.0
    assert hd95(pred, gt, (3.0, 0.5, 2.0)) == pytest.approx(2.0 * k)
    assert hd95(pred, gt, (1.0, 1.0, 0.7)) == pytest.approx(0.7 * k)


# --- Empty cases, single pixel ----------------------------------------------------------------------


def test_both_empty():
    e = np.zeros((10, 10), bool)
    assert mask_metrics(e, e) == MaskMetrics(dice=1.0, iou=1.0, nsd=1.0, hd95=0.0)
    sd = surface_distances(e, e, (1.0, 1.0))
    assert all(a.size == 0 for a in sd)


def test_one_empty():
    e = np.zeros((10, 10), bool)
    sq = _square((10, 10), 2, 4)
    for pred, gt in ((sq, e), (e, sq)):
        m = mask_metrics(pred, gt, spacing=(0.5, 0.5))
        assert (m.dice, m.iou, m.nsd) == (0.0, 0.0, 0.0)
        assert math.isinf(m.hd95) and m.hd95 > 0
    sd = surface_distances(sq, e, (1.0, 1.0))
    assert sd.gt_to_pred.size == 0 and sd.pred_to_gt.size == 12 and np.all(np.isinf(sd.pred_to_gt))


def test_single_pixel():
    a = np.zeros((10, 10), bool)
    a[4, 4] = True
    assert surface(a).sum() == 1
    assert mask_metrics(a, a) == MaskMetrics(dice=1.0, iou=1.0, nsd=1.0, hd95=0.0)
    b = np.zeros((10, 10), bool)
    b[7, 8] = True  # offset (3, 4) -> 5 px; with spacing (2, 1) -> sqrt(36 + 16)
    m = mask_metrics(a, b, tolerance_mm=5.0)
    assert (m.dice, m.iou, m.hd95, m.nsd) == (0.0, 0.0, 5.0, 1.0)
    assert nsd(a, b, tolerance_mm=4.99) == 0.0
    assert hd95(a, b, (2.0, 1.0)) == pytest.approx(math.sqrt(52))


def test_mask_touching_image_border_has_surface():
    full = np.ones((5, 5), bool)
    assert surface(full).sum() == 16
    assert mask_metrics(full, full).hd95 == 0.0


def test_bad_inputs():
    a = np.zeros((5, 5), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        hd95(a, np.zeros((5, 6), bool))
    with pytest.raises(ValueError, match="spacing"):
        nsd(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        hd95(a, a, spacing=(0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        mask_metrics(a, a, tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="2D or 3D"):
        hd95(np.zeros(5, bool), np.zeros(5, bool), spacing=(1.0,))


def test_mask_metrics_matches_individual_functions():
    pred, gt = _disc((48, 48), 20, 22, 9), _disc((48, 48), 25, 24, 11)
    sp = (0.8, 1.3)
    m = mask_metrics(pred, gt, spacing=sp, tolerance_mm=1.5)
    assert m.dice == dice(pred, gt) and m.iou == iou(pred, gt)
    assert m.nsd == nsd(pred, gt, sp, 1.5) and m.hd95 == hd95(pred, gt, sp)
    assert set(m.as_dict()) == {"dice", "iou", "nsd", "hd95"}


# --- Optional cross-check against DeepMind's `surface-distance` package ------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the package uses scipy.ndimage.filters
def test_against_deepmind_surface_distance():
    sdm = pytest.importorskip(
        "surface_distance",
        reason="DeepMind `surface-distance` not installed (pip install surface-distance); comparison skipped",
    )
    # HD95 agrees exactly on axis-aligned shifts (both definitions see the far face at k * spacing).
    for shape, spacing, axis in (
        ((30, 30), (1.0, 1.0), 1),
        ((30, 30), (2.5, 1.0), 0),
        ((20, 20, 20), (1.0, 1.0, 2.0), 2),
    ):
        for k in (1, 3):
            gt = _square(shape, 5, 9)
            pred = _square(shape, 5, 9, shift=k, axis=axis)
            ref = sdm.compute_surface_distances(gt, pred, spacing)
            assert hd95(pred, gt, spacing) == pytest.approx(sdm.compute_robust_hausdorff(ref, 95))
            assert nsd(pred, gt, spacing, spacing[axis] * k) == 1.0
            assert sdm.compute_surface_dice_at_tolerance(ref, spacing[axis] * k) == pytest.approx(1.0)
    # On discs the definitions differ (voxel centres vs half-voxel surfels, unit vs area weights):
    # close, not equal. Documented in the module docstring.
    pred, gt = _disc((96, 96), 48, 44, 25), _disc((96, 96), 48, 50, 25)
    ref = sdm.compute_surface_distances(gt, pred, (1.0, 1.0))
    assert hd95(pred, gt) == pytest.approx(sdm.compute_robust_hausdorff(ref, 95), abs=1.0)
    assert nsd(pred, gt, (1.0, 1.0), 2.0) == pytest.approx(
        sdm.compute_surface_dice_at_tolerance(ref, 2.0), abs=0.05
    )


def _full_array_distances(p: np.ndarray, g: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """The surface distances computed on the whole array, without the crop surface_distances uses."""
    from scipy import ndimage

    st = ndimage.generate_binary_structure(p.ndim, 1)
    sp_, sg_ = (m & ~ndimage.binary_erosion(m, structure=st, border_value=0) for m in (p, g))
    return (
        ndimage.distance_transform_edt(~sg_, sampling=spacing)[sp_],
        ndimage.distance_transform_edt(~sp_, sampling=spacing)[sg_],
    )


@pytest.mark.parametrize("seed", range(6))
def test_cropped_surface_distances_equal_whole_array(seed):
    rng = np.random.default_rng(seed)
    shape = (64, 80) if seed % 2 else (12, 30, 40)
    p, g = np.zeros(shape, bool), np.zeros(shape, bool)
    for m in (p, g):
        for _ in range(3):  # random boxes, some touching the border
            lo = [int(rng.integers(0, s - 2)) for s in shape]
            hi = [min(s, a + int(rng.integers(1, s // 2 + 2))) for a, s in zip(lo, shape, strict=True)]
            m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    spacing = (0.7, 1.3) if len(shape) == 2 else (2.5, 0.8, 0.8)
    sd = surface_distances(p, g, spacing)
    want_pg, want_gp = _full_array_distances(p, g, spacing)
    np.testing.assert_array_equal(sd.pred_to_gt, want_pg)
    np.testing.assert_array_equal(sd.gt_to_pred, want_gp)
