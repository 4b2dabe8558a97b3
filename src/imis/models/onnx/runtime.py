"""The ONNX Runtime backend: an InteractiveModel whose encoder and decoder are the exported graphs.

Same API as :class:`imis.models.interactive.InteractiveModel` (``encode``, ``decode``,
``text_embedding``, ``check_supported``, the recipe attributes), same prompts in native pixels, same
masks. The two ONNX Runtime sessions are built once, with as many intra-op threads as this process
may use; text prompts go through the torch model's text tower (a callable handed in by the loader).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from imis.errors import CheckpointError
from imis.models.interactive import (
    Embedding,
    InteractiveModel,
    MultimaskPolicy,
    Prediction,
    PromptSpec,
    check_decodable,
    check_text_support,
)
from imis.models.onnx.graphs import LABEL_BOX_BR, LABEL_BOX_TL, LABEL_PAD, LABEL_TEXT
from imis.models.onnx.manifest import META_MODEL, META_ROLE, META_WEIGHTS, read_manifest
from imis.models.preprocess import Preprocess, logits_to_native, prepare_image

__all__ = ["OnnxInteractiveModel", "load_onnx_model", "machine_threads", "session_options"]


def machine_threads() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or machine_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    return so


def _open_session(path: Path, expected: dict[str, str], threads: int | None):
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for unreadable / invalid files
        raise CheckpointError(f"{path}: not a loadable ONNX graph ({str(exc).splitlines()[0]})") from None
    meta = sess.get_modelmeta().custom_metadata_map
    for key, want in expected.items():
        got = meta.get(key)
        if got != want:
            what = {META_MODEL: "model", META_ROLE: "role", META_WEIGHTS: "weights"}[key]
            raise CheckpointError(
                f"{path}: this ONNX graph's {what} is {got!r}, the manifest says {want!r} "
                "(a file of another model or another export; re-export with `imis export`)"
            )
    return sess


class OnnxInteractiveModel:
    """An exported model run by ONNX Runtime, used exactly like an InteractiveModel."""

    backend = "onnx"

    def __init__(
        self,
        folder: Path,
        manifest: dict,
        text_fn: Callable[[str], torch.Tensor] | None = None,
        threads: int | None = None,
        int8: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.name = manifest["model"]
        self.preprocess = Preprocess(**_preprocess_fields(manifest["preprocess"]))
        self.multimask = manifest["multimask"]
        self.prompt_types = frozenset(manifest["prompt_types"])
        self.license = manifest["license"]
        self.spec = None  # an export carries its recipe in its manifest, not a registry spec
        self.device = torch.device("cpu")
        self.dtype = None
        self.precision = "int8" if int8 else "fp32"
        self._text_fn = text_fn
        self._text_cache: dict[str, np.ndarray] = {}
        files = manifest["files"]
        enc_file = files.get("encoder_int8" if int8 else "encoder")
        if int8 and enc_file is None:
            raise CheckpointError(
                f"{self.folder}: this export has no int8 encoder (export with --quantize int8)"
            )
        ident = {META_MODEL: self.name, META_WEIGHTS: manifest["weights_sha256"]}
        self.encoder = None  # a decoder-only export (benchmarks of the click path) has none
        if enc_file is not None:
            self.encoder = _open_session(self.folder / enc_file, {**ident, META_ROLE: "encoder"}, threads)
        self.decoder = _open_session(self.folder / files["decoder"], {**ident, META_ROLE: "decoder"}, threads)
        self._dec_inputs = {i.name for i in self.decoder.get_inputs()}
        self._mask_shape = tuple(manifest["mask_input_shape"])
        self._no_mask = np.zeros(self._mask_shape, np.float32)
        self._text_dim = manifest.get("text_dim")

    def __repr__(self) -> str:
        return f"OnnxInteractiveModel({self.name!r}, {self.folder}, {self.precision})"

    def encode(self, image: np.ndarray, name: str = "image") -> Embedding:
        if self.encoder is None:
            raise CheckpointError(f"{self.folder}: this export holds the decoder only (no encoder.onnx)")
        x, frame = prepare_image(image, self.preprocess, name)
        (feats,) = self.encoder.run(None, {"image": x.numpy()})
        return Embedding(torch.from_numpy(feats), frame)

    def text_embedding(self, text: str) -> np.ndarray:
        check_text_support(self.name, self.prompt_types, self._text_fn)
        if text not in self._text_cache:
            with torch.inference_mode():
                vec = self._text_fn(text).float().cpu().numpy().reshape(1, -1)
            self._text_cache[text] = np.ascontiguousarray(vec, dtype=np.float32)
        return self._text_cache[text]

    def check_supported(self, prompts: PromptSpec) -> None:
        check_decodable(self.name, self.prompt_types, prompts)

    def decode(
        self,
        embedding: Embedding,
        prompts: PromptSpec,
        threshold: float = 0.0,
        multimask: MultimaskPolicy | None = None,
    ) -> Prediction:
        """Decode one object from prompts in native pixel coordinates (as InteractiveModel.decode;
        ``multimask``: this call's mask choice instead of the model's policy)."""
        self.check_supported(prompts)
        coords, labels = prompt_tokens(prompts, embedding.frame)
        feeds = {
            "image_embeddings": embedding.features.numpy(),
            "point_coords": coords[None],
            "point_labels": labels[None],
            "mask_input": self._no_mask,
            "has_mask_input": np.zeros(1, np.float32),
        }
        if prompts.mask_logits is not None:
            feeds["mask_input"] = np.ascontiguousarray(prompts.mask_logits.float().numpy(), np.float32)
            feeds["has_mask_input"] = np.ones(1, np.float32)
        if "text_embedding" in self._dec_inputs:
            text = prompts.text
            feeds["text_embedding"] = (
                self.text_embedding(text) if text is not None else np.zeros((1, self._text_dim), np.float32)
            )
        low_res, iou = self.decoder.run(None, feeds)
        k = (
            1 + int(np.argmax(iou[0, 1:]))
            if InteractiveModel._use_multimask(prompts, multimask or self.multimask)
            else 0
        )
        low = torch.from_numpy(low_res[:, k : k + 1])
        logits = logits_to_native(low, embedding.frame)[0, 0].numpy()
        return Prediction(
            mask=logits > threshold, logits=logits, low_res_logits=low, quality=float(iou[0, k])
        )


def prompt_tokens(prompts: PromptSpec, frame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) float32 coordinates and (N,) float32 labels of the decoder graph's token list."""
    coords, labels = [], []
    if prompts.points is not None and len(prompts.points):
        coords.append(frame.to_input(np.asarray(prompts.points, dtype=np.float64).reshape(-1, 2)))
        labels.append(np.asarray(prompts.labels, dtype=np.float32).reshape(-1))
        if prompts.box is None:
            coords.append(np.zeros((1, 2), np.float32))
            labels.append(np.full(1, LABEL_PAD, np.float32))
    if prompts.box is not None:
        coords.append(frame.to_input(np.asarray(prompts.box, dtype=np.float64).reshape(2, 2)))
        labels.append(np.array([LABEL_BOX_TL, LABEL_BOX_BR], np.float32))
    if prompts.text is not None:
        coords.append(np.zeros((1, 2), np.float32))
        labels.append(np.full(1, LABEL_TEXT, np.float32))
    return np.concatenate(coords).astype(np.float32), np.concatenate(labels).astype(np.float32)


def _preprocess_fields(recipe: dict) -> dict:
    keys = ("input_size", "resize", "interpolation", "intensity", "minmax_before_resize")
    return {k: recipe[k] for k in keys}


def load_onnx_model(
    path: str | Path,
    expected_name: str | None = None,
    text_fn: Callable[[str], torch.Tensor] | None = None,
    threads: int | None = None,
    int8: bool = False,
) -> OnnxInteractiveModel:
    """Open an export folder (or its manifest / one of its .onnx files) for ``expected_name``."""
    manifest, folder = read_manifest(path)
    if expected_name is not None and manifest["model"] != expected_name:
        raise CheckpointError(
            f"{path}: an ONNX export of model {manifest['model']!r}, not {expected_name!r} "
            f"(pass --model {manifest['model']}, or export {expected_name} with `imis export`)"
        )
    return OnnxInteractiveModel(folder, manifest, text_fn=text_fn, threads=threads, int8=int8)
