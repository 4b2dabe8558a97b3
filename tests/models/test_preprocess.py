"""Per-model preprocessing reproduces the reference input; frames map coordinates both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imis.data.formats import imed
from imis.errors import InputError
from imis.models.preprocess import Preprocess, frame_for, logits_to_native, prepare_image

LITE = Preprocess(256, "longest_side", "bilinear", "minmax01", True)


def test_litemedsam_input_equals_fixture(btcv_dir, parity_dir):
    fixture = torch.load(parity_dir / "litemedsam_btcv_liver.pt", weights_only=False)
    x, frame = prepare_image(imed.read_image(btcv_dir / "image" / "ABD_001_100.png"), LITE)
    assert x.shape == (1, 3, 256, 256)
    assert float((x - fixture["input_image"]).abs().max()) < 1e-6
    assert frame.valid_hw == (256, 256)


@pytest.mark.parametrize("hw", [(512, 512), (300, 512), (512, 301), (37, 1000), (2, 2)])
@pytest.mark.parametrize("pre", [LITE, Preprocess(1024, "square", "nearest", "imagenet", False)])
def test_frames_round_trip(hw, pre):
    frame = frame_for(hw, pre)
    pts = np.array([[0.0, 0.0], [hw[1] - 1, hw[0] - 1], [hw[1] / 3, hw[0] / 2]])
    assert np.allclose(frame.to_native(frame.to_input(pts)), pts, atol=1e-3)
    x, f2 = prepare_image(np.random.default_rng(0).integers(0, 255, hw, dtype=np.uint8), pre)
    assert f2 == frame and x.shape == (1, 3, pre.input_size, pre.input_size)
    # padding is zero (longest-side models pad bottom/right after normalisation)
    if pre.resize == "longest_side":
        vh, vw = frame.valid_hw
        assert float(x[..., vh:, :].abs().sum()) == 0 and float(x[..., :, vw:].abs().sum()) == 0
    low = torch.zeros(1, 1, pre.input_size // 4, pre.input_size // 4)
    assert logits_to_native(low, frame).shape[-2:] == hw


def test_longest_side_keeps_geometry():
    """A mask drawn in the input frame comes back where the native object is."""
    hw = (200, 500)
    frame = frame_for(hw, LITE)
    assert frame.valid_hw == (102, 256)
    low = torch.full((1, 1, 256, 256), -10.0)
    # native object: rows 50-100, cols 200-300 -> input rows 25.6-51.2, cols 102.4-153.6
    low[..., 26:51, 103:153] = 10.0
    native = logits_to_native(low, frame)[0, 0].numpy() > 0
    ys, xs = np.nonzero(native)
    assert abs(ys.min() - 50) <= 2 and abs(ys.max() - 100) <= 2
    assert abs(xs.min() - 200) <= 2 and abs(xs.max() - 300) <= 2


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((4, 4, 4, 4)), "expected a 2D"),
        (np.zeros((1, 5)), "too small"),
        (np.array([[np.nan, 1.0], [1.0, 1.0]]), "NaN or Inf"),
        (np.array([["a", "b"], ["c", "d"]]), "not numeric"),
    ],
)
def test_bad_arrays(array, fragment):
    with pytest.raises(InputError, match=fragment):
        prepare_image(array, LITE, name="arg")
