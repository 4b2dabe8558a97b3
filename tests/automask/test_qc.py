"""Each ground-truth QC rule on a constructed case and on a real btcv-demo slice."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from imis.automask.qc import Region, apply_gt_qc, clean_regions, paint_id_map


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_multi_region_gt_replaces_the_masks_inside_it():
    gt = _rect(40, 40, 2, 10, 2, 10) | _rect(40, 40, 25, 35, 25, 35)  # one label, two regions
    inside = Region(_rect(40, 40, 3, 9, 3, 9), "model")  # a part of region 1
    outside = Region(_rect(40, 40, 12, 20, 12, 20), "model")
    out = apply_gt_qc([inside, outside], gt[None], ["bowel"], 0.95)
    assert [r.source for r in out] == ["model", "gt"]
    assert out[0] is outside
    assert np.array_equal(out[1].mask, gt) and out[1].info == {"gt_label": "bowel", "rule": "multi-region"}


def test_single_region_kept_when_boxes_agree_else_replaced():
    gt = np.stack([_rect(60, 60, 10, 30, 10, 30), _rect(60, 60, 35, 55, 35, 55)])
    good = Region(_rect(60, 60, 10, 30, 10, 30) & ~_rect(60, 60, 15, 18, 15, 18), "model")  # box IoU 1
    poor = Region(_rect(60, 60, 38, 52, 38, 52), "model")  # box IoU 0.49: inside region 2
    out = apply_gt_qc([good, poor], gt, ["liver", "spleen"], 0.95)
    assert out[0] is good and good.info["stands_for"] == ["liver"]
    assert len(out) == 2 and out[1].source == "gt" and out[1].info["gt_label"] == "spleen"
    # just above / below the 95% box overlap
    almost = Region(_rect(60, 60, 10, 30, 10, 29), "model")  # 19 of 20 columns: box IoU 0.95
    assert apply_gt_qc([almost], gt[:1], ["liver"], 0.95)[-1].source == "gt"
    assert apply_gt_qc([almost], gt[:1], ["liver"], 0.94)[0].info["stands_for"] == ["liver"]


def test_opening_and_closing_remove_specks_and_fill_holes():
    m = _rect(40, 40, 5, 30, 5, 30)
    m[15, 15] = False  # a hole
    m[36, 36] = True  # a speck
    gt_region = Region(_rect(40, 40, 0, 2, 0, 2), "gt")  # GT is never touched
    out = clean_regions([Region(m, "model"), gt_region], 1)
    assert out[0].mask[15, 15] and not out[0].mask[36, 36]
    assert out[0].mask.sum() == 25 * 25 - 4  # the 3x3 cross opening rounds off the four corners
    assert out[1] is gt_region


def test_id_map_drops_small_masks_and_paints_small_on_top():
    big = Region(_rect(20, 20, 0, 20, 0, 20), "model")
    small = Region(_rect(20, 20, 5, 10, 5, 10), "model")
    tiny = Region(_rect(20, 20, 12, 14, 12, 14), "model")  # 4 px < 5
    ids, kept = paint_id_map([small, big, tiny], 5, (20, 20))
    assert ids.dtype == np.int64 and kept == [big, small]
    assert (ids == 2).sum() == 25 and (ids == 1).sum() == 400 - 25
    # `cover` (36 px) keeps only 11 visible pixels under `small`: taken out, the map repainted
    cover = Region(_rect(20, 20, 4, 10, 4, 10), "model")
    ids, kept = paint_id_map([big, cover, small], 20, (20, 20))
    assert kept == [big, small]
    assert np.bincount(ids.ravel()).tolist() == [0, 375, 25]


def test_rules_on_a_real_btcv_slice(slice_gt):
    gt, names = slice_gt
    present = [c for c in range(gt.shape[0]) if gt[c].any()]
    n_regions = {c: ndimage.label(gt[c], structure=np.ones((3, 3)))[1] for c in present}
    single = [c for c in present if n_regions[c] == 1]
    multi = [c for c in present if n_regions[c] > 1]
    assert multi, "the slice has a label in several regions"
    big = max(single, key=lambda c: gt[c].sum())
    # a generated mask of the largest organ, one pixel eroded: boxes agree -> kept
    good = Region(ndimage.binary_erosion(gt[big]), "model")
    # a generated mask of half of another organ: boxes disagree -> the GT region replaces it
    other = [c for c in single if c != big][0]
    rows = np.flatnonzero(gt[other].any(1))
    half = gt[other].copy()
    half[rows[len(rows) // 2] :] = False
    poor = Region(half, "model")
    out = apply_gt_qc([good, poor], gt, names, 0.95)
    assert good in out and good.info["stands_for"] == [names[big]]
    assert poor not in out
    gt_labels = sorted(r.info["gt_label"] for r in out if r.source == "gt")
    assert gt_labels == sorted(names[c] for c in present if c != big)
    rules = {r.info["gt_label"]: r.info["rule"] for r in out if r.source == "gt"}
    assert all(rules[names[c]] == "multi-region" for c in multi)
    ids, kept = paint_id_map(out, int(0.005 * gt[0].size), gt.shape[1:])
    assert ids.shape == gt.shape[1:] and ids.max() == len(kept)
    assert all(r.area >= 0.005 * gt[0].size for r in kept)
