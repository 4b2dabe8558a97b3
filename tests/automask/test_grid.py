"""The click grid decoded in batches against one embedding equals a per-click loop of the plain decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imis.automask import generate
from imis.automask.settings import AutomaskSettings
from imis.models.grid_decode import decode_clicks, masks_for, shared_image


def test_point_grid_is_cell_centres():
    pts = generate.point_grid(4, 100, 200)
    assert pts.shape == (16, 2)
    np.testing.assert_allclose(pts[:4, 0], [25, 75, 125, 175])  # x along the first row
    np.testing.assert_allclose(pts[::4, 1], [12.5, 37.5, 62.5, 87.5])
    with pytest.raises(ValueError):
        generate.point_grid(0, 10, 10)


def _reference(model, embedding, points):
    """Per click: the model's plain decoder (prompt encoder + MaskDecoder), every output token."""
    net = model.net
    ious, logits = [], []
    with torch.inference_mode():
        for xy in points:
            coords = torch.from_numpy(embedding.frame.to_input(xy[None]))[None]
            sparse, dense = net.prompt_encoder(
                (coords, torch.ones(1, 1, dtype=torch.int64)), None, None, None
            )
            low, iou, _ = net.mask_decoder.predict_masks(
                embedding.features, net.prompt_encoder.get_dense_pe(), sparse, dense
            )
            ious.append(iou[0])
            logits.append(low[0])
    return torch.stack(ious), torch.stack(logits)


def test_batched_decoder_equals_per_click_loop(lite, lite_embedding):
    h, w = lite_embedding.frame.orig_hw
    points = generate.point_grid(4, h, w)
    ref_iou, ref_logits = _reference(lite, lite_embedding, points)
    net = lite.net
    coords = torch.from_numpy(lite_embedding.frame.to_input(points))[:, None]
    with torch.inference_mode():
        sparse, _ = net.prompt_encoder(
            (coords, torch.ones(len(points), 1, dtype=torch.int64)), None, None, None
        )
        state = decode_clicks(net, shared_image(net, lite_embedding.features), sparse)
        rows = torch.arange(len(points)).repeat_interleave(4)
        outs = torch.arange(4).repeat(len(points))
        logits = masks_for(net, state, rows, outs)
    np.testing.assert_allclose(state.iou.numpy(), ref_iou.numpy(), atol=1e-4)
    got = logits.view(len(points), 4, *logits.shape[-2:])
    np.testing.assert_allclose(got.numpy(), ref_logits.numpy(), atol=2e-3)
    agree = ((got > 0) == (ref_logits > 0)).float().mean().item()
    assert agree > 0.9999


def test_candidates_do_not_depend_on_the_batch_size(lite, lite_embedding):
    # iou_thresh low enough that the real slice gives several candidates from a 5x5 grid
    a = generate.generate_candidates(
        lite,
        lite_embedding,
        AutomaskSettings(points_per_side=5, iou_thresh=0.4, stability_thresh=0, batch_size=25),
    )
    b = generate.generate_candidates(
        lite,
        lite_embedding,
        AutomaskSettings(points_per_side=5, iou_thresh=0.4, stability_thresh=0, batch_size=3),
    )
    assert len(a) >= 3 and a.decoded == 25
    np.testing.assert_array_equal(a.point, b.point)
    np.testing.assert_allclose(a.iou, b.iou, atol=1e-5)
    assert (a.masks == b.masks).float().mean().item() > 0.9999
    # and each candidate is the per-click loop's output with predicted IoU >= 0.4
    ref_iou, ref_logits = _reference(lite, lite_embedding, a.point)
    np.testing.assert_allclose(ref_iou[:, 0].numpy(), a.iou, atol=1e-4)
    assert ((ref_logits[:, 0] > 0) == (a.logits > 0)).float().mean().item() > 0.9999


def test_stability_score_and_outputs(lite):
    logits = torch.tensor([[[3.0, 0.5], [-0.5, -3.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    # mask 0: 1 pixel above +1, 3 above -1 -> 1/3; an empty mask counts as stable
    np.testing.assert_allclose(generate.stability_score(logits, 0.0, 1.0).numpy(), [1 / 3, 1.0])
    assert generate.output_tokens(lite, "auto", 4) == [0]  # imis-lite: the single output it was trained on
    assert generate.output_tokens(lite, "multimask", 4) == [1, 2, 3]
    assert generate.output_tokens(lite, "all", 4) == [0, 1, 2, 3]


def test_factored_image_tokens_equal_the_plain_transformers(lite, lite_embedding):
    """The grid decoder keeps each click's image tokens as scale * base + coef . basis through the
    attention updates and LayerNorms; formed, they are the plain transformer's output tokens."""
    net = lite.net
    points = generate.point_grid(3, *lite_embedding.frame.orig_hw)[[0, 4, 8]]
    coords = torch.from_numpy(lite_embedding.frame.to_input(points))[:, None]
    with torch.inference_mode():
        sparse, dense = net.prompt_encoder(
            (coords, torch.ones(len(points), 1, dtype=torch.int64)), None, None, None
        )
        state = decode_clicks(net, shared_image(net, lite_embedding.features), sparse)
        dec = net.mask_decoder
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight])
        tokens = torch.cat([tokens.unsqueeze(0).expand(len(points), -1, -1), sparse], dim=1)
        src = lite_embedding.features.expand(len(points), -1, -1, -1) + dense
        pe = net.prompt_encoder.get_dense_pe().expand(len(points), -1, -1, -1)
        _, keys = dec.transformer(src, pe, tokens)
    assert state.image.rows < keys.shape[-1]  # fewer coefficients than channels per token
    np.testing.assert_allclose(state.keys.numpy(), keys.numpy(), atol=2e-4)


@pytest.mark.parametrize("offset", [0.0, 200.0, -200.0])  # in range, overflowing, all underflowing
def test_token_softmax_falls_back_where_exponentials_leave_the_range(offset):
    from imis.models.grid_decode import _softmax_tokens

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7 * 8, 50, generator=gen) * 4 + offset
    out = torch.empty(2, 7 * 8, 50)
    scale = torch.rand(2, 1, 50, generator=gen) + 0.5
    _softmax_tokens(lambda: logits.clone(), 8, out, scale)
    ref = torch.softmax(logits.view(2, 7, 8, 50), dim=1).view(2, 56, 50) / scale
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)


def test_threaded_batches_give_the_single_threaded_candidates(lite, lite_embedding):
    """Two cores: one Python thread per batch, single-threaded operations; the same candidates in the
    same order as one thread, and torch's thread count is back afterwards."""
    settings = AutomaskSettings(points_per_side=6, iou_thresh=0.4, stability_thresh=0, batch_size=5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = generate.generate_candidates(lite, lite_embedding, settings)
        torch.set_num_threads(2)
        two = generate.generate_candidates(lite, lite_embedding, settings)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(one) >= 3
    np.testing.assert_array_equal(one.point, two.point)
    np.testing.assert_array_equal(one.output, two.output)
    np.testing.assert_array_equal(one.iou, two.iou)
    assert torch.equal(one.masks, two.masks)
