"""A small deterministic model without weights, for the Session's bookkeeping tests: the mask is the
box, plus a disc of radius 6 around each positive click, minus one around each negative click; its
low-res logits are the mask itself (so a fed-back mask prompt is visible), its quality the mask's
fraction of the image. It implements :class:`imis.models.interactive.PromptableModel`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from imis.models.interactive import Prediction, PromptSpec, check_prompt_support


@dataclass
class FakeEmbedding:
    shape: tuple[int, int]


@dataclass
class FakeModel:
    name: str = "fake"
    prompt_types: frozenset[str] = frozenset({"point", "box", "mask"})
    encodes: int = 0
    calls: list[PromptSpec] = field(default_factory=list)

    def encode(self, image: np.ndarray, name: str = "image") -> FakeEmbedding:
        self.encodes += 1
        return FakeEmbedding(tuple(np.asarray(image).shape[:2]))

    def decode(self, embedding: FakeEmbedding, prompts: PromptSpec, threshold: float = 0.0, multimask=None):
        check_prompt_support(self.name, self.prompt_types, prompts)
        self.calls.append(prompts)
        h, w = embedding.shape
        mask = np.zeros((h, w), bool)
        if prompts.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompts.box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        yy, xx = np.mgrid[:h, :w]
        points = prompts.points if prompts.points is not None else np.zeros((0, 2))
        labels = prompts.labels if prompts.labels is not None else np.zeros(0, int)
        for (x, y), label in zip(points, labels, strict=True):
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= 36
            mask = mask | disc if label else mask & ~disc
        logits = np.where(mask, 1.0, -1.0).astype(np.float32)
        return Prediction(
            mask=logits > threshold,
            logits=logits,
            low_res_logits=torch.from_numpy(logits)[None, None],
            quality=float(mask.mean()),
        )
