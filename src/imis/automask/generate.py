"""Candidate masks from a grid of click prompts (paper §3.2, Segment Anything's automatic generator).

One image embedding; an n x n grid of positive clicks at the centres of n x n cells (SAM's
``build_point_grid``); the clicks decoded in a few large batches by
:mod:`imis.models.grid_decode`; every output token the model is used with scored by its IoU head;
the masks computed only for outputs with predicted IoU >= ``iou_thresh``; then SAM's stability score
(the IoU of the mask thresholded at +offset and at -offset) on the low-resolution logits.

Everything up to NMS works in the network's low-resolution mask frame (the valid, unpadded part of it);
only the masks that survive NMS are brought to the native resolution (`logits_to_native`).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from imis.automask.settings import AutomaskSettings
from imis.models.grid_decode import decode_clicks, masks_for, shared_image
from imis.models.interactive import Embedding, InteractiveModel

__all__ = [
    "Candidates",
    "click_cells",
    "generate_candidates",
    "grid_net",
    "output_tokens",
    "point_grid",
    "stability_score",
]


@dataclass
class Candidates:
    """Masks kept by the IoU and stability filters, in the low-res frame.

    logits (K, h, w) float32 in the model's low-res frame (padding included); masks (K, hv, wv) bool,
    the valid part thresholded; iou, stability (K,); point (K, 2) native x, y; output (K,) token index.
    """

    logits: torch.Tensor
    masks: torch.Tensor
    iou: np.ndarray
    stability: np.ndarray
    point: np.ndarray
    output: np.ndarray
    decoded: int  # prompts decoded
    cell: np.ndarray | None = None  # (K, 2) int: the click's (row, col) in the low-res frame

    def select(self, idx: np.ndarray) -> Candidates:
        t = torch.as_tensor(idx, dtype=torch.long)
        return Candidates(
            self.logits[t],
            self.masks[t],
            self.iou[idx],
            self.stability[idx],
            self.point[idx],
            self.output[idx],
            self.decoded,
            None if self.cell is None else self.cell[idx],
        )

    def __len__(self) -> int:
        return len(self.iou)


def point_grid(n: int, height: int, width: int) -> np.ndarray:
    """(n*n, 2) native (x, y) click positions: centres of an n x n grid of cells, row-major."""
    if n < 1:
        raise ValueError(f"points_per_side must be >= 1, got {n}")
    side = (np.arange(n, dtype=np.float64) + 0.5) / n
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel() * width, ys.ravel() * height], axis=-1)


def output_tokens(model: InteractiveModel, outputs: str, n_tokens: int) -> list[int]:
    """Mask tokens scored per click. 'multimask': tokens 1.. (SAM's generator); 'single': token 0;
    'all': every token; 'auto': the model's own rule for a lone click ('single' models: token 0)."""
    if outputs == "auto":
        outputs = "single" if model.multimask == "single" else "multimask"
    if outputs == "single":
        return [0]
    if outputs == "multimask":
        return list(range(1, n_tokens))
    if outputs == "all":
        return list(range(n_tokens))
    raise ValueError(f"outputs must be auto, single, multimask or all, not {outputs!r}")


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """SAM's stability: |logits > t + offset| / |logits > t - offset| per mask (1 for an empty mask)."""
    inter = (logits > threshold + offset).flatten(1).sum(1, dtype=torch.int64)
    union = (logits > threshold - offset).flatten(1).sum(1, dtype=torch.int64)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float64))


