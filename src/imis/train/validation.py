"""Validation during training: the benchmark's Dice of a centre click, a tight box, the target's name
as text and (optionally) click@N after RITM corrections, decoded in the low-res frame; with the ``paper``
schedule also the imis-paper loop's Dice after its first and its last round. With several validation
datasets each metric is also reported per dataset (``<dataset>:<metric>``, the dataset.json name), so a
run selects on the in-distribution cases and the out-of-distribution set (imis.data.ood) apart."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imis.models.preprocess import Preprocess
from imis.train.config import TrainConfig
from imis.train.data import TrainImage, train_input
from imis.train.interaction import MaskState

#: The imis-paper loop's first prompts, as the benchmark's sequences.
PAPER_FIRSTS = ("click", "box", "text")


def per_dataset_fields(images: list[TrainImage], metrics: list[str]) -> list[str]:
    """The per-dataset columns of a validation over ``images``: none for a single dataset (the pooled
    columns are that dataset's), else ``<dataset>:<metric>`` for each dataset and metric."""
    names = sorted({img.dataset for img in images})
    return [f"{n}:{m}" for n in names for m in metrics] if len(names) > 1 else []


def paper_rounds(cfg: TrainConfig) -> int:
    """Rounds of the imis-paper loop a validation scores: ``val_interactions``, at least 2 (a first prompt
    and one correction)."""
    return max(2, cfg.val_interactions)


# ---------------------------------------------------------------------------------------------------------
# validation and export
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    images: list[TrainImage],
    store: Any,
    feats: torch.Tensor | None,
    name_index: dict[str, int],
    pre: Preprocess,
    cfg: TrainConfig,
    device: torch.device,
    head: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Mean Dice (the benchmark's metric, in the low-res frame) of one centre click, a tight box and the
    target's name as text, and (``cfg.val_interactions`` = N > 0) under ``click@N`` after the centre click
    and N-1 RITM corrections with the previous logits fed back, as the benchmark's iterative protocol
    does; over up to ``cfg.val_max_targets`` ground-truth targets. ``head``: the trained top of the
    encoder, applied to the store's cached trunk outputs."""
    from imis.bench.metrics import dice
    from imis.prompts import center_click, tight_box
    from imis.train.interaction import Prompt

    net.eval()
    multimask = cfg.click_output == "multimask"
    # per metric: (dataset of the target, Dice), so the means pool or split by dataset alike
    scores: dict[str, list[tuple[str, float]]] = {"click": [], "box": [], "text": []}
    n = 0
    for img in images:
        if n >= cfg.val_max_targets:
            break
        if store is not None:
            emb = store.get(img).to(device).float()[None]
            if head is not None:
                emb = head(emb).float()
        else:
            x = train_input(img, pre)
            emb = net.image_encoder(x.to(device)).float()
        ds = img.dataset
        for t in img.gt[: cfg.val_max_targets - n]:
            n += 1
            st = MaskState(target=t, image_index=0, rng=np.random.default_rng(0))
            prompts = {
                "click": Prompt([center_click(t.mask)], None, None, False, multimask=multimask),
                "box": Prompt([], tight_box(t.mask), None, False),
            }
            if feats is not None and t.name in name_index:
                prompts["text"] = Prompt([], None, name_index[t.name], False)
            scale = pre.input_size / t.mask.shape[0]
            for kind, p in prompts.items():
                logits = _decode_one(net, emb, st, p, feats, scale, device)
                scores[kind].append((ds, dice(logits[0].cpu().numpy() > 0, t.mask)))
            if cfg.val_interactions:
                key = f"click@{cfg.val_interactions}"
                value = _iterative_dice(net, emb, t, feats, scale, cfg, device)
                scores.setdefault(key, []).append((ds, value))
            if "paper" in cfg.schedule_weights():
                for first in PAPER_FIRSTS:
                    if first == "text" and "text" not in prompts:
                        continue
                    rounds = _paper_dice(net, emb, t, first, name_index, feats, scale, cfg, device)
                    for k in (1, len(rounds)):
                        scores.setdefault(f"paper:{first}@{k}", []).append((ds, rounds[k - 1]))
    res = {k: float(np.mean([x for _, x in v])) for k, v in scores.items() if v}
    res["targets"] = float(n)
    datasets = sorted({d for v in scores.values() for d, _ in v})
    if len(datasets) > 1:
        for k, v in scores.items():
            for name in datasets:
                vals = [x for d, x in v if d == name]
                if vals:
                    res[f"{name}:{k}"] = float(np.mean(vals))
    return res


def _decode_one(
    net: torch.nn.Module,
    emb: torch.Tensor,
    st: MaskState,
    prompt: Any,
    feats: torch.Tensor | None,
    scale: float,
    device: torch.device,
) -> torch.Tensor:
    """One target's (1, L, L) logits: the single output, or the IoU head's pick of several."""
    from imis.train.interaction import _decode_group

    low, iou = _decode_group(net, emb, [st], [prompt], feats, scale, device)
    best = int(iou[0].argmax()) if low.shape[1] > 1 else 0
    return low[0, best : best + 1].detach().float()


def _iterative_dice(
    net: torch.nn.Module,
    emb: torch.Tensor,
    target: Any,
    feats: torch.Tensor | None,
    scale: float,
    cfg: TrainConfig,
    device: torch.device,
) -> float:
    """Dice after a centre click and ``cfg.val_interactions - 1`` RITM corrections (deterministic)."""
    from imis.bench.metrics import dice
    from imis.prompts import center_click, ritm_click
    from imis.train.interaction import Prompt

    st = MaskState(target=target, image_index=0, rng=np.random.default_rng(0))
    st.clicks = [center_click(target.mask)]
    for k in range(cfg.val_interactions):
        if k:
            new = ritm_click(st.pred, target.mask, st.clicks)
            if new is None:  # nothing left to correct: the prediction stands
                break
            st.clicks.append(new)
        lone = k == 0 and cfg.click_output == "multimask"
        p = Prompt(list(st.clicks), None, None, st.logits is not None, multimask=lone)
        st.logits = _decode_one(net, emb, st, p, feats, scale, device)
        st.pred = (st.logits[0] > 0).cpu().numpy()
    return dice(st.pred, target.mask)


def _paper_dice(
    net: torch.nn.Module,
    emb: torch.Tensor,
    target: Any,
    first: str,
    name_index: dict[str, int],
    feats: torch.Tensor | None,
    scale: float,
    cfg: TrainConfig,
    device: torch.device,
) -> list[float]:
    """Dice after each of the :func:`paper_rounds` rounds of the imis-paper loop from ``first``
    (click among the half of the mask nearest its centroid, tight box or text): later rounds decode only
    the newest uniform error click plus the previous logits; the best multimask output by predicted IoU
    every round; clicks drawn from a generator seeded by the target's area (deterministic)."""
    from imis.bench.metrics import dice
    from imis.prompts import centroid_click, tight_box, uniform_error_click
    from imis.train.interaction import Prompt

    # keyed by the kind's name length (distinct for the three): the validations in docs/training.md used it
    rng = np.random.default_rng([int(target.mask.sum()), len(first)])
    st = MaskState(target=target, image_index=0, rng=rng)
    if first == "click":
        p = Prompt([centroid_click(target.mask, rng)], None, None, False, multimask=True)
    elif first == "box":
        p = Prompt([], tight_box(target.mask), None, False, multimask=True)
    else:
        p = Prompt([], None, name_index[target.name], False, multimask=True)
    out = []
    for k in range(paper_rounds(cfg)):
        if k:
            new = uniform_error_click(st.pred, target.mask, rng, [])
            p = Prompt([new] if new is not None else [], None, None, True, multimask=True)
        st.logits = _decode_one(net, emb, st, p, feats, scale, device)
        st.pred = (st.logits[0] > 0).cpu().numpy()
        out.append(dice(st.pred, target.mask))
    return out
