"""SAM-Med2D's adapter: a channel gate and a spatial bottleneck added beside each ViT block's MLP.

(B, H, W, C) -> (B, H, W, C). The input is gated per channel (average over the grid -> C/4 -> C,
sigmoid), the gated map goes through a stride-2 3x3 convolution and back up through a 4x4 transposed
convolution (both bias-free, ReLU after each); that result is added to the *ungated* input and the sum
is layer-normalised (torch's default eps 1e-5, unlike the block's 1e-6). The block adds the adapter's
output to its MLP branch: ``x + mlp(norm2(x)) + adapter(norm2(x))``. Even grids only (the 16x16 grid of
a 256 px input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpatialChannelAdapter"]


class SpatialChannelAdapter(nn.Module):
    """Channel gate + spatial bottleneck + LayerNorm, (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.channel_down = nn.Linear(dim, hidden, bias=False)
        self.channel_up = nn.Linear(hidden, dim, bias=False)
        self.spatial_down = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.spatial_up = nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.channel_up(F.relu(self.channel_down(x.mean(dim=(1, 2))))))  # (B, C)
        gated = (x * gate[:, None, None, :]).permute(0, 3, 1, 2)
        spatial = F.relu(self.spatial_up(F.relu(self.spatial_down(gated))))
        if spatial.shape[-2:] != gated.shape[-2:]:
            raise ValueError(f"the adapter needs an even token grid, got {tuple(x.shape[1:3])}")
        return self.norm(x + spatial.permute(0, 2, 3, 1))
