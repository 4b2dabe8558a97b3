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

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
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


def _call(module: str, function: str, *args: Any, **kwargs: Any) -> Any:
    """``module.function(*args, **kwargs)``, imported at the call: the builders and the layout converters
    live in large modules that listing the registry never needs."""
    return getattr(importlib.import_module(module), function)(*args, **kwargs)


def _lazy(module: str, function: str) -> Callable[..., Any]:
    return partial(_call, module, function)


_build_litemedsam = _lazy("imis.models.build_litemedsam", "build_litemedsam")
_build_imis_lite = _lazy("imis.models.build_litemedsam", "build_imis_lite")
_build_sam_vit = _lazy("imis.models.build", "build_sam_vit")
_build_imis_net = _lazy("imis.models.build", "build_imis_net")
_build_sam2 = _lazy("imis.models.build_sam2", "build_sam2")


# The configuration of tests/models/fixtures/sam2_small.pt.gz: 96 px, Hiera stages 1/2/2/1.
_SMALL_SAM2 = {
    "size": None,
    "image_size": 96,
    "trunk": {
        "embed_dim": 8,
        "num_heads": 1,
        "stages": (1, 2, 2, 1),
        "global_att_blocks": (4,),
        "window_spec": (8, 4, 4, 2),
        "window_pos_embed_bkg_spatial_size": (4, 4),
    },
    "d_model": 32,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 4,
    "iou_head_hidden_dim": 32,
}

_SMALL_LITE = {"img_size": 64, "decoder_mlp_dim": 32, "iou_head_hidden_dim": 16}
_SMALL_VIT = {"img_size": 64, "window_size": 2, "prompt_dim": 32, "decoder_mlp_dim": 32}
_SMALL_SAM_VIT = {  # SAM's ViT small; SAM-Med2D's is the same with its adapters
    **_SMALL_VIT,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": (1,),
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 16,
}

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
            small_kwargs=_SMALL_SAM_VIT,
        ),
        Architecture("sam2", _build_sam2, "sam2", recipe="sam2-hiera-b+", small_kwargs=_SMALL_SAM2),
        # SAM ViT with SAM-Med2D's adapters: its own layout (the adapters are renamed)
        Architecture(
            "sam-med2d",
            _build_sam_vit,
            "sam-med2d",
            recipe="sam-med2d-b",
            small_kwargs={**_SMALL_SAM_VIT, "encoder_adapter": True},
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


_FORMATS = "imis.models.formats."


def _to_internal(module: str, unwrap: str | None, obj: Any) -> dict[str, torch.Tensor]:
    """A loaded file -> our state dict by ``formats.<module>``; ``unwrap``: the format module whose
    ``unwrap`` first takes the state dict out of the file's checkpoint wrapper (None: the file is it)."""
    if unwrap is not None:
        obj = _call(_FORMATS + unwrap, "unwrap", obj)
    return _call(_FORMATS + module, "to_internal", obj)


def _converters(module: str, unwrap: str | None) -> tuple[Callable[[Any], dict], Callable[[dict], dict]]:
    """(file -> internal, internal -> file) of the format module ``module``."""
    return partial(_to_internal, module, unwrap), _lazy(_FORMATS + module, "to_foreign")


LAYOUTS: dict[str, WeightLayout] = {
    w.name: w
    for w in (
        WeightLayout(
            "sam",
            *_converters("sam", "sam"),
            "official Segment Anything layout (image_encoder.*, prompt_encoder.*, mask_decoder.*)",
        ),
        WeightLayout(
            "imis-net",
            *_converters("imis", None),
            "released IMIS-Net layout (image_encoder.sam_encoder.*, text_model.*, text_out_dim.*)",
        ),
        WeightLayout(
            "litemedsam",
            *_converters("litemedsam", "sam"),
            "LiteMedSAM layout (TinyViT image_encoder.*, SAM prompt_encoder.*/mask_decoder.*)",
        ),
        WeightLayout(
            "sam2",
            *_converters("sam2", "sam2"),
            "released SAM 2 / 2.1 layout ({'model': ...} with image_encoder.trunk.*, image_encoder.neck.*, "
            "sam_prompt_encoder.*, sam_mask_decoder.*, no_mem_embed; video memory parts ignored)",
        ),
        WeightLayout(
            "sam-med2d",
            *_converters("sam_med2d", "sam_med2d"),
            "released SAM-Med2D layout (SAM ViT-B at 256 px with image_encoder.blocks.*.Adapter.*)",
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


#: The prompts of every SAM-family model; text-prompted ones add "text".
VISUAL_PROMPTS = frozenset({"box", "point", "mask"})


@dataclass(frozen=True)
class ModelSpec:
    """Everything about one model: how to build it (``arch`` with ``arch_kwargs``), how a foreign weight
    file is converted (``layout``), its input recipe, how one mask is chosen (``multimask``), the prompts
    it takes, its licence, where its weights are, and how its text prompts are phrased and embedded."""

    name: str
    description: str
    arch: str  # key of ARCHITECTURES
    layout: str  # key of LAYOUTS: how foreign weight files are converted
    preprocess: Preprocess
    multimask: MultimaskPolicy
    license: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    prompt_types: frozenset[str] = VISUAL_PROMPTS
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
