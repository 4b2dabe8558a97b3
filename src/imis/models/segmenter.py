"""The promptable segmenter: one container for every SAM-family model we run.

``image_encoder`` (any module mapping (B, 3, H, W) -> (B, D, h, w)), ``prompt_encoder``,
``mask_decoder`` and, for text-promptable models (IMIS-Net), ``text_encoder`` (token ids -> pooled
(B, T)) with ``text_projection`` (T -> D). Its state-dict names are our internal layout; the
``imis.models.formats`` modules map foreign checkpoint layouts onto it.
"""

from __future__ import annotations

import torch
from torch import nn

from imis.errors import PromptError
from imis.models.mask_decoder import MaskDecoder
from imis.models.prompt_encoder import PromptEncoder

__all__ = ["PromptableSegmenter"]


class PromptableSegmenter(nn.Module):
    """Image encoder + prompt encoder + mask decoder (+ text tower). Encode once, decode many times."""

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        text_encoder: nn.Module | None = None,
        text_projection: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.text_encoder = text_encoder
        self.text_projection = text_projection

    @property
    def prompt_types(self) -> frozenset[str]:
        """Prompt kinds this network can take: point, box and mask always; text with a text projection."""
        kinds = {"point", "box", "mask"}
        if self.text_projection is not None:
            kinds.add("text")
        return frozenset(kinds)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D, H/16, W/16) image embeddings."""
        return self.image_encoder(x)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) token ids [, (B, L) mask] -> (B, D) text prompt embedding (pooled, then projected)."""
        if self.text_encoder is None or self.text_projection is None:
            raise PromptError("this model has no text encoder: it does not take text prompts")
        return self.text_projection(self.text_encoder(input_ids, attention_mask))

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T) features of a frozen text tower (CLIP pooled, MiniLM sentence vector) -> (B, D)."""
        if self.text_projection is None:
            raise PromptError("this model has no text projection: it does not take text prompts")
        return self.text_projection(features)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        text_embedding: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        """Decode prompts against image embeddings (batch 1, or one per prompt).

        points: ((B, N, 2) xy in the input frame, (B, N) labels 1/0/-1); boxes: (B, 4) xyxy;
        masks: (B, 1, 4h, 4w) logits (e.g. a previous ``low_res_masks``); text_embedding: (B, D) from
        ``encode_text``. Returns ``low_res_masks`` (B, M, 4h, 4w) logits, ``iou_pred`` (B, M),
        ``semantic_pred`` (B, M, S) or None, and the prompt embeddings ``sparse`` / ``dense``.
        """
        if text_embedding is not None and "text" not in self.prompt_types:
            raise PromptError("this model does not take text prompts")
        sparse, dense = self.prompt_encoder(points, boxes, masks, text_embedding)
        low_res, iou_pred, semantic_pred = self.mask_decoder(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output,
            text_embedding,
        )
        return {
            "low_res_masks": low_res,
            "iou_pred": iou_pred,
            "semantic_pred": semantic_pred,
            "sparse": sparse,
            "dense": dense,
        }
