"""SAM 2's mask decoder: SAM's decoder plus an object-score token, high-resolution skip features and a
sigmoid IoU head.

What differs from :class:`imis.models.mask_decoder.MaskDecoder` (whose parameters it reuses):

- output tokens enter the transformer as ``[object score, iou, mask x 4, prompts...]``; the object-score
  token's output goes through ``pred_obj_score_head`` (a 3-layer MLP) to one logit per prompt (> 0: the
  object is present);
- the two transposed convolutions of the upscaling path each add a projected trunk feature map:
  ``conv_s1`` (stride 8, D -> D/4 channels) after the first, ``conv_s0`` (stride 4, D -> D/8) after the
  second. The projections are applied once per image, by the segmenter's ``encode_image``;
- the IoU head ends in a sigmoid;
- with a single output requested, the single-mask token's mask is kept only when it is *stable* (the
  areas above +delta and above -delta differ little: ratio >= thresh), else the best of the three
  multimask outputs by predicted IoU is returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imis.models.common import MLP
from imis.models.mask_decoder import MaskDecoder, _block_linear, _match_batch
from imis.models.transformer import TwoWayTransformer

__all__ = ["Sam2MaskDecoder"]


class Sam2MaskDecoder(MaskDecoder):
    """Masks (B, M, 4h, 4w), IoU (B, M) and object-score logits (B, 1) from image and prompt embeddings."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        super().__init__(
            transformer_dim,
            transformer,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        d = transformer_dim
        self.iou_prediction_head.sigmoid_output = True
        self.obj_score_token = nn.Embedding(1, d)
        self.pred_obj_score_head = MLP(d, d, 1, 3)
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def project_high_res(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Neck maps (B, D, 4h, 4w) and (B, D, 2h, 2w) -> (B, D/8, 4h, 4w) and (B, D/4, 2h, 2w)."""
        return self.conv_s0(s0), self.conv_s1(s1)

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_embeddings (B or 1, D, h, w); image_pe (1, D, h, w); sparse (B, N, D); dense (B, D, h, w);
        high_res: projected (B or 1, D/8, 4h, 4w) and (B or 1, D/4, 2h, 2w).

        Returns masks (B, M, 4h, 4w), iou (B, M) with M = 3 (multimask) or 1, object score (B, 1).
        """
        masks, iou, obj = self.predict_all(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res
        )
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], obj
        masks, iou = self.select_stable(masks, iou)
        return masks, iou, obj

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All four mask tokens: masks (B, 4, 4h, 4w), iou (B, 4), object score (B, 1)."""
        b, t = sparse.shape[0], self.num_mask_tokens
        out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([out_tokens.to(sparse.dtype).unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = _match_batch(image_embeddings, b, "image_embeddings") + dense
        pos = _match_batch(image_pe, b, "image_pe")
        h, w = src.shape[-2:]
        hs, src_tokens = self.transformer(src, pos, tokens)
        mask_out = hs[:, 2 : 2 + t]
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        s0 = _match_batch(high_res[0], b, "high_res[0]")
        s1 = _match_batch(high_res[1], b, "high_res[1]")
        masks = self._upscale_with_skips(src_tokens, h, w, hyper, s0, s1)
        return masks, self.iou_prediction_head(hs[:, 1]), self.pred_obj_score_head(hs[:, 0])

    def _upscale_with_skips(
        self, tokens: torch.Tensor, h: int, w: int, hyper: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor
    ) -> torch.Tensor:
        """As ``MaskDecoder._upscale_and_project`` (2x2 blocks as per-pixel matmuls, channels last), with
        the skip maps rearranged into the same block layout before they are added."""
        up1, ln, act1, up2, act2 = self.output_upscaling
        b = tokens.shape[0]
        x = _block_linear(tokens.reshape(b, h, w, -1), up1)  # (B, h, w, a, c, D/4): row 2i + a, col 2j + c
        x = x + s1.reshape(b, -1, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1)
        x = act1(F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps))
        x = _block_linear(x, up2)  # (B, h, w, a, c, a', c', D/8): row 4i + 2a + a', col 4j + 2c + c'
        x = act2(x + s0.reshape(b, -1, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1))
        m = hyper.shape[1]
        masks = x.reshape(b, -1, x.shape[-1]) @ hyper.transpose(1, 2)  # (B, 16hw, M)
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)

    def stability(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, M, H, W) logits -> (B, M): area above +delta over area above -delta (1 when both empty)."""
        flat = masks.flatten(-2)
        inner = (flat > self.stability_delta).sum(-1).float()
        outer = (flat > -self.stability_delta).sum(-1).float()
        return torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))

    def select_stable(self, masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All-token masks (B, 4, H, W), iou (B, 4) -> the single-mask output if stable, else the best of
        the multimask outputs by predicted IoU: (B, 1, H, W), (B, 1)."""
        best = iou[:, 1:].argmax(-1) + 1
        rows = torch.arange(masks.shape[0], device=masks.device)
        stable = self.stability(masks[:, :1])[:, 0] >= self.stability_thresh  # (B,)
        pick = torch.where(stable, torch.zeros_like(best), best)
        return masks[rows, pick].unsqueeze(1), iou[rows, pick].unsqueeze(1)
