"""Simulated interaction for training: a first prompt, then K correction steps, batched over masks.

All prompts live in the decoder's low-res frame (``lowres`` x ``lowres`` pixels, see
:mod:`imis.train.data`) and are drawn with the shared simulators of :mod:`imis.prompts` from one
generator per mask, seeded by (seed, epoch, step, mask index): the sequence does not depend on the
number of processes or on where a run was resumed.

Schedules (``TrainConfig.schedule``: one name, or a mix ``{plain: 0.5, paper: 0.5}`` drawn per mask):

* ``plain`` (default): clicks accumulate; the first box/text stays; the previous low-res logits are fed
  back as the mask prompt. This is how the benchmark's ``iterative`` protocol and the Session use a
  model.
* ``reference``: IMIS-Net's ``train.py`` (reference report §4.4): each step gets only its latest click
  plus the previous logits (with probability 0.4 the text instead of the logits for ground-truth
  targets); at one random step and at the last, text + logits only (logits only for imask targets).
* ``paper``: the loop of ``imis bench --protocol imis-paper`` (IMIS-Bench's ``test.py``): the first prompt,
  then only the newest correction click plus the previous logits, every step decoded with the multimask
  outputs (the best one learns the mask, the IoU head learns all and picks the one fed back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imis.prompts import (
    Click,
    center_click,
    centroid_click,
    jittered_box,
    largest_component_click,
    ritm_click,
    uniform_click,
    uniform_error_click,
)
from imis.train.config import TrainConfig
from imis.train.data import Target
from imis.train.loss import mask_loss

__all__ = ["MaskState", "Prompt", "draw_first", "next_prompt", "run_interaction"]


@dataclass
class MaskState:
    """One target through its interaction."""

    target: Target
    image_index: int
    rng: np.random.Generator
    first: str = "box"
    corrector: str = "ritm"
    schedule: str = "plain"
    text_index: int | None = None
    clicks: list[Click] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None
    logits: torch.Tensor | None = None  # (1, L, L) previous low-res logits, detached
    pred: np.ndarray | None = None  # bool (L, L)


@dataclass
class Prompt:
    """What the decoder gets for one mask at one step (low-res coordinates)."""

    clicks: list[Click]
    box: tuple[int, int, int, int] | None
    text_index: int | None
    use_logits: bool
    multimask: bool = False

    def signature(self) -> tuple:
        return (
            bool(self.clicks),
            self.box is not None,
            self.text_index is not None,
            self.use_logits,
            self.multimask,
        )


def _choice(weights: dict[str, float], rng: np.random.Generator, allowed: set[str] | None = None) -> str:
    keys = [k for k in weights if allowed is None or k in allowed]
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    if p.sum() <= 0:
        keys, p = list(allowed or weights), np.ones(len(allowed or weights))
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _first_click(mask: np.ndarray, kind: str, rng: np.random.Generator) -> Click:
    if kind == "center":
        return center_click(mask)
    if kind == "uniform":
        return uniform_click(mask, rng)
    return centroid_click(mask, rng)


def draw_first(state: MaskState, cfg: TrainConfig, text_ok: bool) -> None:
    """Choose the schedule of ``state`` (a mix draws one per mask) and draw its first prompt (text only
    for named ground-truth targets). The ``paper`` schedule draws the benchmark's own first prompts (one
    of a click among the half of the mask nearest its centroid, the tight box, the text) and uniform error
    corrections, whatever the configuration's distributions, which the other schedules use."""
    rng = state.rng
    mix = cfg.schedule_weights()
    state.schedule = next(iter(mix)) if len(mix) == 1 else _choice(mix, rng)
    named = text_ok and state.text_index is not None
    if state.schedule == "paper":
        state.first = _choice({"click": 1.0, "box": 1.0, "text": 1.0 if named else 0.0}, rng)
        state.corrector = "uniform"
        if state.first == "click":
            state.clicks = [centroid_click(state.target.mask, rng)]
        elif state.first == "box":
            state.box = _tight(state.target.mask)
        return
    allowed = set(cfg.first_prompts)
    if not named:
        allowed = {k for k in allowed if "text" not in k} or {"box"}
    state.first = _choice(cfg.first_prompts, rng, allowed)
    state.corrector = _choice(cfg.corrections, rng)
    mask = state.target.mask
    if "click" in state.first:
        state.clicks = [_first_click(mask, _choice(cfg.first_clicks, rng), rng)]
    if "box" in state.first:
        state.box = jittered_box(mask, rng, cfg.box_jitter) if cfg.box_jitter else _tight(mask)


