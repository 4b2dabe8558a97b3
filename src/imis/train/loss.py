"""The training loss: 20 * focal + dice + IoU-prediction MSE (SAM, SAM-Med2D, IMIS-Net), per mask.

The reference sums each term over the whole batch at once (one batch-level soft IoU as the IoU target);
here every term is computed per mask and then averaged, so a large mask does not drown a small one and
the IoU head learns each mask's own quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossTerms", "dice_loss", "focal_loss", "iou_target", "mask_loss"]


@dataclass
class LossTerms:
    """Per-mask terms, each (N,): ``total`` is the weighted sum."""

    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss, mean over pixels: (N, H, W) logits and {0, 1} targets -> (N,).

    FL = -alpha_t (1 - p_t)^gamma log(p_t), alpha_t = alpha on foreground pixels, 1 - alpha on background.
    """
    t = target.float()
    ce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    p = torch.sigmoid(logits.float())
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (alpha_t * (1 - p_t) ** gamma * ce).flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss with additive smoothing: (N, H, W) logits -> (N,) = 1 - (2|PT| + s) / (|P| + |T| + s)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    return 1.0 - (2.0 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)


def iou_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction (logit > 0) with the target, per mask (N,); 1 when both are empty."""
    p = (logits.detach() > 0).flatten(1)
    t = target.bool().flatten(1)
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
) -> LossTerms:
    """(N, H, W) logits, (N,) predicted IoU and (N, H, W) targets -> per-mask loss terms."""
    focal = focal_loss(logits, target)
    dice = dice_loss(logits, target)
    iou = (iou_pred.float() - iou_target(logits, target)) ** 2
    total = focal_weight * focal + dice_weight * dice + iou_weight * iou
    return LossTerms(total, focal, dice, iou)
