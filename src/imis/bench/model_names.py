"""Check every model name of ``imis bench --models`` before any work, with the closest known name.

A bench run loads its models one after the other; a misspelt second name used to be found only after
the first model had run on the whole split. :func:`check_model_names` refuses it at once, listing the
registry models whose weights are available and the weight-free baselines (marked as such).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from imis.errors import InputError

__all__ = ["baseline_rows", "check_model_names", "known_models_text"]


def _baselines() -> dict[str, object]:
    from imis.bench.baselines import BASELINES

    return dict(BASELINES)


def known_models_text() -> str:
    """``'imis-lite, litemedsam; baselines: grabcut, random-walker'`` (registry models with weights)."""
    from imis.models.registry import REGISTRY

    ready = [n for n, spec in sorted(REGISTRY.items()) if spec.weights_path() is not None]
    return f"{', '.join(ready)}; baselines: {', '.join(_baselines())}"


def check_model_names(models: Sequence[str], checkpoints: Mapping[str, object] | None = None) -> None:
    """Raise :class:`InputError` for the first name that is neither a registry model with weights on
    this machine (embedded, or given in ``checkpoints``) nor a baseline, with the closest known name
    ("did you mean random-walker?")."""
    from imis.models.registry import REGISTRY
    from imis.names import did_you_mean

    known = [*REGISTRY, *_baselines()]
    for name in models:
        if name in _baselines():
            continue
        spec = REGISTRY.get(name)
        if spec is None:
            raise InputError(
                f"--models: unknown model {name!r} (known: {known_models_text()}; see `imis models`)"
                f"{did_you_mean(name, known)}"
            )
        if spec.weights_path() is None and name not in (checkpoints or {}):
            raise InputError(
                f"--models: model {name!r} has no weights on this machine (bench runs models with "
                f"embedded weights: {known_models_text()}; or pass --checkpoint {name}=FILE)"
            )


def baseline_rows() -> list[dict[str, str]]:
    """One `imis models` row per weight-free baseline (they run in `imis bench` only)."""
    from imis.bench.baselines import load_baseline

    rows = []
    for name in _baselines():
        model = load_baseline(name)
        rows.append(
            {
                "name": f"{name} (baseline)",
                "prompts": ",".join(sorted(model.prompt_types)),
                "input": "native",
                "intensity": "min-max",
                "license": model.license.split(";")[0],
                "weights": "none needed (imis bench only)",
            }
        )
    return rows
