"""--backend and --precision: the runtime options every model-running command takes (no torch import here,
so that building the CLI stays light). The rule behind "auto" is in ``imis.models.onnx.backend``."""

from __future__ import annotations

from pathlib import Path

BACKENDS = ("torch", "onnx", "auto")
PRECISIONS = ("fp32", "bf16", "int8", "auto")
BACKEND_HELP = (
    "runtime: torch (PyTorch), onnx (ONNX Runtime on the CPU; the model is exported once into "
    "~/.cache/imis/onnx, or pass an `imis export` folder as --checkpoint), auto (torch with bf16 "
    "autocast where the CPU/GPU has fast bf16 units (AMX/AVX512-BF16, CUDA) and --precision is auto or "
    "bf16; else onnx on a CPU where onnxruntime is installed; else torch). Default %(default)s"
)
PRECISION_HELP = (
    "fp32; bf16 (torch: bfloat16 autocast of the encoder); int8 (onnx: the encoder with int8 weights); "
    "auto: the fastest that keeps the masks (torch: bf16 where the CPU/GPU has bf16 units; onnx: int8 "
    "only for models measured to keep btcv-demo Dice within 0.01). Default %(default)s"
)


def add_runtime_arguments(
    parser, default_backend: str = "torch", default_precision: str = "fp32", device_help: str | None = None
) -> None:
    """Where and how a model runs, as `imis segment`, `imis bench`, automask and serve take it: --device
    (with ``device_help``, the command's own words; default cpu), --backend and --precision."""
    if device_help is not None:
        parser.add_argument("--device", default="cpu", help=device_help)
    parser.add_argument("--backend", choices=BACKENDS, default=default_backend, help=BACKEND_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, default=default_precision, help=PRECISION_HELP)


MODEL_HELP = (
    "registry model (default imis-lite, or litemedsam where its weights are missing); see `imis models`"
)
CHECKPOINT_HELP = "weight file for models without embedded weights"


def add_checkpoint_argument(parser) -> None:
    """--checkpoint FILE, as every command that loads a registry model takes it (`imis export` names
    its model as a positional argument, the others with :func:`add_model_arguments`)."""
    parser.add_argument("--checkpoint", type=Path, default=None, help=CHECKPOINT_HELP)


def add_model_arguments(parser) -> None:
    """--model NAME and --checkpoint FILE, as `imis segment`, `imis serve` and `imis automask` take
    them: one model, chosen by the same default rule (imis.models.registry.default_model_name)."""
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    add_checkpoint_argument(parser)


ZOOM_HELP = (
    "zoom-in refinement: decode again on a crop around a small object at the model's full input size "
    "(one more encoder run per crop; imis.models.zoom). --zoom zooms every prompt; --zoom K only from "
    "the K-th interaction on (a box, a text and each click count one), keeping the first masks the "
    "whole image's. Off by default (docs/training.md: measured gains and costs)"
)


def add_zoom_argument(parser) -> None:
    """--zoom [K], as `imis segment`, `imis bench` and `imis serve` take it: None (off), else the
    interaction zoom starts at (1 for a bare --zoom)."""
    parser.add_argument(
        "--zoom", nargs="?", type=_interaction, const=1, default=None, metavar="K", help=ZOOM_HELP
    )


def _interaction(text: str) -> int:
    import argparse

    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"--zoom takes an interaction number >= 1, not {text!r}")
    return k
