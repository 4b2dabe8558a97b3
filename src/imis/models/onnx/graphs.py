"""The two graphs an ONNX export holds, as torch modules with fixed-rank inputs only.

``encoder``: (1, 3, S, S) preprocessed image -> (1, C, h, w) image embedding (the network's own
image encoder). ``decoder``: prompt encoder + mask decoder over one cached embedding, with every
prompt kind folded into one token list so that the graph has no optional inputs:

- ``point_coords`` (1, N, 2) x, y in the network-input frame and ``point_labels`` (1, N) float:
  1 positive click, 0 negative click, -1 the padding token SAM adds when clicks come without a box,
  2 / 3 the box's top-left / bottom-right corners, 4 the text token (text models; its coordinates
  are ignored and ``text_embedding`` is used as the token). N is dynamic.
- ``mask_input`` (1, 1, 4h, 4w) previous low-res logits, used when ``has_mask_input`` is 1.
- ``text_embedding`` (1, D): the projected text prompt (text models only), used when a label 4 is
  present, both as a token and through the decoder's text-to-mask term.

Outputs ``low_res_masks`` (1, K, 4h, 4w) and ``iou_predictions`` (1, K) for all K = 1 + multimask
tokens: token 0 is the single-mask output, tokens 1.. the multimask ones; the caller picks.
The tokens are the same, in the same order, as :meth:`PromptEncoder.forward` builds, so the masks
equal the PyTorch path's.
"""

from __future__ import annotations

import torch
from torch import nn

LABEL_PAD, LABEL_NEG, LABEL_POS, LABEL_BOX_TL, LABEL_BOX_BR, LABEL_TEXT = -1, 0, 1, 2, 3, 4

__all__ = ["DecoderGraph", "LABEL_TEXT", "has_text_path"]


def has_text_path(net: nn.Module) -> bool:
    """Whether a PromptableSegmenter takes text prompts (a text projection into the prompt width)."""
    return getattr(net, "text_projection", None) is not None


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder of ``net`` with the folded token inputs described above."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = net.prompt_encoder
        self.mask_decoder = net.mask_decoder
        self.with_text = has_text_path(net)
        with torch.no_grad():
            # the grid's positional code is a constant of the weights: computed once, stored in the graph
            self.register_buffer(
                "dense_pe", self.prompt_encoder.pe_layer(self.prompt_encoder.image_embedding_size)[None]
            )

    def _sparse(self, coords: torch.Tensor, labels: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == LABEL_PAD, pe.not_a_point_embed.weight, emb)
        for value in (LABEL_NEG, LABEL_POS, LABEL_BOX_TL, LABEL_BOX_BR):
            emb = emb + (lab == value).to(emb.dtype) * pe.point_embeddings[value].weight
        if text is not None:
            emb = torch.where(lab == LABEL_TEXT, text[:, None, :], emb)
        return emb

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = text_embedding if self.with_text else None
        sparse = self._sparse(point_coords, point_labels, text)
        pe = self.prompt_encoder
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = torch.where(
            has_mask_input.reshape(1, 1, 1, 1) > 0.5, pe.mask_downscaling(mask_input), no_mask
        )
        gate = None
        if text is not None:
            # The decoder's text-to-mask term applies only when a text token is present (gate 1 or 0).
            gate = (point_labels == LABEL_TEXT).any(dim=1).to(text.dtype)
        masks, iou, _ = self.mask_decoder.predict_masks(
            image_embeddings, self.dense_pe, sparse, dense, text, text_gate=gate
        )
        return masks, iou