def _tight(mask: np.ndarray) -> tuple[int, int, int, int]:
    from imis.prompts import tight_box

    return tight_box(mask)


def _correction(state: MaskState) -> Click | None:
    gt = state.target.mask
    if state.corrector == "uniform":
        return uniform_error_click(state.pred, gt, state.rng, state.clicks)
    if state.corrector == "largest-component":
        return largest_component_click(state.pred, gt, state.clicks)
    return ritm_click(state.pred, gt, state.clicks)


def next_prompt(state: MaskState, step: int, cfg: TrainConfig, t_star: int, text_ok: bool) -> Prompt:
    """The prompt of ``state`` at ``step`` (0: the first prompt; 1..K: corrections)."""
    text = state.text_index if "text" in state.first else None
    if step == 0:
        lone_click = state.first == "click" and cfg.click_output == "multimask"
        multimask = lone_click or state.schedule == "paper"
        return Prompt(list(state.clicks), state.box, text, False, multimask=multimask)
    new = _correction(state)
    if new is not None:
        state.clicks.append(new)
    if state.schedule == "plain":
        return Prompt(list(state.clicks), state.box, text, state.logits is not None)
    if state.schedule == "paper":
        return Prompt([new] if new is not None else [], None, None, True, multimask=True)
    # reference schedule
    name_text = state.target.name is not None and state.text_index is not None and text_ok
    tindex = state.text_index if name_text else None
    if step == t_star or step == cfg.interactions:
        return Prompt([], None, tindex, True)
    latest = [new] if new is not None else []
    if tindex is not None and state.rng.random() < 0.4:
        return Prompt(latest, None, tindex, False)
    return Prompt(latest, None, None, True)