def click_cells(points: np.ndarray, embedding: Embedding, low_hw: tuple[int, int]) -> np.ndarray:
    """(K, 2) native (x, y) clicks -> (K, 2) int (row, col) of the low-res mask cell holding them."""
    xy = embedding.frame.to_input(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    s = embedding.frame.input_size
    rows = np.floor(xy[:, 1] * low_hw[0] / s).astype(np.int64)
    cols = np.floor(xy[:, 0] * low_hw[1] / s).astype(np.int64)
    return np.stack([rows, cols], axis=-1)


def low_res_valid(embedding: Embedding, low_hw: tuple[int, int]) -> tuple[int, int]:
    """Extent of the image (not padding) inside the low-res mask frame."""
    frame = embedding.frame
    s = frame.input_size
    return (
        max(1, int(np.ceil(frame.valid_hw[0] * low_hw[0] / s))),
        max(1, int(np.ceil(frame.valid_hw[1] * low_hw[1] / s))),
    )


@dataclass
class DecoderNet:
    """The prompt encoder (kept in float32: its random Fourier features lose positions in bf16) and the
    mask decoder in the dtype the grid is decoded in."""

    prompt_encoder: torch.nn.Module
    mask_decoder: torch.nn.Module
    dtype: torch.dtype


def grid_net(model: InteractiveModel) -> DecoderNet:
    """The decoder the grid runs through: in bfloat16 when the model runs its encoder in bfloat16
    (--precision bf16 / auto on a CPU with bf16 units: the grid decode is memory-bound, and bf16
    halves its traffic), else the model's own. The bf16 copy is made once per model."""
    net = model.net
    if getattr(model, "dtype", None) != torch.bfloat16:
        return DecoderNet(net.prompt_encoder, net.mask_decoder, torch.float32)
    cached = getattr(model, "_automask_bf16", None)
    if cached is None:
        cached = DecoderNet(
            net.prompt_encoder, copy.deepcopy(net.mask_decoder).to(torch.bfloat16), torch.bfloat16
        )
        model._automask_bf16 = cached
    return cached


def generate_candidates(
    model: InteractiveModel, embedding: Embedding, settings: AutomaskSettings
) -> Candidates:
    """Decode the click grid against ``embedding`` and keep the confident, stable masks.

    On a CPU the batches are decoded by as many Python threads as torch has intra-op threads, each
    running its operations on one thread (torch releases the GIL inside them): the decode is a long
    chain of mid-sized operations, and splitting each across the cores cost 15-20% more time than
    giving each core its own batch (benchmarks/automask.py). The candidates come out in grid order
    either way."""
    net = grid_net(model)
    h, w = embedding.frame.orig_hw
    points = point_grid(settings.points_per_side, h, w)
    coords = torch.from_numpy(embedding.frame.to_input(points))[:, None].to(model.device)
    tokens = output_tokens(model, settings.outputs, net.mask_decoder.num_mask_tokens)
    starts = range(0, len(points), settings.batch_size)
    with torch.inference_mode():
        shared = shared_image(net, embedding.features.to(net.dtype))

    def batch(start: int) -> dict[str, torch.Tensor] | None:
        with torch.inference_mode():
            return _decode_batch(
                net, shared, coords[start : start + settings.batch_size], tokens, embedding, settings
            )

    workers = torch.get_num_threads() if coords.device.type == "cpu" else 1
    if workers > 1 and len(starts) > 1:
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(batch, starts))
        finally:
            torch.set_num_threads(workers)
    else:
        results = [batch(start) for start in starts]
    kept = [(start, r) for start, r in zip(starts, results, strict=True) if r is not None]
    cand = _gather(kept, points)
    if len(cand):
        cand.cell = click_cells(cand.point, embedding, tuple(cand.logits.shape[-2:]))
    return cand


def _decode_batch(net: DecoderNet, shared, coords, tokens: list[int], embedding: Embedding, settings):
    """One batch of clicks: IoU of every output token, masks of the confident ones, stability filter.
    None when nothing passes."""
    labels = torch.ones(len(coords), 1, dtype=torch.int64, device=coords.device)
    sparse, _ = net.prompt_encoder((coords, labels), None, None, None)
    state = decode_clicks(net, shared, sparse.to(net.dtype))
    tok = torch.tensor(tokens, dtype=torch.long)
    iou = state.iou[:, tok].float().cpu()
    rows, cols = torch.nonzero(iou >= settings.iou_thresh, as_tuple=True)
    if not len(rows):
        return None
    logits = masks_for(net, state, rows.to(coords.device), tok[cols].to(coords.device)).float().cpu()
    valid = low_res_valid(embedding, tuple(logits.shape[-2:]))
    inner = logits[:, : valid[0], : valid[1]]
    stab = stability_score(inner, settings.mask_threshold, settings.stability_offset)
    ok = stab >= settings.stability_thresh
    if not ok.any():
        return None
    return {
        "logits": logits[ok],
        "masks": inner[ok] > settings.mask_threshold,
        "iou": iou[rows[ok], cols[ok]],
        "stab": stab[ok],
        "row": rows[ok],
        "out": tok[cols[ok]],
    }


def _gather(kept: list[tuple[int, dict[str, torch.Tensor]]], points: np.ndarray) -> Candidates:
    """Per-batch results (batch start, what it kept), in grid order, as one :class:`Candidates`."""
    if not kept:
        empty = torch.zeros(0, 1, 1)
        return Candidates(
            empty,
            empty.bool(),
            np.zeros(0),
            np.zeros(0),
            np.zeros((0, 2)),
            np.zeros(0, np.int64),
            len(points),
            np.zeros((0, 2), np.int64),
        )
    rows = torch.cat([r["row"] + start for start, r in kept]).numpy()
    return Candidates(
        logits=torch.cat([r["logits"] for _, r in kept]),
        masks=torch.cat([r["masks"] for _, r in kept]),
        iou=torch.cat([r["iou"] for _, r in kept]).numpy().astype(np.float64),
        stability=torch.cat([r["stab"] for _, r in kept]).numpy().astype(np.float64),
        point=points[rows],
        output=torch.cat([r["out"] for _, r in kept]).numpy().astype(np.int64),
        decoded=len(points),
    )
