"""The model an automask worker runs: --model/--checkpoint on --backend at --precision.

The click grid is decoded by :mod:`imis.models.grid_decode`, which needs the PyTorch decoder. On the
ONNX backend the image is therefore encoded by ONNX Runtime (the costly, once-per-image part that
the backend speeds up) and the grid decoded by the same model's PyTorch decoder (`EncoderSplit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EncoderSplit", "load_automask_model", "runtime_tag"]


@dataclass
class EncoderSplit:
    """An ONNX model's encoder with a PyTorch model's decoder network (same weights)."""

    encoder: object  # OnnxInteractiveModel
    torch_model: object  # InteractiveModel

    def encode(self, image: np.ndarray, name: str = "image"):
        return self.encoder.encode(image, name)

    def __getattr__(self, attr: str):
        # net, multimask, device, name, preprocess: the PyTorch model's (only called for missing attrs)
        return getattr(self.torch_model, attr)


def runtime_tag(name: str | None, backend: str, precision: str, device: str) -> str:
    """'torch:bf16', 'onnx:int8'...: the resolved runtime, part of a run's fingerprint (it changes the
    embedding by float rounding, so imasks of two runtimes are not byte-identical)."""
    import torch

    from imis.models.onnx.backend import INT8, resolve_runtime

    chosen, dtype = resolve_runtime(backend, precision, device, name)
    if dtype is INT8:
        return f"{chosen}:int8"
    return f"{chosen}:{'bf16' if dtype == torch.bfloat16 else 'fp32'}"


def load_automask_model(
    name: str, checkpoint: str | None, device: str, backend: str = "torch", precision: str = "fp32"
):
    """Load ``name`` for automask (see the module docstring); bad options raise an InputError."""
    from imis.models import load_model
    from imis.models.onnx.backend import resolve_runtime

    chosen, dtype = resolve_runtime(backend, precision, device, name)
    if chosen == "torch":
        return load_model(name, checkpoint=checkpoint, device=device, dtype=dtype)
    encoder = load_model(name, checkpoint=checkpoint, device=device, dtype=dtype, backend="onnx")
    return EncoderSplit(encoder, load_model(name, checkpoint=checkpoint, device="cpu"))
