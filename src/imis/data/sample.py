"""The one record every dataset stage iterates over: a 2D image with its named binary masks.

Readers (:mod:`imis.data.formats`) yield :class:`Sample`; ``imis prepare`` produces and writes them;
``imis stats``, ``automask``, ``train`` and ``bench`` consume them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Sample"]


@dataclass
class Sample:
    """One 2D image and its annotations.

    * ``id``: unique within its dataset (the file stem, e.g. ``"ABD_001_100"``).
    * ``image``: ``(H, W)`` grey or ``(H, W, 3)`` RGB array, as stored (uint8 for IMed-361M/SA-Med2D-20M).
    * ``masks``: target name -> bool ``(H, W)`` mask, in the dataset's label order. Names are the raw
      label names of the source (resolve them with :class:`imis.data.vocabulary.Vocabulary`).
    * ``imask``: the "interactive masks" id map, int ``(H, W)`` (0 = pixel covered by no generated
      mask), or ``None`` when the dataset has none.
    * ``provenance``: where the sample came from (source files, case, axis, slice index, geometry,
      window, ...); JSON-serialisable values only.
    * ``split``: ``"train"``/``"test"`` when known; ``dataset``: dataset name; ``modality``: e.g. ``"ct"``.
    """

    id: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    imask: np.ndarray | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    dataset: str | None = None
    modality: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def mask_names(self) -> list[str]:
        return list(self.masks)

    def mask_stack(self, names: list[str] | None = None) -> np.ndarray:
        """Masks as one bool array ``(C, H, W)`` in ``names`` order (default: ``self.masks`` order).

        A name absent from ``masks`` gives an empty channel, so that a dataset-wide label list can be
        written for every sample.
        """
        names = list(self.masks) if names is None else list(names)
        out = np.zeros((len(names), *self.shape), dtype=bool)
        for i, name in enumerate(names):
            m = self.masks.get(name)
            if m is not None:
                out[i] = m
        return out

    def imask_ids(self) -> np.ndarray:
        """Sorted ids present in the imask, 0 (no mask) excluded; empty when there is no imask."""
        if self.imask is None:
            return np.zeros(0, dtype=np.int64)
        ids = np.unique(self.imask)
        return ids[ids != 0]
