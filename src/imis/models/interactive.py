"""A loaded model with its preprocessing: encode an image once, then decode prompts at native coordinates.

This is the boundary between the networks (`PromptableSegmenter`, network-input coordinates, tensors)
and everything else (native pixel coordinates, numpy arrays). The Session, the benchmark and the app
only talk to :class:`InteractiveModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from imis.errors import PromptError
from imis.models.fast_decode import ImageSideCache, decode_one, image_side, supports_fast_decode
from imis.models.preprocess import Frame, Preprocess, logits_to_native, prepare_image
from imis.models.spec import ModelSpec, MultimaskPolicy

__all__ = [
    "Embedding",
    "InteractiveModel",
    "MultimaskPolicy",
    "Prediction",
    "PromptSpec",
    "PromptableModel",
    "check_prompt_support",
]


@dataclass
class Embedding:
    """The cached result of the image encoder for one image: features (1, C, h, w) and its frame.

    SAM 2's features are a tuple: the (1, C, h, w) embedding and its two high-resolution skip maps.
    """

    features: torch.Tensor | tuple[torch.Tensor, ...]
    frame: Frame


@dataclass
class Prediction:
    """One decoded mask.

    mask: bool (H, W) at native resolution; logits: float32 (H, W) native logits; low_res_logits:
    (1, 1, h, w) logits in the network's mask-prompt frame, to feed back as the next mask prompt;
    quality: the model's predicted IoU of the selected mask.
    """

    mask: np.ndarray
    logits: np.ndarray
    low_res_logits: torch.Tensor
    quality: float


@dataclass(frozen=True)
class PromptSpec:
    """Normalised prompts, in native pixel coordinates."""

    points: np.ndarray | None = None  # (N, 2) float x, y
    labels: np.ndarray | None = None  # (N,) int 1 positive / 0 negative
    box: np.ndarray | None = None  # (4,) x0, y0, x1, y1
    mask_logits: torch.Tensor | None = None  # (1, 1, h, w) previous low-res logits
    text: str | None = None


@runtime_checkable
class PromptableModel(Protocol):
    """What the Session, the benchmark runner and the baselines need of a model: its name, the prompt
    types it takes, ``encode`` once per image and ``decode`` per prompt set. ``multimask`` chooses, for
    one call, how one mask is picked among the decoder's outputs (None: the model's own policy); a model
    with a single output ignores it. :class:`InteractiveModel` and the baselines implement it."""

    name: str
    prompt_types: frozenset[str]

    def encode(self, image: np.ndarray, name: str = "image") -> object: ...

    def decode(
        self,
        embedding: object,
        prompts: PromptSpec,
        threshold: float = 0.0,
        multimask: MultimaskPolicy | None = None,
    ) -> Prediction: ...


def requested_prompt_types(prompts: PromptSpec) -> set[str]:
    """The prompt types a PromptSpec uses: point, box, text, mask."""
    wanted = set()
    if prompts.points is not None and len(prompts.points):
        wanted.add("point")
    if prompts.box is not None:
        wanted.add("box")
    if prompts.text is not None:
        wanted.add("text")
    if prompts.mask_logits is not None:
        wanted.add("mask")
    return wanted


def check_prompt_support(name: str, prompt_types: frozenset[str], prompts: PromptSpec) -> set[str]:
    """Raise PromptError naming the prompt types a model does not take; return the types used."""
    wanted = requested_prompt_types(prompts)
    missing = wanted - set(prompt_types)
    if missing:
        raise PromptError(
            f"model {name!r} does not support {'/'.join(sorted(missing))} prompts "
            f"(it takes: {', '.join(sorted(prompt_types))})"
        )
    return wanted


def check_decodable(name: str, prompt_types: frozenset[str], prompts: PromptSpec) -> None:
    """:func:`check_prompt_support`, and at least a click, a box or a text: a previous mask alone names
    no object. What every model's ``check_supported`` asks (PyTorch and ONNX Runtime alike)."""
    if not check_prompt_support(name, prompt_types, prompts) - {"mask"}:
        raise PromptError("no prompt given: pass at least a click, a box or a text")


def check_text_support(name: str, prompt_types: frozenset[str], text_fn: Callable | None) -> None:
    """Raise PromptError unless the model takes text and has the text encoder to embed it."""
    if "text" not in prompt_types or text_fn is None:
        raise PromptError(
            f"model {name!r} does not take text prompts (it takes: {', '.join(sorted(prompt_types))})"
        )


def fast_bf16_available(device: str | torch.device) -> bool:
    """Whether bfloat16 autocast is a speed-up here: a CUDA GPU with bf16, or a CPU with AMX / AVX512-BF16.

    Elsewhere bf16 is emulated and slower than float32 (3.2x on an AMD Zen 3 CPU), so it is not used.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(c()) for c in checks if c is not None)


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype | None:
    """'fp32' -> None (float32), 'bf16' -> torch.bfloat16, 'auto' -> bf16 only where it is fast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if fast_bf16_available(device) else None
    raise ValueError(f"precision must be fp32, bf16 or auto, not {precision!r}")


