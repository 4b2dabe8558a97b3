"""SAM-family models: components, checkpoint formats, the registry and the per-model recipes."""

from imis.models.interactive import Embedding, InteractiveModel, Prediction, PromptableModel, PromptSpec
from imis.models.registry import REGISTRY, get_spec, load_model, registry_rows, save_checkpoint
from imis.models.spec import Architecture, ModelSpec, WeightLayout

__all__ = [
    "Architecture",
    "Embedding",
    "InteractiveModel",
    "ModelSpec",
    "Prediction",
    "PromptSpec",
    "PromptableModel",
    "REGISTRY",
    "WeightLayout",
    "get_spec",
    "load_model",
    "registry_rows",
    "save_checkpoint",
]
