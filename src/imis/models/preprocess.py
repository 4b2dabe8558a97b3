"""Per-model preprocessing (native image -> network input) and postprocessing (logits -> native mask).

Every model family was trained with its own recipe, and reproducing it exactly matters more than any
choice we would make ourselves:

- LiteMedSAM: min-max to [0, 1] over the whole image, bilinear resize of the longest side to 256,
  zero padding at the bottom/right to 256x256.
- Segment Anything (SAM ViT-B): uint8 RGB, longest side to 1024, ImageNet mean/std on 0-255, padding.
- MedSAM (ViT-B): square bicubic resize to 1024, min-max to [0, 1], no mean/std.
- IMIS-Net: square *nearest* resize to the input size, ImageNet mean/std on 0-255 RGB.
- SAM 2: square bilinear resize to 1024 (antialiased when shrinking, as torchvision's ``Resize`` on a
  tensor), ImageNet mean/std.
- SAM-Med2D: ImageNet mean/std on 0-255 RGB, square *nearest* resize to 256 (its predictor).
- Huang et al. (MedIA 2024): intensities clipped to their 0.95th-99.5th percentiles, min-max to 0-255
  (zeros stay zero), truncated to uint8, then SAM's recipe (longest side to 1024, ImageNet, padding).

A :class:`Frame` records how native pixel coordinates map to the network input so that prompts go in
and masks come out at the image's native resolution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from imis.errors import InputError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input.

    input_size: side of the square network input.
    resize: "longest_side" keeps the aspect ratio and pads bottom/right; "square" stretches.
    interpolation: torch interpolation mode for the image resize ("bilinear_antialias": bilinear with
        antialiasing, which only changes shrinking).
    intensity: "minmax01" scales the image to [0, 1]; "imagenet" maps it to 0-255 and applies
        ImageNet mean/std; "percentile_imagenet" first clips to the 0.95th-99.5th percentiles and
        rescales to uint8 0-255 (Huang et al.), then applies ImageNet mean/std.
    minmax_before_resize: LiteMedSAM normalises the native image, then resizes (the order changes
        the values at edges).
    """

    input_size: int = 256
    resize: Literal["longest_side", "square"] = "longest_side"
    interpolation: Literal["bilinear", "nearest", "bicubic", "bilinear_antialias"] = "bilinear"
    intensity: Literal["minmax01", "imagenet", "percentile_imagenet"] = "minmax01"
    minmax_before_resize: bool = True


@dataclass(frozen=True)
class Frame:
    """Geometry of one image inside the network input.

    orig_hw: native (height, width); valid_hw: the resized image's extent inside the input (the
    rest is padding); input_size: side of the square input.
    """

    orig_hw: tuple[int, int]
    valid_hw: tuple[int, int]
    input_size: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.valid_hw[1] / self.orig_hw[1], self.valid_hw[0] / self.orig_hw[0]

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """Native (x, y) pixel coordinates (..., 2) -> network-input coordinates."""
        sx, sy = self.scale_xy
        out = np.asarray(xy, dtype=np.float64).copy()
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out.astype(np.float32)

    def to_native(self, xy: np.ndarray) -> np.ndarray:
        sx, sy = self.scale_xy
        out = np.asarray(xy, dtype=np.float64).copy()
        out[..., 0] /= sx
        out[..., 1] /= sy
        return out.astype(np.float32)


def frame_for(orig_hw: tuple[int, int], pre: Preprocess) -> Frame:
    h, w = orig_hw
    s = pre.input_size
    if pre.resize == "square":
        return Frame((h, w), (s, s), s)
    scale = s / max(h, w)
    # Rounding as SAM's ResizeLongestSide does (int(x + 0.5)), so the valid area matches its weights.
    return Frame((h, w), (int(h * scale + 0.5), int(w * scale + 0.5)), s)


