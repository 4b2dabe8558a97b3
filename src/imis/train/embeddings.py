"""An on-disk cache of image embeddings for frozen-encoder training.

With the image encoder frozen, every image is encoded once: its embedding (C, h, w) is stored as fp16
``<cache>/<encoder id>/<image key>.npy`` (written atomically, so an interrupted run leaves no half file)
and kept in memory as fp16 for the rest of the run. The encoder id names the weights and the
preprocessing, so one cache folder serves several runs and models safely.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from imis.models.preprocess import Preprocess

if TYPE_CHECKING:
    from imis.train.data import TrainImage

__all__ = ["EmbeddingStore", "encoder_id"]


def encoder_id(encoder: torch.nn.Module, preprocess: Preprocess, name: str) -> str:
    """A short id of (weights, preprocessing): a digest of a few parameter tensors and the recipe."""
    h = hashlib.sha1()
    h.update(name.encode())
    h.update(json.dumps(preprocess.__dict__, sort_keys=True).encode())
    params = list(encoder.state_dict().items())
    for k, v in params[:4] + params[-4:]:
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
    return f"{name}-{h.hexdigest()[:12]}"


class EmbeddingStore:
    """image key -> fp16 embedding (C, h, w), computed by ``encoder`` on first use."""

    def __init__(
        self, folder: str | Path, encoder: torch.nn.Module, preprocess: Preprocess, enc_id: str, device
    ) -> None:
        self.folder = Path(folder) / enc_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.preprocess = preprocess
        self.device = torch.device(device)
        self._mem: dict[str, torch.Tensor] = {}
        self.encoded = 0
        self.loaded = 0

    def __contains__(self, key: str) -> bool:
        return key in self._mem or (self.folder / f"{key}.npy").is_file()

    def get(self, img: TrainImage) -> torch.Tensor:
        """The fp16 (C, h, w) embedding of a training image or variant (cache key ``img.key``)."""
        key = img.key
        if key in self._mem:
            return self._mem[key]
        path = self.folder / f"{key}.npy"
        emb = None
        if path.is_file():
            try:
                emb = torch.from_numpy(np.load(path, allow_pickle=False))
                self.loaded += 1
            except (OSError, ValueError):
                emb = None  # a damaged cache file is recomputed
        if emb is None:
            emb = self._encode(img)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                np.save(f, emb.numpy())
            os.replace(tmp, path)
            self.encoded += 1
        self._mem[key] = emb
        return emb

    @torch.inference_mode()
    def _encode(self, img: TrainImage) -> torch.Tensor:
        from imis.train.data import train_input

        x = train_input(img, self.preprocess)
        feats = self.encoder(x.to(self.device))
        return feats[0].to("cpu", torch.float16).contiguous()
