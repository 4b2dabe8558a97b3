"""SAM-family models: components, checkpoint formats, the registry and the per-model recipes."""

from imis.models.interactive import Embedding, InteractiveModel, Prediction, PromptSpec
from imis.models.registry import REGISTRY, get_spec, load_model, registry_rows, save_checkpoint

__all__ = [
    "Embedding",
    "InteractiveModel",
    "Prediction",
    "PromptSpec",
    "REGISTRY",
    "get_spec",
    "load_model",
    "registry_rows",
    "save_checkpoint",
]
