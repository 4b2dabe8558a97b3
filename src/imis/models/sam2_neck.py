"""SAM 2's feature pyramid neck and image encoder (Hiera trunk + neck).

Each trunk stage is projected to ``d_model`` channels by a 1x1 convolution ("lateral"). Going from the
coarsest level to the finest, the levels listed in ``top_down_levels`` also receive the level below
them upsampled 2x (nearest); the others keep their lateral features only. SAM 2 then drops the coarsest
level (``scalp``): its features only feed the top-down path of the stride-16 level, the image embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imis.models.hiera import Hiera

__all__ = ["FpnNeck", "Sam2ImageEncoder"]


class FpnNeck(nn.Module):
    """Trunk maps [(B, C_k, H_k, W_k)], finest first -> [(B, d_model, H_k, W_k)] for all but the
    ``scalp`` coarsest levels.

    in_channels: C_k per level, finest first. ``lateral.{k}`` projects level k.
    """

    def __init__(
        self,
        d_model: int,
        in_channels: list[int],
        top_down_levels: tuple[int, ...] = (2, 3),
        interpolation: str = "nearest",
        scalp: int = 1,
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, d_model, kernel_size=1) for c in in_channels)
        self.top_down_levels = tuple(top_down_levels)
        self.interpolation = interpolation
        self.scalp = scalp

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.lateral):
            raise ValueError(f"the neck takes {len(self.lateral)} trunk levels, got {len(feats)}")
        out: list[torch.Tensor] = [None] * len(feats)  # type: ignore[list-item]
        below = None
        for k in range(len(feats) - 1, -1, -1):
            x = self.lateral[k](feats[k])
            if k in self.top_down_levels and below is not None:
                align = None if self.interpolation == "nearest" else False
                x = x + F.interpolate(
                    below.float(), scale_factor=2.0, mode=self.interpolation, align_corners=align
                )
            out[k] = below = x
        return out[: len(out) - self.scalp] if self.scalp else out


class Sam2ImageEncoder(nn.Module):
    """Hiera + FPN neck: (B, 3, S, S) -> [(B, D, S/4, S/4), (B, D, S/8, S/8), (B, D, S/16, S/16)]."""

    def __init__(self, trunk: Hiera, neck: FpnNeck) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.trunk(x))
