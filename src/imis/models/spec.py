"""What the registry knows about a model, as data: one :class:`ModelSpec` per model, resolving its
architecture (how the network is built, which text tower it uses) and its weight layout (how a foreign
file is converted, and what that layout looks like) through one :class:`Architecture` and one
:class:`WeightLayout` spec each.

A loaded :class:`~imis.models.interactive.InteractiveModel` carries its spec, so saving, training and the
benchmark ask the model rather than a table. Adding a model is adding one ``ModelSpec`` to
:data:`imis.models.registry.REGISTRY`; a new network or file layout is one entry in :data:`ARCHITECTURES`
or :data:`LAYOUTS` (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from imis.errors import ModelNotAvailableError
from imis.models.preprocess import Preprocess
from imis.prompts.text import DEFAULT_TEMPLATE

MultimaskPolicy = Literal["single", "best_iou", "auto"]
#: the frozen text towers a network can use: ``clip`` is the network's own CLIP text encoder (IMIS-Net),
#: ``minilm`` the all-MiniLM-L6-v2 sentence encoder outside the network (imis-lite)
TextTower = Literal["clip", "minilm"]
TEXT_TEMPLATE = DEFAULT_TEMPLATE


@dataclass(frozen=True)
class Architecture:
    """How to build one kind of network.

    build: keyword arguments -> a ``PromptableSegmenter`` with random weights; layout: the foreign layout
    its published weight files come in (key of :data:`LAYOUTS`); text_tower: the frozen tower that turns
    its text prompts into features (None: the network takes no text); recipe: the registry model whose
    input recipe (preprocessing, text template) a newly trained network of this kind takes; small_kwargs:
    a small instance of it, for tests and smoke runs.
    """

    name: str
    build: Callable[..., torch.nn.Module]
    layout: str
    text_tower: TextTower | None = None
    recipe: str | None = None
    small_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, **kwargs: Any) -> torch.nn.Module:
        return self.build(**kwargs)


@dataclass(frozen=True)
class WeightLayout:
    """One foreign weight-file layout: a loaded file -> our internal state dict, and back."""

    name: str
    convert: Callable[[Any], dict[str, torch.Tensor]]
    to_foreign: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    description: str

    def __call__(self, obj: Any) -> dict[str, torch.Tensor]:
        return self.convert(obj)


def _build_litemedsam(**kw: Any) -> torch.nn.Module:
    from imis.models.build_litemedsam import build_litemedsam

    return build_litemedsam(**kw)


def _build_imis_lite(**kw: Any) -> torch.nn.Module:
    from imis.models.build_litemedsam import build_imis_lite

    return build_imis_lite(**kw)


def _build_sam_vit(**kw: Any) -> torch.nn.Module:
    from imis.models.build import build_sam_vit

    return build_sam_vit(**kw)


def _build_imis_net(**kw: Any) -> torch.nn.Module:
    from imis.models.build import build_imis_net

    return build_imis_net(**kw)


_SMALL_LITE = {"img_size": 64, "decoder_mlp_dim": 32, "iou_head_hidden_dim": 16}
_SMALL_VIT = {"img_size": 64, "window_size": 2, "prompt_dim": 32, "decoder_mlp_dim": 32}

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "litemedsam", _build_litemedsam, "litemedsam", recipe="litemedsam", small_kwargs=_SMALL_LITE
        ),
        Architecture(
            "imis-lite",
            _build_imis_lite,
            "litemedsam",
            text_tower="minilm",
            recipe="imis-lite",
            small_kwargs=_SMALL_LITE,
        ),
        Architecture(
            "sam-vit",
            _build_sam_vit,
            "sam",
            recipe="sam-vit-b",
            small_kwargs={
                **_SMALL_VIT,
                "encoder_embed_dim": 32,
                "encoder_depth": 2,
                "encoder_num_heads": 2,
                "encoder_global_attn_indexes": (1,),
                "decoder_num_heads": 2,
                "iou_head_hidden_dim": 16,
            },
        ),
        Architecture(
            "imis-net",
            _build_imis_net,
            "imis-net",
            text_tower="clip",
            recipe="imis-net-b",
            small_kwargs={
                **_SMALL_VIT,
                "embed_dim": 32,
                "depth": 2,
                "num_heads": 2,
                "global_attn_indexes": (1,),
                "neck_out": 32,
                "semantic_out_dim": 16,
                "decoder_num_heads": 2,
                "iou_head_hidden_dim": 16,
                "text_vocab_size": 49408,
                "text_hidden_size": 32,
                "text_intermediate_size": 64,
                "text_num_layers": 1,
                "text_num_heads": 2,
            },
        ),
    )
}


def _sam_in(obj: Any) -> dict[str, torch.Tensor]:
    from imis.models.formats import sam

    return sam.to_internal(sam.unwrap(obj))


def _sam_out(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from imis.models.formats import sam

    return sam.to_foreign(sd)


def _imis_in(obj: Any) -> dict[str, torch.Tensor]:
    from imis.models.formats import imis

    return imis.to_internal(obj)


def _imis_out(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from imis.models.formats import imis

    return imis.to_foreign(sd)


def _litemedsam_in(obj: Any) -> dict[str, torch.Tensor]:
    from imis.models.formats import litemedsam, sam

    return litemedsam.to_internal(sam.unwrap(obj))


def _litemedsam_out(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from imis.models.formats import litemedsam

    return litemedsam.to_foreign(sd)


LAYOUTS: dict[str, WeightLayout] = {
    w.name: w
    for w in (
        WeightLayout(
            "sam",
            _sam_in,
            _sam_out,
            "official Segment Anything layout (image_encoder.*, prompt_encoder.*, mask_decoder.*)",
        ),
        WeightLayout(
            "imis-net",
            _imis_in,
            _imis_out,
            "released IMIS-Net layout (image_encoder.sam_encoder.*, text_model.*, text_out_dim.*)",
        ),
        WeightLayout(
            "litemedsam",
            _litemedsam_in,
            _litemedsam_out,
            "LiteMedSAM layout (TinyViT image_encoder.*, SAM prompt_encoder.*/mask_decoder.*)",
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelNotAvailableError(
            f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})"
        ) from None


def get_layout(name: str) -> WeightLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ModelNotAvailableError(
            f"unknown weight layout {name!r} (known: {', '.join(LAYOUTS)})"
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    """Everything about one model: how to build it (``arch`` with ``arch_kwargs``), how a foreign weight
    file is converted (``layout``), its input recipe, how one mask is chosen (``multimask``), the prompts
    it takes, its licence, where its weights are, and how its text prompts are phrased and embedded."""

    name: str
    description: str
    arch: str  # key of ARCHITECTURES
    arch_kwargs: dict[str, Any]
    layout: str  # key of LAYOUTS: how foreign weight files are converted
    preprocess: Preprocess
    multimask: MultimaskPolicy
    prompt_types: frozenset[str]
    license: str
    embedded_weights: Callable[[], Path | None] | None = None  # None: the user passes --checkpoint
    text_template: str = TEXT_TEMPLATE
    extra: dict[str, Any] = field(default_factory=dict)
    #: None: the architecture's tower (a checkpoint trained without text has none)
    text_encoder: TextTower | None = None

    def weights_path(self) -> Path | None:
        return self.embedded_weights() if self.embedded_weights is not None else None

    @property
    def architecture(self) -> Architecture:
        return get_architecture(self.arch)

    @property
    def weight_layout(self) -> WeightLayout:
        return get_layout(self.layout)

    @property
    def layout_description(self) -> str:
        return self.weight_layout.description

    @property
    def text_tower(self) -> TextTower | None:
        """The frozen tower of this model's text prompts, or None when it takes none."""
        if "text" not in self.prompt_types:
            return None
        return self.text_encoder or self.architecture.text_tower

    def build(self, **overrides: Any) -> torch.nn.Module:
        """The network with random weights (``overrides`` replace ``arch_kwargs`` entries)."""
        return self.architecture.build(**{**self.arch_kwargs, **overrides})

    def convert(self, obj: Any) -> dict[str, torch.Tensor]:
        """A loaded foreign weight file -> our internal state dict."""
        return self.weight_layout.convert(obj)