class InteractiveModel:
    """A network plus the recipe it was trained with.

    net: a `PromptableSegmenter`; preprocess: its input recipe; multimask: how one mask is chosen
    ("single": the single-mask token, as LiteMedSAM/MedSAM are used; "best_iou": the best of the
    three multimask outputs, as IMIS-Net always does; "auto": SAM's rule, multimask for a lone click);
    text_fn: str -> (1, D) text embedding, for models that take text; spec: the registry spec it was
    loaded from (saving, training and the benchmark ask it; see :mod:`imis.models.spec`).
    """

    def __init__(
        self,
        name: str,
        net: torch.nn.Module,
        preprocess: Preprocess,
        multimask: MultimaskPolicy,
        prompt_types: frozenset[str],
        license: str,
        text_fn: Callable[[str], torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.net = net.eval().to(device)
        self.preprocess = preprocess
        self.multimask = multimask
        self.prompt_types = prompt_types
        self.license = license
        self._text_fn = text_fn
        self.device = torch.device(device)
        # bfloat16 autocast for the encoder where the CPU/GPU has fast bf16; None keeps float32.
        self.dtype = dtype
        self._text_cache: dict[str, torch.Tensor] = {}
        # The decoder's image side for the embeddings clicked last (see fast_decode); None sends
        # every decode through net.decode.
        self.image_sides = ImageSideCache() if supports_fast_decode(self.net) else None

    def __repr__(self) -> str:
        return f"InteractiveModel({self.name!r}, prompts={sorted(self.prompt_types)})"

    @torch.inference_mode()
    def encode(
        self, image: np.ndarray, name: str = "image", value_range: tuple[float, float] | None = None
    ) -> Embedding:
        """value_range: intensities normalised to 0/1 instead of the image's extremes (see prepare_image)."""
        x, frame = prepare_image(image, self.preprocess, name, value_range)
        return Embedding(self._run_encoder(x), frame)

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray], name: str = "image") -> list[Embedding]:
        """Encode several images in one forward pass (the slices of a volume, for propagation)."""
        prepared = [prepare_image(im, self.preprocess, name) for im in images]
        feats = self._run_encoder(torch.cat([x for x, _ in prepared]))
        # clone: a slice of the batch would keep the whole batch alive in an embedding cache.
        if isinstance(feats, tuple):
            return [
                Embedding(tuple(t[i : i + 1].clone() for t in feats), f) for i, (_, f) in enumerate(prepared)
            ]
        return [Embedding(feats[i : i + 1].clone(), f) for i, (_, f) in enumerate(prepared)]

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.dtype is not None:
            with torch.autocast(self.device.type, dtype=self.dtype):
                feats = self.net.encode_image(x)
            # SAM 2's encoder returns a tuple (high-res features and the embedding)
            return tuple(f.float() for f in feats) if isinstance(feats, tuple) else feats.float()
        return self.net.encode_image(x)

    def text_embedding(self, text: str) -> torch.Tensor:
        check_text_support(self.name, self.prompt_types, self._text_fn)
        if text not in self._text_cache:
            with torch.inference_mode():
                self._text_cache[text] = self._text_fn(text).to(self.device)
        return self._text_cache[text]

    def check_supported(self, prompts: PromptSpec) -> None:
        check_decodable(self.name, self.prompt_types, prompts)

    @torch.inference_mode()
    def decode(
        self,
        embedding: Embedding,
        prompts: PromptSpec,
        threshold: float = 0.0,
        multimask: MultimaskPolicy | None = None,
    ) -> Prediction:
        """Decode one object from prompts in native pixel coordinates; ``multimask``: this call's mask
        choice instead of the model's policy (the imis-paper protocol always takes the best of the
        multimask outputs by predicted IoU)."""
        self.check_supported(prompts)
        frame = embedding.frame
        points = None
        if prompts.points is not None and len(prompts.points):
            coords = torch.from_numpy(frame.to_input(prompts.points))[None].to(self.device)
            labels = torch.as_tensor(np.asarray(prompts.labels), dtype=torch.int64)[None].to(self.device)
            points = (coords, labels)
        boxes = None
        if prompts.box is not None:
            corners = frame.to_input(np.asarray(prompts.box, dtype=np.float64).reshape(2, 2))
            boxes = torch.from_numpy(corners.reshape(1, 4)).to(self.device)
        text = self.text_embedding(prompts.text) if prompts.text is not None else None
        mask_in = prompts.mask_logits.to(self.device) if prompts.mask_logits is not None else None
        multimask = self._use_multimask(prompts, multimask or self.multimask)
        if self.image_sides is not None and text is None:
            low_res, iou = self._decode_split(embedding, points, boxes, mask_in, multimask)
        else:
            out = self.net.decode(
                embedding.features,
                points=points,
                boxes=boxes,
                masks=mask_in,
                text_embedding=text,
                multimask_output=multimask,
            )
            low_res, iou = out["low_res_masks"], out["iou_pred"]
            if low_res.shape[1] > 1:
                best = int(torch.argmax(iou[0]))
                low_res, iou = low_res[:, best : best + 1], iou[:, best : best + 1]
        native = logits_to_native(low_res.float(), frame)[0, 0]
        logits = native.cpu().numpy()
        return Prediction(
            mask=logits > threshold,
            logits=logits,
            low_res_logits=low_res.detach().float().cpu(),
            quality=float(iou[0, 0]),
        )

    def _decode_split(
        self, embedding: Embedding, points, boxes, mask_in, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clicks/box (and a mask prompt), no text: the decoder split into its image side, cached per
        embedding unless a mask prompt changes it, and the prompt side (see `imis.models.fast_decode`;
        same masks as ``net.decode`` to float rounding)."""
        sparse, dense = self.net.prompt_encoder(points, boxes, mask_in, None)
        features = embedding.features
        if mask_in is None:
            side = self.image_sides.get(self.net, features)
        else:
            side = image_side(self.net, features, dense)
        return decode_one(self.net, side, sparse.to(features.dtype), multimask)

    @staticmethod
    def _use_multimask(prompts: PromptSpec, policy: MultimaskPolicy) -> bool:
        if policy == "best_iou":
            return True
        if policy == "single":
            return False
        lone_click = (
            prompts.points is not None
            and len(prompts.points) == 1
            and prompts.box is None
            and prompts.mask_logits is None
        )
        return lone_click
