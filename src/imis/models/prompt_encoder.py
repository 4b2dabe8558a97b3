"""Prompt encoder of the SAM family: clicks, boxes, a dense mask and (IMIS-Net) a text token.

Parameter names follow the official Segment Anything ``PromptEncoder`` (``pe_layer.*``,
``point_embeddings.{0..3}``, ``not_a_point_embed``, ``mask_downscaling.{0,1,3,4,6}``, ``no_mask_embed``).

Sparse tokens, in order: points (+ a padding point when no box is given, as SAM was trained), the two
box corners, then the text token. Coordinates are pixels of the model's input frame (x, y).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from imis.models.common import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) positions normalised to [0, 1].

    The projection is a fixed Gaussian matrix (a persistent buffer, since checkpoints carry it):
    pe(p) = [sin(2 pi (2p - 1) G), cos(2 pi (2p - 1) G)], G of shape (2, num_pos_feats).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in [0, 1] -> (..., 2 * num_pos_feats)."""
        gaussian = self.positional_encoding_gaussian_matrix
        proj = (2.0 * coords.to(gaussian.dtype) - 1.0) @ gaussian
        proj = 2.0 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an (h, w) grid of cells: (2 * num_pos_feats, h, w)."""
        h, w = size
        gaussian = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=gaussian.device, dtype=gaussian.dtype) + 0.5) / h
        xs = (torch.arange(w, device=gaussian.device, dtype=gaussian.dtype) + 0.5) / w
        grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1)  # (h, w, [x, y])
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) in an image of ``image_size`` (h, w) -> (B, N, C)."""
        h, w = image_size
        size = torch.tensor([w, h], dtype=torch.float32, device=coords.device)
        return self._pe_encoding(coords.float() / size)


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    embed_dim: D, the decoder width. image_embedding_size: (h, w) of the image embedding.
    input_image_size: (H, W) of the padded model input, the frame of point/box coordinates.
    mask_in_chans: hidden channels of the mask-downscaling convolutions.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative click, 1: positive click, 2/3: top-left/bottom-right box corners.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, D, h, w).

        It depends only on the Gaussian buffer, so it is cached; the buffer's version counter (bumped
        by load_state_dict and any in-place change) and its device/dtype invalidate the cache.
        """
        g = self.pe_layer.positional_encoding_gaussian_matrix
        key = (g.device, g.dtype, g._version, g.data_ptr())
        cached = getattr(self, "_dense_pe_cache", None)
        if cached is None or cached[0] != key or torch.is_grad_enabled():
            pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
            if torch.is_grad_enabled():
                return pe
            with torch.inference_mode(False), torch.no_grad():
                # a normal tensor (not an inference tensor) so that it can be reused outside inference mode
                pe = self.pe_layer(self.image_embedding_size).unsqueeze(0).contiguous()
            self._dense_pe_cache = (key, pe)
            return pe
        return cached[1]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) pixel coords + (B, N) labels -> (B, N [+1], D).

        Labels: 1 positive, 0 negative, -1 not a point (zero position code plus ``not_a_point_embed``);
        any other value gets the position code only, as in SAM.
        """
        points = points.float() + 0.5  # pixel index -> pixel centre
        labels = labels.to(points.device)
        if pad:
            # SAM is trained with an extra "not a point" token whenever no box is given.
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.to(emb.dtype), emb)
        for value in (0, 1):
            emb = emb + (lab == value).to(emb.dtype) * self.point_embeddings[value].weight.to(emb.dtype)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) xyxy pixel boxes -> (B, 2, D): one token per corner."""
        corners = boxes.float().reshape(-1, 2, 2) + 0.5
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return emb + corner_types.to(emb.dtype)

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4h, 4w) mask logits -> (B, D, h, w)."""
        if tuple(masks.shape[-2:]) != self.mask_input_size or masks.shape[1] != 1:
            raise ValueError(
                f"mask prompt must be (B, 1, {self.mask_input_size[0]}, {self.mask_input_size[1]}) logits, "
                f"got {tuple(masks.shape)}"
            )
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        if text is not None:
            return text.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts.

        points: ((B, N, 2) coords, (B, N) labels) or None; boxes: (B, 4) xyxy or None;
        masks: (B, 1, 4h, 4w) logits or None; text: (B, D) projected text embedding or None.
        Returns sparse (B, T, D) and dense (B, D, h, w) embeddings.
        """
        bs = self._batch_size(points, boxes, masks, text)
        weight = self.no_mask_embed.weight
        tokens = []
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        if text is not None:
            tokens.append(text.reshape(text.shape[0], 1, -1).to(weight.dtype))
        if tokens:
            sparse = torch.cat(tokens, dim=1)
        else:
            sparse = weight.new_empty(bs, 0, self.embed_dim)

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
