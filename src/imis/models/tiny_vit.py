"""TinyViT image encoder in the form LiteMedSAM uses it (TinyViT-5M with a stride-1 patch embed and a SAM neck).

Architecture (defaults = the released LiteMedSAM image encoder, 256x256 input):

=========  ==========================================  ===============  ===========
stage      content                                     tokens (HxW)     channels
=========  ==========================================  ===============  ===========
stem       two 1x1 conv+BN (GELU between), stride 1    256x256          3 -> 64
layers.0   2 MBConv blocks, then patch merging (s=2)   256x256 -> 128   64 -> 128
layers.1   2 attention blocks (window 7, 4 heads), s=2 128x128 -> 64   128 -> 160
layers.2   6 attention blocks (window 14, 5 heads), s=1 64x64           160 -> 320
layers.3   2 attention blocks (window 7, 10 heads)     64x64            320
neck       1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d                 320 -> 256
=========  ==========================================  ===============  ===========

Each attention block is: window attention with a learned per-head bias indexed by the absolute (dy, dx)
offset inside the window (input zero-padded bottom/right to a multiple of the window; padded tokens are
not masked, as in the reference), a depthwise 3x3 conv+BN between attention and MLP, and a pre-norm MLP.

Parameter and buffer names equal the LiteMedSAM checkpoint's ``image_encoder.*`` keys without that prefix,
so ``TinyViT().load_state_dict(...)`` is strict-compatible. Dropout and stochastic depth are omitted (both
are 0 in LiteMedSAM). Activations run channels-last; in eval mode every conv+BN pair runs as one fused
convolution, and the gathered attention bias is cached while no gradient for it is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imis.models.common import LayerNorm2d

__all__ = ["TinyViT"]


class Conv2dBN(nn.Sequential):
    """Bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``); fused into one conv in eval mode."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single conv equal to conv followed by BN with its running statistics."""
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = self.c.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        weight, bias = self.fused_weight_bias()
        conv = self.c
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Stride-1 stem of LiteMedSAM: 1x1 conv+BN to ``embed_dim // 2``, GELU, 1x1 conv+BN to ``embed_dim``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project (all conv+BN), residual add, then GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, 1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        return self.act3(x + y)


