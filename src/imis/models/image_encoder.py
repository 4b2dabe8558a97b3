"""ViT image encoder of the SAM family (ViTDet-style: windowed + global attention, decomposed relative
positions, a convolutional neck).

Parameter names are exactly those of the official Segment Anything ``ImageEncoderViT`` (``patch_embed.proj``,
``pos_embed`` stored NHWC, ``blocks.{i}.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,norm2,
mlp.lin1,mlp.lin2}``, ``neck.{0..3}``), so SAM / MedSAM checkpoints load by name, SAM-Med2D's after
renaming its adapters, and the timm ``samvit`` trunk of IMIS-Net after renaming ``mlp.fc1/fc2`` (see
``imis.models.formats``).

Computation is the reference one (same padding, same interpolation of position tables), arranged to be
fast on CPU:

- attention goes through ``F.scaled_dot_product_attention`` (fused kernels, no N x N softmax tensor of
  our own); the decomposed relative position term enters as an additive ``attn_mask``;
- that mask is built for a few query rows of one head at a time into one reused buffer, so the global
  blocks never materialise the (heads, N, N) bias (800 MB at 1024 px for ViT-B), and the buffer and
  that head's keys/values stay in cache (building the whole bias, or folding it into the dot product
  with one-hot key columns, measured about 1.5x slower end to end);
- the per-axis relative terms are batched matmuls, not einsums;
- in windowed blocks the qkv projection runs before padding and the output projection after cropping,
  so the padded tokens (4900 instead of 4096 at 1024 px) cost no matmul: a zero padded token projects
  to the qkv bias, which is what we pad with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imis.models.adapter import SpatialChannelAdapter
from imis.models.common import LayerNorm2d, MLPBlock

__all__ = ["ImageEncoderViT", "get_rel_pos", "resample_pos_embed"]

# Largest additive attention bias, in elements, materialised at once per device type. On CPU a 16 MB
# chunk (16 query rows of one head for ViT-B at 1024 px) stays in the last-level cache between its
# write and the attention kernel's read; 1M-16M elements measured alike (fewer, larger calls suffer
# less when the cores are shared), the whole (heads, N, N) bias about 2x slower per global block.
# On accelerators memory bandwidth is plentiful and fewer, larger launches win.
_BIAS_BUDGET = {"cpu": 1 << 22}
_BIAS_BUDGET_DEFAULT = 1 << 28


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    rel_pos: (L, C) table learned for some length; it is linearly resampled (``align_corners=False``)
    when the needed length 2 * max(q_size, k_size) - 1 differs, as SAM and timm do for other input
    sizes. Returns (q_size, k_size, C).
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        table = F.interpolate(rel_pos.T.unsqueeze(0).float(), size=length, mode="linear")
        table = table[0].T.to(rel_pos.dtype)
    else:
        table = rel_pos
    # Coordinates of the shorter side are stretched to the longer one, then offset to be >= 0.
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    index = (q_coords - k_coords + (k_size - 1) * k_scale).long()
    return table[index]


def resample_pos_embed(pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an NHWC (1, h, w, C) absolute position embedding to (1, size[0], size[1], C).

    Bicubic, ``align_corners=False``, antialiased when shrinking, computed in float32: the behaviour of
    timm's ``resample_abs_pos_embed_nhwc`` that IMIS-Net relies on to run its 1024-trained trunk at
    other input sizes. Returned unchanged when the size already matches.
    """
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    grid = pos_embed.float().permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=True)
    return grid.permute(0, 2, 3, 1).to(pos_embed.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, C_in, H, W) -> (B, H/p, W/p, D), channels last."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def _sdpa_decomposed_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
) -> torch.Tensor:
    """Attention whose logits get ``rel_h[.., qh, qw, kh] + rel_w[.., qh, qw, kw]`` added.

    q, k, v: (B, nh, h*w, d); rel_h: (B, nh, h, w, h); rel_w: (B, nh, h, w, w).
    Returns (B, nh, h*w, d).

    The (kh, kw) bias is expanded for a block of query rows of one head (or of several heads, or several
    images/windows, when a whole head is small) at a time, keeping it under the per-device budget. One
    head at a time also keeps that head's keys and values in cache across its row blocks.
    """
    b, nh, n, d = q.shape
    h, w, kh = rel_h.shape[2], rel_h.shape[3], rel_h.shape[4]
    kw = rel_w.shape[4]
    budget = _BIAS_BUDGET.get(q.device.type, _BIAS_BUDGET_DEFAULT)
    per_row = w * kh * kw  # bias elements of one query row of one head
    rows = max(1, min(h, budget // per_row))
    heads = max(1, min(nh, budget // (per_row * h))) if rows == h else 1
    batch = max(1, min(b, budget // (per_row * h * nh))) if heads == nh else 1

    if rows == h and heads == nh and batch == b:  # one chunk: no buffer, no output copy
        bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, nh, n, kh * kw)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    # Autograd cannot record ``out=``; the reused buffer is only for inference.
    reuse = not (torch.is_grad_enabled() and (q.requires_grad or rel_h.requires_grad or rel_w.requires_grad))
    buf = q.new_empty(batch, heads, rows, w, kh, kw) if reuse else None
    # The output is laid out (B, N, nh, d) so that merging heads afterwards is a view.
    out = q.new_empty(b, n, nh, d).transpose(1, 2)
    for b0 in range(0, b, batch):
        b1 = min(b, b0 + batch)
        for h0 in range(0, nh, heads):
            h1 = min(nh, h0 + heads)
            kk, vv = k[b0:b1, h0:h1], v[b0:b1, h0:h1]
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                lhs = rel_h[b0:b1, h0:h1, r0:r1].unsqueeze(-1)
                rhs = rel_w[b0:b1, h0:h1, r0:r1].unsqueeze(-2)
                if buf is not None:
                    bias = torch.add(lhs, rhs, out=buf[: b1 - b0, : h1 - h0, : r1 - r0])
                else:
                    bias = lhs + rhs
                bias = bias.view(b1 - b0, h1 - h0, (r1 - r0) * w, kh * kw)
                s0, s1 = r0 * w, r1 * w
                out[b0:b1, h0:h1, s0:s1] = F.scaled_dot_product_attention(
                    q[b0:b1, h0:h1, s0:s1], kk, vv, attn_mask=bias
                )
    return out


class Attention(nn.Module):
    """Multi-head self-attention over a 2D grid of tokens with decomposed relative positions.

    ``forward`` takes the normalised tokens (B, H, W, D) of the whole image and returns (B, H, W, D);
    with ``window_size > 0`` it attends within non-overlapping windows of that size (the grid padded at
    the bottom/right to a multiple of it, padded tokens taking part as keys as in SAM).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required with use_rel_pos")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor, window_size: int = 0) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x)
        if window_size <= 0:
            return self.proj(self._attend(qkv))
        ws = window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        if (hp, wp) != (h, w):
            # A zero (padded) token projects to the qkv bias: pad with it after the projection.
            fill = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(())
            padded = fill.to(qkv.dtype).expand(b, hp, wp, 3 * c).clone()
            padded[:, :h, :w] = qkv
            qkv = padded
        nwh, nww = hp // ws, wp // ws
        windows = qkv.view(b, nwh, ws, nww, ws, 3 * c).transpose(2, 3).reshape(b * nwh * nww, ws, ws, 3 * c)
        out = self._attend(windows)  # (B * nW, ws, ws, D)
        out = out.view(b, nwh, nww, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        if (hp, wp) != (h, w):
            out = out[:, :h, :w]
        return self.proj(out)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 3D) projected tokens -> (B, h, w, D) attention output (heads merged)."""
        b, h, w, _ = qkv.shape
        nh, d = self.num_heads, self.head_dim
        q, k, v = qkv.reshape(b, h * w, 3, nh, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, N, d) views
        if self.use_rel_pos:
            rel_h, rel_w = self._rel_pos_terms(q, h, w)
            out = _sdpa_decomposed_bias(q, k, v, rel_h, rel_w)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, h, w, nh * d)

    def _rel_pos_terms(self, q: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-axis relative logits from the unscaled queries (as SAM adds them).

        q: (B, nh, h*w, d) -> rel_h (B, nh, h, w, kh), rel_w (B, nh, h, w, kw) (strided views).
        rel_h[b, n, y, x, ky] = q[b, n, y, x] . Rh[y, ky], one batched matmul over y (same for x).
        """
        b, nh, _, d = q.shape
        r_h = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)  # (h, kh, d)
        r_w = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)  # (w, kw, d)
        grid = q.reshape(b, nh, h, w, d)
        by_row = grid.permute(2, 0, 1, 3, 4).reshape(h, b * nh * w, d)
        by_col = grid.permute(3, 0, 1, 2, 4).reshape(w, b * nh * h, d)
        rel_h = torch.matmul(by_row, r_h.transpose(1, 2)).view(h, b, nh, w, -1).permute(1, 2, 0, 3, 4)
        rel_w = torch.matmul(by_col, r_w.transpose(1, 2)).view(w, b, nh, h, -1).permute(1, 2, 3, 0, 4)
        return rel_h, rel_w


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention. (B,H,W,D)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
        norm_eps: float = 1e-6,
        act_layer: type[nn.Module] = nn.GELU,
        adapter: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            # Window blocks learn tables for the window, global blocks for the full training grid.
            input_size=(window_size, window_size) if window_size > 0 else input_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size
        # SAM-Med2D: an adapter beside the MLP, on the same normalised input.
        self.adapter = SpatialChannelAdapter(dim) if adapter else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.window_size)
        if self.adapter is None:
            return x + self.mlp(self.norm2(x))
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.adapter(normed)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder: (B, in_chans, H, W) -> (B, out_chans, H/patch, W/patch).

    ``img_size`` is the training resolution: it sizes the stored absolute position grid and the
    relative position tables of the global blocks. Other input sizes (multiples of ``patch_size``) run
    with both resampled (bicubic for the absolute grid, linear for the tables), as timm's samvit does.
    ``adapter``: SAM-Med2D's adapter in every block (``blocks.{i}.adapter.*``).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
        norm_eps: float = 1e-6,
        adapter: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
                norm_eps=norm_eps,
                adapter=adapter,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an input whose sides are not multiples of the patch size."""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)  # (B, h, w, D)
        if self.pos_embed is not None:
            x = x + resample_pos_embed(self.pos_embed, (x.shape[1], x.shape[2]))
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def split(self, tail: int) -> tuple[nn.Module, nn.Module]:
        """(trunk, head) sharing this encoder's weights, with ``head(trunk(x)) == self(x)``: the head
        holds the last ``tail`` blocks and the neck. Trunk: ``(B, in_chans, H, W) -> (B, h, w, D)``;
        head: that -> ``(B, out_chans, h, w)``."""
        n = len(self.blocks)
        if not 1 <= tail <= n:
            raise ValueError(f"tail must be 1..{n} blocks of this ViT, got {tail}")
        return _ViTTrunk(self, n - tail), _ViTHead(self, n - tail)


class _ViTTrunk(nn.Module):
    """Patch embedding, position grid and the first ``k`` blocks of a ViT encoder (shared modules)."""

    def __init__(self, vit: ImageEncoderViT, k: int) -> None:
        super().__init__()
        self.vit = [vit]  # a list: the trunk must not own (and save) the whole encoder
        self.patch_embed = vit.patch_embed
        self.blocks = nn.ModuleList(vit.blocks[:k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit[0]
        vit.check_input(x)
        x = self.patch_embed(x)
        if vit.pos_embed is not None:
            x = x + resample_pos_embed(vit.pos_embed, (x.shape[1], x.shape[2]))
        for blk in self.blocks:
            x = blk(x)
        return x


class _ViTHead(nn.Module):
    """The blocks of a ViT encoder from ``k`` on and its neck (shared modules)."""

    def __init__(self, vit: ImageEncoderViT, k: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(vit.blocks[k:])
        self.neck = vit.neck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