def _decode_group(
    net: torch.nn.Module,
    embeddings: torch.Tensor,
    states: list[MaskState],
    prompts: list[Prompt],
    text_features: torch.Tensor | None,
    scale: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder call for masks whose prompts have the same signature -> (G, M, L, L), (G, M)."""
    p0 = prompts[0]
    g = len(states)
    emb = embeddings[[s.image_index for s in states]].float()
    points = None
    if p0.clicks:
        n = max(len(p.clicks) for p in prompts)
        coords = np.zeros((g, n, 2), dtype=np.float32)
        labels = np.full((g, n), -1, dtype=np.int64)
        for i, p in enumerate(prompts):
            for j, c in enumerate(p.clicks):
                coords[i, j] = (c.x * scale, c.y * scale)
                labels[i, j] = int(c.positive)
        points = (torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device))
    boxes = None
    if p0.box is not None:
        boxes = torch.tensor([p.box for p in prompts], dtype=torch.float32, device=device) * scale
    masks = None
    if p0.use_logits:
        masks = torch.stack([s.logits for s in states]).to(device)
    text = None
    if p0.text_index is not None:
        idx = torch.tensor([p.text_index for p in prompts], device=device)
        text = net.project_text(text_features[idx])
    out = net.decode(
        emb, points=points, boxes=boxes, masks=masks, text_embedding=text, multimask_output=p0.multimask
    )
    return out["low_res_masks"], out["iou_pred"]


def run_interaction(
    net: torch.nn.Module,
    embeddings: torch.Tensor,
    states: list[MaskState],
    cfg: TrainConfig,
    text_features: torch.Tensor | None,
    grad_at: set[int],
    t_star: int,
    input_size: int,
    device: torch.device,
    autocast: Any = None,
) -> dict[str, float]:
    """Run steps 0..K for all masks; backpropagate the mean loss of the steps in ``grad_at``.

    embeddings: (B, C, h, w) of the batch's images (``MaskState.image_index`` indexes them).
    Gradients accumulate in the trainable parameters (call ``zero_grad`` before, ``step`` after).
    Returns the mean loss terms over the gradient steps, the Dice after each step and ``nonfinite``
    (1.0 when a loss was not finite: then nothing is backpropagated).
    """
    from contextlib import nullcontext

    lowres = states[0].target.mask.shape[0]
    scale = input_size / lowres
    text_ok = text_features is not None
    for s in states:
        draw_first(s, cfg, text_ok)
    gts = torch.from_numpy(np.stack([s.target.mask for s in states])).to(device)
    sums = {"loss": 0.0, "focal": 0.0, "dice": 0.0, "iou": 0.0}
    stats: dict[str, float] = {}
    n_grad = max(1, len(grad_at))
    # The gradient steps' losses are summed and backpropagated once at the end: with a trainable image
    # encoder every step's graph runs through the same encoder output, which one backward pass frees.
    objective: torch.Tensor | None = None
    for step in range(cfg.interactions + 1):
        prompts = [next_prompt(s, step, cfg, t_star, text_ok) for s in states]
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.signature(), []).append(i)
        with_grad = step in grad_at
        losses = []
        chosen = [None] * len(states)
        ctx = torch.enable_grad() if with_grad else torch.no_grad()
        with ctx, autocast() if autocast is not None else nullcontext():
            for idx in groups.values():
                low, iou = _decode_group(
                    net,
                    embeddings,
                    [states[i] for i in idx],
                    [prompts[i] for i in idx],
                    text_features,
                    scale,
                    device,
                )
                low = low.float()
                gt = gts[idx]
                m = low.shape[1]
                if m > 1:
                    # SAM's rule for an ambiguous lone click: only the best of the outputs learns the
                    # mask, the IoU head learns all of them; the next step starts from the IoU head's pick.
                    terms = [
                        mask_loss(low[:, j], iou[:, j], gt, cfg.focal_weight, cfg.dice_weight, cfg.iou_weight)
                        for j in range(m)
                    ]
                    seg = torch.stack(
                        [cfg.focal_weight * t.focal + cfg.dice_weight * t.dice for t in terms], 1
                    )
                    best = seg.argmin(1)
                    iou_all = torch.stack([t.iou for t in terms], 1).mean(1)
                    rows = torch.arange(len(idx), device=device)
                    total = seg[rows, best] + cfg.iou_weight * iou_all
                    focal = torch.stack([t.focal for t in terms], 1)[rows, best]
                    dice = torch.stack([t.dice for t in terms], 1)[rows, best]
                    pick = iou.argmax(1)
                    logits = low[rows, pick]
                    losses.append((total, focal, dice, iou_all))
                else:
                    t = mask_loss(low[:, 0], iou[:, 0], gt, cfg.focal_weight, cfg.dice_weight, cfg.iou_weight)
                    logits = low[:, 0]
                    losses.append((t.total, t.focal, t.dice, t.iou))
                for j, i in enumerate(idx):
                    chosen[i] = logits[j]
        total = torch.cat([x[0] for x in losses]).mean()
        if not torch.isfinite(total):
            stats["nonfinite"] = 1.0
            break
        if with_grad:
            objective = total / n_grad if objective is None else objective + total / n_grad
            sums["loss"] += float(total.detach()) / n_grad
            sums["focal"] += float(torch.cat([x[1] for x in losses]).mean().detach()) / n_grad
            sums["dice"] += float(torch.cat([x[2] for x in losses]).mean().detach()) / n_grad
            sums["iou"] += float(torch.cat([x[3] for x in losses]).mean().detach()) / n_grad
        dices = []
        for s, lg in zip(states, chosen, strict=True):
            s.logits = lg.detach()[None]
            s.pred = (lg.detach() > 0).cpu().numpy()
            gt = s.target.mask
            inter = np.logical_and(s.pred, gt).sum()
            dices.append(2.0 * inter / max(1, s.pred.sum() + gt.sum()))
        stats[f"dice@{step}"] = float(np.mean(dices))
    if objective is not None and "nonfinite" not in stats:
        objective.backward()
    stats.update(sums)
    stats.setdefault("nonfinite", 0.0)
    return stats
