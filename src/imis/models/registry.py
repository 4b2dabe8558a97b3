"""The model registry: a name -> how to build it, where its weights are, how to load them, its recipe.

Adding a model is adding one `ModelSpec`. Weight files in a foreign layout are converted by the
`imis.models.formats` module of that layout; our own checkpoints (`save_checkpoint`) carry their
architecture and recipe, so they load without a registry entry.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imis.errors import CheckpointError, ModelNotAvailableError
from imis.models.interactive import InteractiveModel, MultimaskPolicy
from imis.models.preprocess import Preprocess

IMIS_FORMAT_TAG = "imis-checkpoint"
IMIS_FORMAT_VERSION = 1
TEXT_TEMPLATE = "A segmentation area of a {}."


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to turn a name (and maybe a user's weight file) into an InteractiveModel."""

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

    def weights_path(self) -> Path | None:
        return self.embedded_weights() if self.embedded_weights is not None else None


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


ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "litemedsam": _build_litemedsam,
    "imis-lite": _build_imis_lite,
    "sam-vit": _build_sam_vit,
    "imis-net": _build_imis_net,
}


def _convert_sam(obj: Any) -> dict[str, torch.Tensor]:
    from imis.models.formats import sam

    return sam.to_internal(sam.unwrap(obj))


def _convert_imis(obj: Any) -> dict[str, torch.Tensor]:
    from imis.models.formats import imis

    return imis.to_internal(obj)


def _convert_litemedsam(obj: Any) -> dict[str, torch.Tensor]:
    from imis.models.formats import litemedsam, sam

    return litemedsam.to_internal(sam.unwrap(obj))


LAYOUTS: dict[str, Callable[[Any], dict[str, torch.Tensor]]] = {
    "sam": _convert_sam,
    "imis-net": _convert_imis,
    "litemedsam": _convert_litemedsam,
}

LAYOUT_DESCRIPTIONS = {
    "sam": "official Segment Anything layout (image_encoder.*, prompt_encoder.*, mask_decoder.*)",
    "imis-net": "released IMIS-Net layout (image_encoder.sam_encoder.*, text_model.*, text_out_dim.*)",
    "litemedsam": "LiteMedSAM layout (TinyViT image_encoder.*, SAM prompt_encoder.*/mask_decoder.*)",
}


def _litemedsam_weights() -> Path | None:
    from imis.models.formats import litemedsam

    return litemedsam.locate_weights()


IMIS_LITE_WEIGHTS = Path(__file__).parent / "weights" / "imis_lite.pt"


def _imis_lite_weights() -> Path | None:
    # Since stage 8 the file holds the whole network (its fine-tuned TinyViT encoder too), so imis-lite
    # no longer needs LiteMedSAM's package; a partial checkpoint put in its place names its base, and
    # loading it then says when that base is missing.
    return IMIS_LITE_WEIGHTS if IMIS_LITE_WEIGHTS.is_file() else None


def default_model_name() -> str:
    """The model used when none is named: imis-lite when its weights are installed, else LiteMedSAM."""
    return "imis-lite" if _imis_lite_weights() is not None else "litemedsam"