def to_float_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any 2D grey (H, W) or colour (H, W, 3|4) array of any numeric dtype -> float32 (H, W, 3)."""
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name}: dtype {a.dtype} is not numeric")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3]
    else:
        raise InputError(f"{name}: expected a 2D grey (H, W) or RGB (H, W, 3) image, got shape {a.shape}")
    if min(a.shape[:2]) < 2:
        raise InputError(f"{name}: image of {a.shape[0]}x{a.shape[1]} pixels is too small (at least 2x2)")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise InputError(f"{name}: image contains NaN or Inf intensities")
    return a


def _minmax(x: torch.Tensor, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    lo, hi = (x.min(), x.max()) if value_range is None else (torch.tensor(v) for v in value_range)
    return (x - lo) / torch.clamp(hi - lo, min=1e-8)


def prepare_image(
    image: np.ndarray,
    pre: Preprocess,
    name: str = "image",
    value_range: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, Frame]:
    """Native image -> (network input (1, 3, S, S) float32, frame).

    value_range: (low, high) intensities that min-max normalisation maps to 0 and 1 instead of the
    image's own extremes (a crop normalised as the whole image it was cut from).
    """
    rgb = to_float_rgb(image, name)
    frame = frame_for(rgb.shape[:2], pre)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    if pre.intensity == "minmax01" and pre.minmax_before_resize:
        x = _minmax(x, value_range)
    elif pre.intensity == "imagenet" and not _is_uint8_range(
        rgb if value_range is None else np.array(value_range)
    ):
        # The ImageNet statistics assume 0-255 RGB; other ranges (CT HU, 16-bit MR) are rescaled.
        x = _minmax(x, value_range) * 255.0
    elif pre.intensity == "percentile_imagenet":
        x = torch.from_numpy(np.ascontiguousarray(percentile_uint8(rgb))).permute(2, 0, 1)[None]
    mode = "bilinear" if pre.interpolation == "bilinear_antialias" else pre.interpolation
    align = None if mode == "nearest" else False
    antialias = pre.interpolation == "bilinear_antialias"
    x = F.interpolate(x, size=frame.valid_hw, mode=mode, align_corners=align, antialias=antialias)
    if pre.intensity == "minmax01" and not pre.minmax_before_resize:
        x = _minmax(x, value_range)
    if pre.intensity in ("imagenet", "percentile_imagenet"):
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (x - mean) / std
    s = pre.input_size
    pad_h, pad_w = s - frame.valid_hw[0], s - frame.valid_hw[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x.contiguous(), frame


def percentile_uint8(rgb: np.ndarray, low: float = 0.95, high: float = 99.5) -> np.ndarray:
    """Huang et al.'s intensity recipe: clip to the ``low``-th / ``high``-th percentiles (over all
    channels), min-max to 0-255, zero where the input is zero, truncated to integers: float32 (H, W, 3)."""
    lo, hi = np.percentile(rgb, [low, high])
    clipped = np.clip(rgb, lo, hi)
    span = float(clipped.max() - clipped.min())
    out = (clipped - clipped.min()) / (span if span > 0 else 1.0) * 255.0
    out[rgb == 0] = 0
    return np.floor(out).astype(np.float32)


def _is_uint8_range(a: np.ndarray) -> bool:
    return float(a.min()) >= 0.0 and float(a.max()) <= 255.0 and float(a.max()) > 1.0


def logits_to_native(low_res: torch.Tensor, frame: Frame) -> torch.Tensor:
    """Low-res mask logits (B, M, h, w) -> logits at native resolution (B, M, H, W).

    The SAM family brings the logits to the network-input frame, cuts the padding off, then resizes
    them to the native size, all bilinearly (align_corners=False). Each step is linear along each
    axis, so the three compose into one small filter per axis (2 to 4 taps): applying it is the same
    result (to float rounding, < 1e-6) without the input-size intermediate (1024 x 1024 for SAM ViT-B),
    about 4x faster for a 512 x 512 image.
    """
    s = frame.input_size
    (vh, vw), (oh, ow) = frame.valid_hw, frame.orig_hw
    iy, wy = _axis_taps(low_res.shape[-2], s, vh, oh)
    ix, wx = _axis_taps(low_res.shape[-1], s, vw, ow)
    x = low_res.float()
    x = torch.einsum("...hkw,hk->...hw", x[..., iy, :], wy)  # rows: (B, M, H, K, w) -> (B, M, H, w)
    return torch.einsum("...wk,wk->...w", x[..., ix], wx)  # columns: (B, M, H, W, K) -> (B, M, H, W)


def _resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of a 1-D bilinear resize as F.interpolate(align_corners=False)."""
    if n_in == n_out:
        return torch.eye(n_in, dtype=torch.float64)
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m


@functools.lru_cache(maxsize=128)
def _axis_taps(n_low: int, size: int, valid: int, native: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights (native, K) of low-res -> input size -> crop to valid -> native."""
    m = (
        (_resize_matrix(n_low, size)[:valid])
        if n_low != size
        else torch.eye(size, dtype=torch.float64)[:valid]
    )
    m = _resize_matrix(valid, native) @ m
    k = int((m != 0).sum(1).max())
    idx = m.abs().topk(k, dim=1).indices
    return idx, m.gather(1, idx).float()
