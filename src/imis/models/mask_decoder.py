"""Mask decoder of the SAM family, with IMIS-Net's additions (semantic tokens and head, text-to-mask).

Parameter names follow the official Segment Anything ``MaskDecoder`` (``iou_token``, ``mask_tokens``,
``output_upscaling.{0,1,3}``, ``output_hypernetworks_mlps.{i}``, ``iou_prediction_head``) and IMIS-Net
(``semantic_tokens``, ``semantic_prediction_head``, ``text_output``).

Output tokens enter the transformer as ``[iou, mask x (1 + num_multimask_outputs), semantic x same
(IMIS only), prompts...]``. Each mask token becomes, through its own MLP, a set of weights over the
channels of the upscaled image features: a dot product per pixel gives that mask's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imis.models.common import MLP, LayerNorm2d
from imis.models.transformer import TwoWayTransformer

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    """Predicts masks (and their IoU, and optionally a semantic vector) from image and prompt embeddings.

    transformer_dim: D. num_multimask_outputs: masks output in multimask mode (one more token is the
    single-mask output). semantic_out_dim: enables IMIS-Net's semantic tokens and head (size of the
    category embedding). text_to_mask: enables IMIS-Net's ``text_output`` path, which adds a
    text-derived mask to every output mask.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        semantic_out_dim: int | None = None,
        text_to_mask: bool = False,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        d = transformer_dim

        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.semantic_tokens: nn.Embedding | None = None
        if semantic_out_dim is not None:
            self.semantic_tokens = nn.Embedding(self.num_mask_tokens, d)

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2),
            LayerNorm2d(d // 4),
            activation(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.text_output: nn.Linear | None = nn.Linear(d, d // 8) if text_to_mask else None
        self.iou_prediction_head = MLP(d, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self.semantic_prediction_head: MLP | None = None
        if semantic_out_dim is not None:
            self.semantic_prediction_head = MLP(d, iou_head_hidden_dim, semantic_out_dim, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        text_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Decode masks.

        image_embeddings: (B or 1, D, h, w); image_pe: (1 or B, D, h, w); sparse: (B, N, D);
        dense: (B, D, h, w); text_embedding: (B, D) or None (used when ``text_to_mask``).
        Returns masks (B, M, 4h, 4w) logits, iou_pred (B, M) and semantic_pred (B, M, S) or None, with
        M = num_multimask_outputs (tokens 1..) when ``multimask_output`` else 1 (token 0).
        """
        sel = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou_pred, semantic_pred = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            text_embedding,
            tokens=sel,
        )
        iou_pred = iou_pred[:, sel]
        if semantic_pred is not None:
            semantic_pred = semantic_pred[:, sel]
        return masks, iou_pred, semantic_pred

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        tokens: slice = slice(None),
        text_gate: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Masks of the mask tokens picked by ``tokens`` (B, M, 4h, 4w); iou (B, T) and semantic
        (B, T, S) or None for all T = 1 + multimask tokens (they are cheap; the masks are not).

        text_gate: (B,) 0/1 factor on the text-to-mask term (the ONNX decoder graph, whose text input
        is always present, switches the term off with it when no text token is given)."""
        b = sparse_prompt_embeddings.shape[0]
        t = self.num_mask_tokens
        out_tokens = [self.iou_token.weight, self.mask_tokens.weight]
        if self.semantic_tokens is not None:
            out_tokens.append(self.semantic_tokens.weight)
        out_tokens = torch.cat(out_tokens, dim=0).to(sparse_prompt_embeddings.dtype)
        tokens_in = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)

        # One image embedding may serve a batch of prompts (SAM repeats it); otherwise one per prompt.
        src = _match_batch(image_embeddings, b, "image_embeddings") + dense_prompt_embeddings
        pos = _match_batch(image_pe, b, "image_pe")
        _, _, h, w = src.shape

        hs, src_tokens = self.transformer(src, pos, tokens_in)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + t]

        mlps = list(self.output_hypernetworks_mlps)[tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in zip(range(t)[tokens], mlps, strict=True)], 1
        )
        if self.text_output is not None and text_embedding is not None:
            # IMIS-Net adds text_output(text) @ features to every mask; that equals adding the text
            # weights to each mask token's weights before the product.
            text_term = self.text_output(text_embedding.reshape(b, -1).to(hyper_in.dtype))
            if text_gate is not None:
                text_term = text_term * text_gate.reshape(b, 1).to(text_term.dtype)
            hyper_in = hyper_in + text_term.unsqueeze(1)
        masks = self._upscale_and_project(src_tokens, h, w, hyper_in)

        iou_pred = self.iou_prediction_head(iou_token_out)
        semantic_pred = None
        if self.semantic_prediction_head is not None:
            semantic_pred = self.semantic_prediction_head(hs[:, 1 + t : 1 + 2 * t])
        return masks, iou_pred, semantic_pred

    def _upscale_and_project(self, tokens: torch.Tensor, h: int, w: int, hyper: torch.Tensor) -> torch.Tensor:
        """Upscale the image tokens 4x and take each mask's dot product: (B, h*w, D) -> (B, M, 4h, 4w).

        ``output_upscaling`` is two stride-2, kernel-2 transposed convolutions: their 2x2 output blocks
        do not overlap, so each is a per-pixel linear map D -> 4 * D/4. Running them as matmuls on the
        channels-last tokens (and the LayerNorm on the last axis) skips the layout copies and the slow
        CPU transposed-convolution kernel; pixels are put back in raster order only for the M masks.
        """
        up1, ln, act1, up2, act2 = self.output_upscaling
        b = tokens.shape[0]
        x = tokens.reshape(b, h, w, -1)
        x = _block_linear(x, up1)  # (B, h, w, 2, 2, D/4): sub-pixel (a, c) of pixel (i, j)
        x = act1(F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps))
        x = act2(_block_linear(x, up2))  # (B, h, w, 2, 2, 2, 2, D/8)
        m = hyper.shape[1]
        masks = x.reshape(b, -1, x.shape[-1]) @ hyper.transpose(1, 2)  # (B, 16*h*w, M)
        # output row 4i + 2a + a', column 4j + 2c + c'
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)


def _block_linear(x: torch.Tensor, deconv: nn.ConvTranspose2d) -> torch.Tensor:
    """A kernel-2 stride-2 ConvTranspose2d on channels-last input (..., C) -> (..., 2, 2, C_out)."""
    c_in, c_out = deconv.weight.shape[:2]
    weight = deconv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # columns ordered (a, c, out)
    bias = deconv.bias.repeat(4) if deconv.bias is not None else None
    y = F.linear(x, weight.t(), bias)
    return y.view(*x.shape[:-1], 2, 2, c_out)


def _match_batch(x: torch.Tensor, b: int, name: str) -> torch.Tensor:
    """Broadcast a batch-1 tensor to batch b; a tensor of batch b is used as is."""
    if x.shape[0] == b:
        return x
    if x.shape[0] == 1:
        return x.expand(b, *x.shape[1:])
    raise ValueError(f"{name} has batch {x.shape[0]}, expected 1 or {b} (the prompt batch)")