_IMAGENET_1024_SQUARE_NEAREST = Preprocess(1024, "square", "nearest", "imagenet", False)

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="litemedsam",
            description="LiteMedSAM: TinyViT-5M encoder + SAM decoder, box-trained (embedded weights)",
            arch="litemedsam",
            arch_kwargs={},
            layout="litemedsam",
            preprocess=Preprocess(256, "longest_side", "bilinear", "minmax01", True),
            multimask="single",
            prompt_types=frozenset({"box", "point", "mask"}),
            license="Apache-2.0",
            embedded_weights=_litemedsam_weights,
        ),
        ModelSpec(
            name="imis-lite",
            description="imis-lite (ours): LiteMedSAM fine-tuned for clicks, boxes and text (MiniLM), "
            "encoder included, see models/weights/imis_lite.md",
            arch="imis-lite",
            arch_kwargs={},
            layout="litemedsam",
            preprocess=Preprocess(256, "longest_side", "bilinear", "minmax01", True),
            multimask="single",  # the shipped checkpoint says so too: trained with one output per prompt
            prompt_types=frozenset({"box", "point", "mask", "text"}),
            license="Apache-2.0",
            embedded_weights=_imis_lite_weights,
        ),
        ModelSpec(
            name="sam-vit-b",
            description="Segment Anything ViT-B (official checkpoint layout; pass --checkpoint)",
            arch="sam-vit",
            arch_kwargs={},
            layout="sam",
            preprocess=Preprocess(1024, "longest_side", "bilinear", "imagenet", False),
            multimask="auto",
            prompt_types=frozenset({"box", "point", "mask"}),
            license="Apache-2.0",
        ),
        ModelSpec(
            name="medsam-vit-b",
            description="MedSAM ViT-B (SAM layout, square 1024 min-max input; pass --checkpoint)",
            arch="sam-vit",
            arch_kwargs={},
            layout="sam",
            preprocess=Preprocess(1024, "square", "bicubic", "minmax01", False),
            multimask="single",
            prompt_types=frozenset({"box", "point", "mask"}),
            license="Apache-2.0",
        ),
        ModelSpec(
            name="imis-net-b",
            description="IMIS-Net ViT-B with CLIP text prompts (released layout; pass --checkpoint)",
            arch="imis-net",
            arch_kwargs={},
            layout="imis-net",
            preprocess=_IMAGENET_1024_SQUARE_NEAREST,
            multimask="best_iou",
            prompt_types=frozenset({"box", "point", "mask", "text"}),
            license="Apache-2.0 (IMIS-Bench); weights under their release terms",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        from imis.names import did_you_mean

        raise ModelNotAvailableError(
            f"unknown model {name!r} (known models: {', '.join(sorted(REGISTRY))}; see `imis models`)"
            f"{did_you_mean(name, REGISTRY)}"
        ) from None


def read_checkpoint(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        # weights_only keeps a malicious pickle from running code; our own format is plain containers.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None


def is_imis_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == IMIS_FORMAT_TAG


def _make_text_fn(
    net: torch.nn.Module, template: str, tower: str | None = None
) -> Callable[[str], torch.Tensor] | None:
    """str -> (1, D) text prompt embedding: the template filled with the target name, through the
    model's frozen text tower (its own CLIP tower, or the MiniLM sentence encoder for imis-lite) and
    its trained projection."""
    if getattr(net, "text_projection", None) is None:
        return None
    if tower == "minilm":
        return _minilm_text_fn(net, template)
    if getattr(net, "text_encoder", None) is None:
        return None
    from imis.data.vocabulary import Vocabulary
    from imis.models.tokenizer import CLIPTokenizer

    tokenizer = CLIPTokenizer()
    vocabulary = Vocabulary.builtin()

    def encode(text: str) -> torch.Tensor:
        ids = torch.tensor([tokenizer.encode(template.format(prompt_name(text, vocabulary)))])
        device = next(net.parameters()).device
        return net.encode_text(ids.to(device))

    return encode


def _minilm_text_fn(net: torch.nn.Module, template: str) -> Callable[[str], torch.Tensor]:
    from imis.data.vocabulary import Vocabulary
    from imis.models.minilm import load_minilm

    vocabulary = Vocabulary.builtin()
    loaded: list = []  # the sentence encoder is loaded on the first text prompt only

    def encode(text: str) -> torch.Tensor:
        if not loaded:
            loaded.append(load_minilm()[0])
        feats = loaded[0].embed_texts([template.format(prompt_name(text, vocabulary))])
        device = next(net.parameters()).device
        return net.project_text(feats.to(device))

    return encode


def prompt_name(text: str, vocabulary=None) -> str:
    """The target name as IMIS-Net's text prompts spell it.

    A dataset label key or a known synonym ('kidney_right', 'Right-kidney') becomes the vocabulary's
    display name ('right kidney'), as the released model was trained; free text is kept, only
    lower-cased with '_'/'-' as spaces (an unknown name is embedded, never refused).
    """
    if not text or not text.strip():
        from imis.errors import PromptError

        raise PromptError("text prompt is empty")
    if vocabulary is not None:
        target = vocabulary.resolve(text)
        if target.known:
            text = target.display
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def load_model(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> InteractiveModel:
    """Build a registry model (or one of our own checkpoints) with strictly loaded weights.

    name: a registry name; may be None when `checkpoint` is one of our own files.
    checkpoint: a weight file; required for models without embedded weights.
    """
    obj = read_checkpoint(Path(checkpoint)) if checkpoint is not None else None
    if obj is not None and is_imis_checkpoint(obj):
        return _load_own(obj, Path(checkpoint), name, device, dtype)
    if name is None:
        raise ModelNotAvailableError("no model name given and the checkpoint is not an imis checkpoint")
    spec = get_spec(name)
    if obj is None:
        path = spec.weights_path()
        if path is None:
            raise ModelNotAvailableError(
                f"model {name!r} has no embedded weights: pass --checkpoint FILE "
                f"({LAYOUT_DESCRIPTIONS[spec.layout]})"
            )
        obj = read_checkpoint(path)
        checkpoint = path
        if is_imis_checkpoint(obj):  # a model we trained ourselves (imis-lite) ships in our format
            return _load_own(obj, Path(path), spec.name, device, dtype)
    try:
        internal = LAYOUTS[spec.layout](obj)
        net = ARCHITECTURES[spec.arch](**spec.arch_kwargs)
        from imis.models.formats import load_strict

        load_strict(net, internal, f"{spec.layout}: {LAYOUT_DESCRIPTIONS[spec.layout]}")
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    return InteractiveModel(
        name=spec.name,
        net=net,
        preprocess=spec.preprocess,
        multimask=spec.multimask,
        prompt_types=spec.prompt_types,
        license=spec.license,
        text_fn=_make_text_fn(net, spec.text_template),
        device=device,
        dtype=dtype,
    )


def save_checkpoint(
    path: str | Path,
    model: InteractiveModel,
    arch: str,
    arch_kwargs: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    half: bool = False,
    only: tuple[str, ...] | None = None,
) -> None:
    """Write our own format: architecture, recipe, metadata and the state dict in one file, atomically.

    only: keep just these top-level submodules (e.g. the decoder of a model whose encoder is
    embedded elsewhere); `base` in metadata then names the model that supplies the rest.
    """
    sd = model.net.state_dict()
    if only is not None:
        sd = {k: v for k, v in sd.items() if k.split(".", 1)[0] in only}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    obj = {
        "format": IMIS_FORMAT_TAG,
        "version": IMIS_FORMAT_VERSION,
        "name": model.name,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "preprocess": dataclasses.asdict(model.preprocess),
        "multimask": model.multimask,
        "prompt_types": sorted(model.prompt_types),
        "license": model.license,
        "metadata": metadata or {},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in sd.items()},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_own(
    obj: dict[str, Any],
    path: Path,
    name: str | None,
    device: str | torch.device,
    dtype: torch.dtype | None,
) -> InteractiveModel:
    if obj.get("version") != IMIS_FORMAT_VERSION:
        raise CheckpointError(f"{path}: imis checkpoint version {obj.get('version')} is not supported")
    arch = obj.get("arch")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    net = ARCHITECTURES[arch](**obj.get("arch_kwargs", {}))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    base = obj.get("metadata", {}).get("base")
    if base:
        # A partial checkpoint: the base model's weights fill what the file does not carry.
        base_model = load_model(base)
        full = base_model.net.state_dict()
        full.update(sd)
        sd = full
    from imis.models.formats import load_strict

    load_strict(net, sd, f"imis checkpoint (arch {arch}, file {path})")
    return InteractiveModel(
        name=name or obj.get("name", path.stem),
        net=net,
        preprocess=Preprocess(**obj["preprocess"]),
        multimask=obj.get("multimask", "single"),
        prompt_types=frozenset(obj.get("prompt_types", ["box", "point", "mask"])),
        license=obj.get("license", "unknown"),
        text_fn=_make_text_fn(
            net,
            obj.get("metadata", {}).get("text_template", TEXT_TEMPLATE),
            obj.get("metadata", {}).get("text_encoder"),
        ),
        device=device,
        dtype=dtype,
    )


def registry_rows() -> list[dict[str, str]]:
    """One row per registry model for `imis models`."""
    rows = []
    for spec in REGISTRY.values():
        p = spec.preprocess
        weights = spec.weights_path()
        rows.append(
            {
                "name": spec.name,
                "prompts": ",".join(sorted(spec.prompt_types)),
                "input": f"{p.input_size} {p.resize.replace('_', '-')}",
                "intensity": p.intensity,
                "license": spec.license,
                "weights": str(weights) if weights else "pass --checkpoint",
                "description": spec.description,
            }
        )
    return rows