class PatchMerging(nn.Module):
    """1x1 conv+BN, GELU, depthwise 3x3 conv+BN with ``stride``, GELU, 1x1 conv+BN. (B,C,H,W) -> (B,C',H',W')."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def _offset_index(window: int) -> torch.Tensor:
    """(N, N) index into the per-head bias table for a ``window`` x ``window`` window, N = window**2.

    Entry (i, j) is ``|dy| * window + |dx|`` for tokens i, j in row-major order, which is the order in
    which TinyViT's bias table enumerates the distinct absolute offsets.
    """
    coords = torch.arange(window)
    ys = coords.repeat_interleave(window)
    xs = coords.repeat(window)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window + dx


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over one window, with a learned bias per head and offset.

    Input/output (B', N, C) with N = window**2. ``qkv`` is laid out per head as [q | k | v].
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", _offset_index(window_size), persistent=False)
        self._bias_cache: tuple[tuple, torch.Tensor] | None = None

    def attention_bias(self) -> torch.Tensor:
        """(heads, N, N) additive attention bias; cached while no gradient for it is required."""
        table = self.attention_biases
        if torch.is_grad_enabled() and table.requires_grad:
            self._bias_cache = None
            return table[:, self.attention_bias_idxs]
        key = (table.device, table.dtype, table._version, table.data_ptr())
        if self._bias_cache is None or self._bias_cache[0] != key:
            self._bias_cache = (key, table.detach()[:, self.attention_bias_idxs].contiguous())
        return self._bias_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B', heads, N, head_dim)
        # A 4-D (1, heads, N, N) mask lets the CPU flash kernel take it (3-D falls back to the slow path).
        bias = self.attention_bias().to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-norm MLP: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (+residual), depthwise 3x3 conv+BN, MLP (+residual). (B, H, W, C) -> same."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b = (ws - h % ws) % ws
        pad_r = (ws - w % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        windows = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        windows = self.attn(windows)
        x = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            x = x[:, :h, :w]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._window_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """MBConv blocks followed by an optional patch merging. (B, C, H, W) -> (B, C', H', W')."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int | None, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class AttentionStage(nn.Module):
    """TinyViT blocks followed by an optional patch merging. (B, C, H, W) -> (B, C', H', W')."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        out_dim: int | None,
        stride: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT image encoder of LiteMedSAM.

    Shapes (defaults): input ``(B, 3, 256, 256)`` (min-max normalised to [0, 1], padded to 256x256)
    -> output ``(B, 256, 64, 64)`` image embedding. In general ``(B, in_chans, H, W)`` ->
    ``(B, out_chans, ceil(H / 4), ceil(W / 4))`` with the default ``merge_strides``.

    Args:
        img_size: nominal input side; kept as an attribute (the forward works on the actual input size).
        in_chans: input channels.
        embed_dims: channels of the four stages.
        depths: blocks per stage; stage 0 is convolutional (MBConv), stages 1-3 use window attention.
        num_heads: attention heads per stage (entry 0 unused).
        window_sizes: attention window side per stage (entry 0 unused).
        mlp_ratio: MLP hidden width relative to the stage width.
        mbconv_expand_ratio: MBConv hidden width relative to the stage width.
        local_conv_size: kernel of the depthwise conv between attention and MLP.
        merge_strides: stride of the patch merging after stages 0, 1, 2 (LiteMedSAM: 2, 2, 1).
        out_chans: channels of the SAM-style neck output.
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        merge_strides: Sequence[int] = (2, 2, 1),
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == n) or len(merge_strides) != n - 1:
            raise ValueError("embed_dims, depths, num_heads, window_sizes must have one entry per stage")
        self.img_size = img_size
        self.embed_dims = tuple(embed_dims)
        self.out_chans = out_chans
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i in range(n):
            out_dim = embed_dims[i + 1] if i < n - 1 else None
            stride = merge_strides[i] if i < n - 1 else 1
            if i == 0:
                stage: nn.Module = ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, out_dim, stride)
            else:
                stage = AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    out_dim,
                    stride,
                )
            self.layers.append(stage)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) image -> (B, out_chans, H/4, W/4) embedding (256x64x64 for 256x256)."""
        if x.ndim != 4:
            raise ValueError(f"TinyViT expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        # Channels-last runs the (depthwise) convs about twice as fast on CPU and makes the (B, H, W, C)
        # token view of the attention stages a free permute.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).contiguous()

    def split(self, tail: int) -> tuple[nn.Module, nn.Module]:
        """(trunk, head) sharing this encoder's weights, with ``head(trunk(x)) == self(x)``.

        The head holds the last ``tail`` stages and the neck, the trunk everything before: training only
        the head over cached trunk outputs fine-tunes the encoder's top on a CPU (the full network needs
        ~2.2 GB of activations per image). Trunk: ``(B, 3, H, W) -> (B, embed_dims[-tail-1] or its
        merge, h, w)``; head: that -> ``(B, out_chans, h, w)``.
        """
        n = len(self.layers)
        if not 1 <= tail <= n:
            raise ValueError(f"tail must be 1..{n} stages of this TinyViT, got {tail}")
        return _TinyViTTrunk(self, n - tail), _TinyViTHead(self, n - tail)


class _TinyViTTrunk(nn.Module):
    """Stem and the first ``k`` stages of a TinyViT (shared modules)."""

    def __init__(self, vit: TinyViT, k: int) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.layers = nn.ModuleList(vit.layers[:k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return x


class _TinyViTHead(nn.Module):
    """The stages of a TinyViT from ``k`` on and its neck (shared modules)."""

    def __init__(self, vit: TinyViT, k: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(vit.layers[k:])
        self.neck = vit.neck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).contiguous()
