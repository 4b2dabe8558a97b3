"""The model registry: a name -> its :class:`~imis.models.spec.ModelSpec` (how to build it, where its
weights are, how to load them, its recipe), and loading and saving models through their specs.

Adding a model is adding one `ModelSpec` to :data:`REGISTRY`. Weight files in a foreign layout are
converted by the spec's :class:`~imis.models.spec.WeightLayout`; our own checkpoints (`save_checkpoint`)
carry their architecture and recipe, so they load without a registry entry (their spec is rebuilt from
the file). A loaded model carries its spec (``model.spec``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from imis.errors import CheckpointError, ModelNotAvailableError
from imis.models.interactive import InteractiveModel
from imis.models.preprocess import Preprocess
from imis.models.spec import (
    ARCHITECTURES,
    LAYOUTS,
    TEXT_TEMPLATE,
    VISUAL_PROMPTS,
    Architecture,
    ModelSpec,
    WeightLayout,
    get_architecture,
)
from imis.models.text.towers import text_function

__all__ = [
    "ARCHITECTURES",
    "LAYOUTS",
    "REGISTRY",
    "TEXT_TEMPLATE",
    "Architecture",
    "ModelSpec",
    "WeightLayout",
    "default_model_name",
    "get_spec",
    "load_model",
    "model_from_spec",
    "registry_rows",
    "save_checkpoint",
    "spec_for_architecture",
]

IMIS_FORMAT_TAG = "imis-checkpoint"
IMIS_FORMAT_VERSION = 1


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


_LITEMEDSAM_PREPROCESS = Preprocess(256, "longest_side", "bilinear", "minmax01", True)
_IMAGENET_1024_SQUARE_NEAREST = Preprocess(1024, "square", "nearest", "imagenet", False)
_SAM2_PREPROCESS = Preprocess(1024, "square", "bilinear_antialias", "imagenet", False)
_SAM2_SIZES = {"t": "Hiera-T", "s": "Hiera-S", "b+": "Hiera-B+", "l": "Hiera-L"}


def _sam2_spec(size: str) -> ModelSpec:
    return ModelSpec(
        name=f"sam2-hiera-{size}",
        description=f"SAM 2 {_SAM2_SIZES[size]} on single images (released SAM 2 / 2.1 layout; pass --checkpoint)",
        arch="sam2",
        arch_kwargs={"size": size},
        layout="sam2",
        preprocess=_SAM2_PREPROCESS,
        multimask="auto",  # SAM 2's predictor: three masks for a lone click, else one (stability rule)
        license="Apache-2.0",
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="litemedsam",
            description="LiteMedSAM: TinyViT-5M encoder + SAM decoder, box-trained (embedded weights)",
            arch="litemedsam",
            layout="litemedsam",
            preprocess=_LITEMEDSAM_PREPROCESS,
            multimask="single",
            license="Apache-2.0",
            embedded_weights=_litemedsam_weights,
        ),
        ModelSpec(
            name="imis-lite",
            description="imis-lite (ours): LiteMedSAM fine-tuned for clicks, boxes and text (MiniLM), "
            "encoder included, see models/weights/imis_lite.md",
            arch="imis-lite",
            layout="litemedsam",
            preprocess=_LITEMEDSAM_PREPROCESS,
            multimask="single",  # the shipped checkpoint says so too: trained with one output per prompt
            prompt_types=VISUAL_PROMPTS | {"text"},
            license="Apache-2.0",
            embedded_weights=_imis_lite_weights,
        ),
        ModelSpec(
            name="sam-vit-b",
            description="Segment Anything ViT-B (official checkpoint layout; pass --checkpoint)",
            arch="sam-vit",
            layout="sam",
            preprocess=Preprocess(1024, "longest_side", "bilinear", "imagenet", False),
            multimask="auto",
            license="Apache-2.0",
        ),
        ModelSpec(
            name="medsam-vit-b",
            description="MedSAM ViT-B (SAM layout, square 1024 min-max input; pass --checkpoint)",
            arch="sam-vit",
            layout="sam",
            preprocess=Preprocess(1024, "square", "bicubic", "minmax01", False),
            multimask="single",
            license="Apache-2.0",
        ),
        ModelSpec(
            name="imis-net-b",
            description="IMIS-Net ViT-B with CLIP text prompts (released layout; pass --checkpoint)",
            arch="imis-net",
            layout="imis-net",
            preprocess=_IMAGENET_1024_SQUARE_NEAREST,
            multimask="best_iou",
            prompt_types=VISUAL_PROMPTS | {"text"},
            license="Apache-2.0 (IMIS-Bench); weights under their release terms",
        ),
        *(_sam2_spec(size) for size in _SAM2_SIZES),
        ModelSpec(
            name="sam-med2d-b",
            description="SAM-Med2D ViT-B with adapters, 256 px (released layout; pass --checkpoint)",
            arch="sam-med2d",
            arch_kwargs={"img_size": 256, "encoder_adapter": True},
            layout="sam-med2d",
            # its predictor: ImageNet mean/std on 0-255 RGB, then a square nearest resize to 256
            preprocess=Preprocess(256, "square", "nearest", "imagenet", False),
            multimask="best_iou",  # its predictor and test.py take the best of three by predicted IoU
            license="Apache-2.0",
        ),
        ModelSpec(
            name="huang2024-vit-b",
            description="Huang et al. (MedIA 2024) SAM ViT-B fine-tuned on boxes (SAM layout; pass --checkpoint)",
            arch="sam-vit",
            layout="sam",
            preprocess=Preprocess(1024, "longest_side", "bilinear", "percentile_imagenet", False),
            # their test takes the best of three masks against the ground truth, which needs the answer;
            # the best by predicted IoU is the nearest choice without it
            multimask="best_iou",
            prompt_types=frozenset({"box", "mask"}),  # trained and evaluated with boxes only
            license="unspecified (no license in the release repository; SAM weights Apache-2.0)",
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


def spec_for_architecture(arch: str) -> ModelSpec:
    """The registry model whose recipe (preprocessing, text template, licence) a newly built or trained
    network of architecture ``arch`` takes."""
    a = get_architecture(arch)
    if a.recipe is None:
        raise ModelNotAvailableError(f"architecture {arch!r} names no registry model for its recipe")
    return get_spec(a.recipe)


def read_checkpoint(path: Path, tolerant: bool = False) -> Any:
    """A user's weight file, loaded with weights_only=True (a malicious pickle cannot run code).

    tolerant: for layouts whose releases also pickle Python objects beside the weights (SAM-Med2D
    saves its optimizer): where weights_only refuses the file, read it again with every non-tensor
    object replaced by an inert placeholder (formats/tolerant.py); still nothing of the pickle runs.
    """
    from imis.models.formats.torchfile import load_torch_file

    try:
        return load_torch_file(path)
    except CheckpointError as exc:
        if not tolerant or "refused" not in str(exc):
            raise
        from imis.models.formats.tolerant import load_tolerant

        try:
            return load_tolerant(Path(path))
        except Exception:
            raise exc from None


def is_imis_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"] == IMIS_FORMAT_TAG


def model_from_spec(
    spec: ModelSpec,
    net: torch.nn.Module,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> InteractiveModel:
    """An InteractiveModel of ``net`` with everything else (recipe, prompts, text path) from ``spec``."""
    return InteractiveModel(
        name=spec.name,
        net=net,
        preprocess=spec.preprocess,
        multimask=spec.multimask,
        prompt_types=spec.prompt_types,
        license=spec.license,
        text_fn=text_function(spec.text_tower, net, spec.text_template),
        device=device,
        dtype=dtype,
        spec=spec,
    )


def load_model(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    backend: str = "torch",
) -> InteractiveModel:
    """Build a registry model (or one of our own checkpoints) with strictly loaded weights.

    name: a registry name; may be None when `checkpoint` is one of our own files.
    checkpoint: a weight file; required for models without embedded weights.
    backend: "torch", "onnx" (ONNX Runtime; checkpoint may then be an `imis export` folder) or "auto"
    (see `imis.models.onnx.backend` for the rule); dtype torch.qint8 picks an export's int8 encoder.
    """
    if backend != "torch" or (checkpoint is not None and Path(checkpoint).suffix in (".onnx", ".json")):
        from imis.models.onnx.backend import load_backend_model

        def weights_of(n: str) -> Path | None:
            return get_spec(n).weights_path()

        return load_backend_model(name, checkpoint, device, dtype, backend, load_model, weights_of)
    tolerant = name in REGISTRY and REGISTRY[name].layout == "sam-med2d"
    obj = read_checkpoint(Path(checkpoint), tolerant=tolerant) if checkpoint is not None else None
    if obj is not None and is_imis_checkpoint(obj):
        return _load_own(obj, Path(checkpoint), name, device, dtype)
    if name is None:
        raise ModelNotAvailableError(
            f"{checkpoint}: no model name given and the file is not an imis checkpoint"
        )
    spec = get_spec(name)
    if obj is None:
        path = spec.weights_path()
        if path is None:
            raise ModelNotAvailableError(
                f"model {name!r} has no embedded weights: pass --checkpoint FILE ({spec.layout_description})"
            )
        obj = read_checkpoint(path)
        checkpoint = path
        if is_imis_checkpoint(obj):  # a model we trained ourselves (imis-lite) ships in our format
            return _load_own(obj, Path(path), spec.name, device, dtype)
    try:
        internal = spec.convert(obj)
        net = spec.build()
        from imis.models.formats import load_strict

        load_strict(net, internal, f"{spec.layout}: {spec.layout_description}")
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    return model_from_spec(spec, net, device, dtype)


def save_checkpoint(
    path: str | Path,
    model: InteractiveModel,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    half: bool = False,
    only: tuple[str, ...] | None = None,
) -> None:
    """Write our own format: architecture, recipe, metadata and the state dict in one file, atomically.

    arch, arch_kwargs: the network's architecture; None: the model's spec says (``model.spec``).
    only: keep just these top-level submodules (e.g. the decoder of a model whose encoder is
    embedded elsewhere); `base` in metadata then names the model that supplies the rest.
    """
    spec = getattr(model, "spec", None)
    if arch is None:
        if spec is None:
            raise ValueError(f"save_checkpoint({path}): model {model.name!r} carries no spec; pass arch")
        arch, arch_kwargs = spec.arch, spec.arch_kwargs if arch_kwargs is None else arch_kwargs
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
        "arch_kwargs": arch_kwargs or {},
        "preprocess": dataclasses.asdict(model.preprocess),
        "multimask": model.multimask,
        "prompt_types": sorted(model.prompt_types),
        "license": model.license,
        "metadata": metadata or {},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in sd.items()},
    }
    if spec is not None:
        # the text path travels with the file (older files keep it in their metadata)
        obj["text_template"] = spec.text_template
        obj["text_encoder"] = spec.text_tower
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def spec_from_checkpoint(obj: dict[str, Any], path: Path, name: str | None = None) -> ModelSpec:
    """The spec of one of our own checkpoints: its architecture, recipe and text path as the file says,
    the weight layout of its architecture."""
    arch = obj.get("arch")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    meta = obj.get("metadata", {})
    return ModelSpec(
        name=name or obj.get("name", path.stem),
        description=f"imis checkpoint {path}",
        arch=arch,
        arch_kwargs=dict(obj.get("arch_kwargs", {})),
        layout=ARCHITECTURES[arch].layout,
        preprocess=Preprocess(**obj["preprocess"]),
        multimask=obj.get("multimask", "single"),
        prompt_types=frozenset(obj.get("prompt_types", ["box", "point", "mask"])),
        license=obj.get("license", "unknown"),
        text_template=obj.get("text_template", meta.get("text_template", TEXT_TEMPLATE)),
        text_encoder=obj.get("text_encoder", meta.get("text_encoder")),
        extra={"checkpoint": str(path)},
    )


def _load_own(
    obj: dict[str, Any],
    path: Path,
    name: str | None,
    device: str | torch.device,
    dtype: torch.dtype | None,
) -> InteractiveModel:
    if type(obj.get("version")) is not int or obj["version"] != IMIS_FORMAT_VERSION:  # a tensor: no compare
        from imis.models.formats.own import show

        raise CheckpointError(f"{path}: imis checkpoint version {show(obj.get('version'))} is not supported")
    from imis.models.formats.own import build_checked, check_own_fields

    check_own_fields(obj, path, ARCHITECTURES)  # types first: a file is user input
    spec = spec_from_checkpoint(obj, path, name)
    if spec.name in REGISTRY:  # a registry model shipped in our format keeps its entry's description
        entry = REGISTRY[spec.name]
        spec = dataclasses.replace(
            spec, description=entry.description, embedded_weights=entry.embedded_weights
        )
    sd = {k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    base = obj.get("metadata", {}).get("base")
    if base:
        # A partial checkpoint: the base model's weights fill what the file does not carry.
        base_model = load_model(base)
        full = base_model.net.state_dict()
        full.update(sd)
        sd = full
    from imis.models.formats import load_strict

    net = build_checked(spec.architecture, spec.arch_kwargs, sd, path)  # probed on the meta device first
    load_strict(net, sd, f"imis checkpoint (arch {spec.arch}, file {path})")
    return model_from_spec(spec, net, device, dtype)


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
