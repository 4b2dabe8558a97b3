"""Zoom-in refinement: the crop rule, the logit frames, and the real imis-lite on a btcv-demo slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imis.models.interactive import Embedding, PromptSpec
from imis.models.preprocess import Preprocess, frame_for, logits_to_native
from imis.models.zoom import ZoomConfig, ZoomModel, crop_window, native_to_low_res, object_extent


def test_object_extent_covers_mask_positive_clicks_and_box_but_not_negative_clicks():
    mask = np.zeros((100, 120), bool)
    mask[40:50, 30:45] = True
    prompts = PromptSpec(
        points=np.array([[60.0, 45.0], [5.0, 5.0]]), labels=np.array([1, 0]), box=np.array([28, 38, 50, 52.5])
    )
    assert object_extent(mask, prompts) == (28, 38, 60, 53)
    assert object_extent(np.zeros_like(mask), PromptSpec()) is None


def test_crop_window_is_a_square_around_a_small_object_inside_the_image():
    cfg = ZoomConfig(max_object_frac=0.5, expand=2.0, min_crop=48)
    w = crop_window((10, 20, 29, 29), (200, 300), cfg)  # 20 x 10 object near the top-left corner
    x0, y0, x1, y1 = w
    assert (x1 - x0, y1 - y0) == (48, 48)  # 2 x 20 = 40 < min_crop
    assert 0 <= x0 <= 10 and 29 < x1 <= 300 and 0 <= y0 <= 20 and 29 < y1 <= 200
    big = crop_window((10, 10, 190, 100), (200, 300), cfg)
    assert big is None  # 181 px of 300: more than half the image, no zoom
    x0, y0, x1, y1 = crop_window((100, 50, 159, 89), (200, 300), cfg)
    assert (x1 - x0, y1 - y0) == (120, 120)


def test_native_to_low_res_inverts_logits_to_native():
    pre = Preprocess(256, "longest_side", "bilinear", "minmax01", True)
    frame = frame_for((180, 240), pre)
    native = torch.full((180, 240), -10.0)
    native[60:120, 80:170] = 10.0
    low = native_to_low_res(native, Embedding(torch.zeros(1), frame), (256, 256))
    back = logits_to_native(low, frame)[0, 0] > 0
    truth = native > 0
    iou = (back & truth).sum() / (back | truth).sum()
    assert float(iou) > 0.97
    assert float(low[0, 0, 250, 250]) < 0  # padding is background


@pytest.fixture(scope="module")
def lite():
    from imis.models import load_model

    try:
        return load_model("imis-lite")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"imis-lite weights not available ({exc})")


def _slice(btcv_dir, target_word: str):
    from imis.data.formats import imed

    found = [
        (int((gt > 0).sum()), sample.image, gt > 0)
        for sample in imed.iter_samples(btcv_dir, "test", with_imask=False)
        for name, gt in sample.masks.items()
        if target_word in name
    ]
    if not found:
        pytest.skip(f"no {target_word} mask in btcv-demo test")
    _, image, gt = max(found, key=lambda f: f[0])  # the largest: a clear case either way
    return image, gt


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_zoom_refines_a_small_organ_and_keeps_the_mask_inside_the_crop(lite, btcv_dir):
    from imis.prompts.clicks import center_click

    image, gt = _slice(btcv_dir, "aorta")
    c = center_click(gt)
    spec = PromptSpec(points=np.array([[c.x, c.y]], dtype=np.float64), labels=np.array([1]))
    zoom = ZoomModel(lite)
    emb = zoom.encode(image)
    pred = zoom.decode(emb, spec)
    assert len(emb.crops) == 1  # a small organ: decoded again on one crop
    (window,) = emb.crops
    x0, y0, x1, y1 = window
    outside = pred.mask.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    assert _dice(pred.mask, gt) > 0.7
    # the pasted low-res logits feed back as a mask prompt: a correction click runs through zoom again
    again = zoom.decode(
        emb, PromptSpec(points=spec.points, labels=spec.labels, mask_logits=pred.low_res_logits)
    )
    assert _dice(again.mask, gt) > 0.7


def test_zoom_from_a_later_interaction_keeps_the_first_mask_and_zooms_the_corrections(lite, btcv_dir):
    from imis.prompts.clicks import center_click

    image, gt = _slice(btcv_dir, "aorta")
    c = center_click(gt)
    spec = PromptSpec(points=np.array([[c.x, c.y]], dtype=np.float64), labels=np.array([1]))
    zoom = ZoomModel(lite, ZoomConfig(start=2))
    emb = zoom.encode(image)
    first = zoom.decode(emb, spec)
    np.testing.assert_array_equal(first.mask, lite.decode(emb.full, spec).mask)
    assert not emb.crops  # the first prompt was not zoomed
    # a second click (here the same point again, positive) is the second interaction: zoomed
    two = PromptSpec(
        points=np.repeat(spec.points, 2, 0), labels=np.array([1, 1]), mask_logits=first.low_res_logits
    )
    again = zoom.decode(emb, two)
    assert len(emb.crops) == 1 and _dice(again.mask, gt) > 0.7


def test_zoom_leaves_a_large_object_to_the_whole_image(lite, btcv_dir):
    from imis.prompts.boxes import tight_box

    image, gt = _slice(btcv_dir, "liver")
    spec = PromptSpec(box=np.array(tight_box(gt), dtype=np.float64))
    cfg = ZoomConfig(max_object_frac=0.3)
    if crop_window(object_extent(gt, spec), gt.shape, cfg) is not None:
        pytest.skip("this liver slice is small enough to be zoomed")
    zoom = ZoomModel(lite, cfg)
    emb = zoom.encode(image)
    np.testing.assert_array_equal(zoom.decode(emb, spec).mask, lite.decode(emb.full, spec).mask)
    assert not emb.crops


def test_session_switch_wraps_the_model(lite, btcv_dir):
    from imis.session import Session

    image, gt = _slice(btcv_dir, "aorta")
    ys, xs = np.nonzero(gt)
    s = Session(lite, zoom=True)
    s.set_image(image)
    pred = s.add_click(float(xs.mean()), float(ys.mean()))
    assert s.model.name == "imis-lite+zoom"
    assert pred.mask.shape == gt.shape and _dice(pred.mask, gt) > 0.6


def test_segment_and_bench_take_zoom(lite, btcv_dir, tmp_path):
    from imis.cli import main
    from imis.io import read_image

    image, gt = _slice(btcv_dir, "aorta")
    png = next(btcv_dir.glob("image/*.png"))
    ys, xs = np.nonzero(gt)
    out = tmp_path / "m.png"
    # the CLI path: a click through the zoom wrapper writes a mask of the image's size
    args = ["segment", str(png), "--click", f"{int(xs.mean())},{int(ys.mean())}", "--zoom", "-o", str(out)]
    assert main(args) == 0
    assert read_image(out).array.shape[:2] == read_image(png).array.shape[:2]
    # the bench path: --zoom is parsed and wraps the learned models, not the weight-free baselines
    from imis.bench.runner import load_any_model
    from imis.cli import build_parser

    assert (
        build_parser().parse_args(["bench", "--models", "imis-lite", "--data", "d", "-o", "r", "--zoom"]).zoom
    )
    parse = build_parser().parse_args
    assert parse(["bench", "--models", "imis-lite", "--data", "d", "-o", "r", "--zoom", "3"]).zoom == 3
    assert parse(["bench", "--models", "imis-lite", "--data", "d", "-o", "r"]).zoom is None
    with pytest.raises(SystemExit):
        parse(["bench", "--models", "imis-lite", "--data", "d", "-o", "r", "--zoom", "0"])
    assert load_any_model("imis-lite", zoom=3).config.start == 3
    assert isinstance(load_any_model("imis-lite", zoom=True), ZoomModel)
    assert not isinstance(load_any_model("random-walker", zoom=True), ZoomModel)
