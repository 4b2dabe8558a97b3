"""Hiera, the hierarchical image trunk of SAM 2 (Ryali et al. 2023, as configured in SAM 2).

A 7x7 stride-4 patch embedding, then four stages of pre-norm transformer blocks. Each later stage halves
the resolution and doubles the width: its first block max-pools the attention *queries* (and the
projected shortcut) by 2, so keys and values still see the full-resolution tokens. Blocks attend inside
non-overlapping windows (padded at the bottom/right when the grid is not a multiple of the window) except
a few global ones. The first block of a stage still uses the window of the stage before (its input grid),
which pooling then halves. Position: a bicubically resized background embedding plus a tiled
window-sized embedding.

Parameter names follow SAM 2's checkpoints (``patch_embed.proj``, ``pos_embed``, ``pos_embed_window``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.layers.{0,1},proj}``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Hiera", "HieraBlock", "hiera_block_plan"]


class HieraMLP(nn.Module):
    """Linear -> GELU -> Linear, (..., dim) -> (..., dim); layers named ``layers.{0,1}``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


def _pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool a channels-last map (B, H, W, C) -> (B, H // s, W // s, C) (floor, as MaxPool2d)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)


class PooledAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled: (B, H, W, dim) -> (B, H', W', dim_out),
    with (H', W') = (H, W) // q_stride when pooling, else (H, W)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)  # (B, N, heads, d)
        if self.q_stride:
            q = _pool(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def _partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nh * nw, ws, ws, C) zero-padded windows, and the window grid (nh, nw)."""
    b, h, w, c = x.shape
    nh, nw = -(-h // ws), -(-w // ws)
    if (nh * ws, nw * ws) != (h, w):
        x = F.pad(x, (0, 0, 0, nw * ws - w, 0, nh * ws - h))
    x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3)
    return x.reshape(-1, ws, ws, c), (nh, nw)


def _unpartition(windows: torch.Tensor, grid: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """(B * nh * nw, s, s, C) windows -> (B, H, W, C), cutting the padding off."""
    nh, nw = grid
    s, c = windows.shape[1], windows.shape[-1]
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, s, s, c).transpose(2, 3).reshape(b, nh * s, nw * s, c)
    return x[:, : hw[0], : hw[1]]


class HieraBlock(nn.Module):
    """Pre-norm block (B, H, W, dim) -> (B, H', W', dim_out); windowed when ``window_size > 0``.

    With ``q_stride`` the queries and the shortcut (projected to ``dim_out``) are max-pooled, so the
    output grid is (H, W) // q_stride; a stage-changing block must change the width too.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: int | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        if q_stride and dim == dim_out:
            raise ValueError("a query-pooling Hiera block must change the width (its shortcut is projected)")
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PooledAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = HieraMLP(dim_out, int(dim_out * mlp_ratio))
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = _pool(shortcut, self.q_stride)
        if self.window_size > 0:
            windows, grid = _partition(x, self.window_size)
            x = _unpartition(self.attn(windows), grid, shortcut.shape[1:3])
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def hiera_block_plan(
    embed_dim: int,
    num_heads: int,
    stages: tuple[int, ...],
    q_pool: int,
    window_spec: tuple[int, ...],
    global_att_blocks: tuple[int, ...],
    dim_mul: float = 2.0,
    head_mul: float = 2.0,
) -> list[dict[str, int | None]]:
    """Per block: dim, dim_out, num_heads, q_stride (2 or None), window_size (0 = global).

    Stage k > 0 starts with a block that widens and (for the first ``q_pool`` stage changes) pools; that
    block keeps the window of stage k - 1, the grid it receives.
    """
    if len(stages) != len(window_spec):
        raise ValueError(f"stages {stages} and window_spec {window_spec} must have the same length")
    starts = {sum(stages[:k]): k for k in range(1, len(stages))}
    plan, stage, dim, heads = [], 0, embed_dim, num_heads
    for i in range(sum(stages)):
        window = window_spec[stage]
        dim_out = dim
        pool = None
        if i in starts:
            dim_out, heads, stage = int(dim * dim_mul), int(heads * head_mul), starts[i]
            pool = 2 if stage <= q_pool else None
        plan.append(
            {
                "dim": dim,
                "dim_out": dim_out,
                "num_heads": heads,
                "q_stride": pool,
                "window_size": 0 if i in global_att_blocks else window,
            }
        )
        dim = dim_out
    return plan


class Hiera(nn.Module):
    """(B, 3, H, W) -> the last block of each stage as (B, C_k, H / 4 / 2^k, W / 4 / 2^k), k = 0..3,
    highest resolution first (SAM 2: C_k = embed_dim * 2^k).

    The defaults are Hiera-B+ (SAM 2's B+ config sets only its width 112 and 2 heads); the other sizes
    also set their stages, global blocks, windows and background grid (``build_sam2.SAM2_SIZES``).
    """

    def __init__(
        self,
        embed_dim: int = 112,
        num_heads: int = 2,
        stages: tuple[int, ...] = (2, 3, 16, 3),
        q_pool: int = 3,
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.stage_ends = [sum(stages[: k + 1]) - 1 for k in range(len(stages))]
        self.patch_embed = PatchEmbed7(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        plan = hiera_block_plan(
            embed_dim, num_heads, tuple(stages), q_pool, tuple(window_spec), tuple(global_att_blocks)
        )
        self.blocks = nn.ModuleList(HieraBlock(mlp_ratio=mlp_ratio, **p) for p in plan)
        self.channels = [plan[e]["dim_out"] for e in self.stage_ends]

    def position(self, h: int, w: int) -> torch.Tensor:
        """(1, h, w, C): the background embedding resized (bicubic) plus the window embedding tiled."""
        win = self.pos_embed_window
        if h % win.shape[-2] or w % win.shape[-1]:
            raise ValueError(
                f"Hiera grid {h}x{w} is not a multiple of its {win.shape[-2]}x{win.shape[-1]} window "
                "position embedding (input sides must be multiples of 4 x that)"
            )
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + win.tile(1, 1, h // win.shape[-2], w // win.shape[-1])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self.position(x.shape[1], x.shape[2])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class PatchEmbed7(nn.Module):
    """7x7 stride-4 convolution (padding 3): (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)
