"""SAM 2 on single images: Hiera/FPN encoder, SAM prompt encoder, SAM 2 mask decoder.

The image path of SAM 2's image predictor, without the video memory: encoding adds the learned
"no memory" embedding to the stride-16 map (what SAM 2 does for a frame with nothing to remember) and
projects the stride-4 and stride-8 maps for the decoder once per image. Decoding embeds a box as its
two corner points *before* the clicks and always appends the "not a point" padding token, as SAM 2's
predictor feeds its prompt encoder; returned mask logits are clamped to [-32, 32] as it does.
"""

from __future__ import annotations

import torch
from torch import nn

from imis.errors import PromptError
from imis.models.prompt_encoder import PromptEncoder
from imis.models.sam2_decoder import Sam2MaskDecoder
from imis.models.sam2_neck import Sam2ImageEncoder
from imis.models.segmenter import PromptableSegmenter

__all__ = ["Sam2Features", "Sam2Segmenter"]

# (image embedding (B, D, h, w), projected stride-4 map (B, D/8, 4h, 4w), stride-8 map (B, D/4, 2h, 2w))
Sam2Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

MASK_LOGIT_LIMIT = 32.0


class Sam2Segmenter(PromptableSegmenter):
    """SAM 2 image model. ``encode_image`` returns :data:`Sam2Features`, which ``decode`` takes."""

    def __init__(
        self, image_encoder: Sam2ImageEncoder, prompt_encoder: PromptEncoder, mask_decoder: Sam2MaskDecoder
    ) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, prompt_encoder.embed_dim))

    def encode_image(self, x: torch.Tensor) -> Sam2Features:  # type: ignore[override]
        """(B, 3, S, S) preprocessed images -> (embedding (B, D, S/16, S/16), high-res skips)."""
        s0, s1, s2 = self.image_encoder(x)
        embedding = s2 + self.no_mem_embed.reshape(1, -1, 1, 1).to(s2.dtype)
        h0, h1 = self.mask_decoder.project_high_res(s0, s1)
        return embedding, h0, h1

    def embed_prompts(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, T, D): [box corners,] clicks, "not a point"; dense (B, D, h, w) from the mask."""
        pe = self.prompt_encoder
        _, dense = pe(None, None, masks)
        tokens = []
        if boxes is not None:
            tokens.append(pe._embed_boxes(boxes))
        if points is not None:
            tokens.append(pe._embed_points(points[0], points[1], pad=True))
        elif boxes is not None:
            tokens.append(pe.not_a_point_embed.weight.to(tokens[0].dtype).expand(boxes.shape[0], 1, -1))
        if not tokens:
            return pe.no_mask_embed.weight.new_empty(dense.shape[0], 0, pe.embed_dim), dense
        sparse = torch.cat(tokens, dim=1)
        if dense.shape[0] != sparse.shape[0]:
            dense = dense.expand(sparse.shape[0], -1, -1, -1)
        return sparse, dense

    def decode(
        self,
        image_embeddings: Sam2Features,  # type: ignore[override]
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        text_embedding: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> dict[str, torch.Tensor | None]:
        """As ``PromptableSegmenter.decode`` on the output of ``encode_image``; adds ``object_score``
        (B, 1) logits (> 0: the object is present). Text prompts are refused."""
        if text_embedding is not None:
            raise PromptError("SAM 2 does not take text prompts")
        if isinstance(image_embeddings, torch.Tensor):
            raise TypeError("SAM 2 decodes the (embedding, high-res, high-res) tuple of encode_image")
        embedding, h0, h1 = image_embeddings
        sparse, dense = self.embed_prompts(points, boxes, masks)
        low_res, iou, obj = self.mask_decoder(
            embedding, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output, (h0, h1)
        )
        return {
            "low_res_masks": low_res.clamp(-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT),
            "iou_pred": iou,
            "semantic_pred": None,
            "object_score": obj,
            "sparse": sparse,
            "dense": dense,
        }
