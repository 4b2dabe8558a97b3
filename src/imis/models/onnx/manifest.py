"""The JSON manifest of an ONNX export: what the two graphs are, and how to feed them without our code.

A manifest names the model and its weights (a SHA-256 of the state dict, also written into each
graph's metadata, so a graph of another model or of other weights is refused), the preprocessing
recipe step by step, the input and embedding sizes, the decoder's inputs and label codes, how one
mask is picked and brought back to native resolution, and the license.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from imis.errors import CheckpointError
from imis.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

FORMAT_TAG = "imis-onnx"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
META_MODEL, META_ROLE, META_WEIGHTS = "imis.model", "imis.role", "imis.weights_sha256"

__all__ = ["build_manifest", "read_manifest", "weights_sha256", "MANIFEST_NAME"]


def weights_sha256(state_dict: dict) -> str:
    """A digest of a state dict's names, shapes and float32 values (independent of the file it came from)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def preprocess_recipe(pre: Preprocess) -> dict[str, Any]:
    """The preprocessing as data plus the steps in words (for runtimes outside Python)."""
    steps = ["grey (H, W) -> repeat to 3 channels (H, W, 3); RGBA -> drop alpha; cast to float32"]
    minmax = "min-max over the whole image to [0, 1] ((x - min) / max(max - min, 1e-8))"
    if pre.intensity == "minmax01" and pre.minmax_before_resize:
        steps.append(minmax)
    if pre.intensity == "imagenet":
        steps.append("if the values are not already 0-255 (min >= 0, 1 < max <= 255): " + minmax + " * 255")
    if pre.resize == "square":
        steps.append(
            f"resize to {pre.input_size}x{pre.input_size} ({pre.interpolation}, align_corners=False)"
        )
    else:
        steps.append(
            f"scale = {pre.input_size} / max(H, W); resize to (int(H * scale + 0.5), int(W * scale + 0.5)) "
            f"({pre.interpolation}, align_corners=False, no antialias)"
        )
    if pre.intensity == "minmax01" and not pre.minmax_before_resize:
        steps.append(minmax)
    if pre.intensity == "imagenet":
        steps.append(f"subtract mean {list(IMAGENET_MEAN)}, divide by std {list(IMAGENET_STD)} per channel")
    steps.append(f"zero-pad bottom/right to {pre.input_size}x{pre.input_size}; layout (1, 3, S, S) float32")
    return {
        "input_size": pre.input_size,
        "resize": pre.resize,
        "interpolation": pre.interpolation,
        "intensity": pre.intensity,
        "minmax_before_resize": pre.minmax_before_resize,
        "mean": list(IMAGENET_MEAN) if pre.intensity == "imagenet" else None,
        "std": list(IMAGENET_STD) if pre.intensity == "imagenet" else None,
        "steps": steps,
    }


DECODER_DOC = {
    "inputs": {
        "image_embeddings": "the encoder's output, as is",
        "point_coords": "(1, N, 2) float32 x, y in the network-input frame: native x * valid_w / W, "
        "native y * valid_h / H (valid_h, valid_w: the resized image inside the padded input)",
        "point_labels": "(1, N) float32 codes, see labels",
        "mask_input": "(1, 1, 4h, 4w) float32: a previous low_res_masks channel (zeros when unused)",
        "has_mask_input": "(1,) float32: 1 to use mask_input, else 0",
        "text_embedding": "(1, D) float32 projected text prompt (text models only; zeros when unused)",
    },
    "labels": {
        "1": "positive click",
        "0": "negative click",
        "-1": "padding token: append one (coords 0, 0) after the clicks when there is no box",
        "2": "box top-left corner (x0, y0)",
        "3": "box bottom-right corner (x1, y1)",
        "4": "text token (text models; last; coords 0, 0)",
    },
    "token_order": "clicks, then the padding token (clicks without a box) or the two box corners, then text",
    "outputs": {
        "low_res_masks": "(1, K, 4h, 4w) logits; token 0 is the single-mask output, tokens 1.. multimask",
        "iou_predictions": "(1, K) predicted IoU of each token's mask",
    },
}


def postprocess_recipe(multimask: str, input_size: int) -> dict[str, Any]:
    pick = {
        "single": "token 0",
        "best_iou": "the token among 1.. with the highest iou_predictions",
        "auto": "a lone click (no box, no mask input): the best of tokens 1.. by iou_predictions; else token 0",
    }[multimask]
    return {
        "mask_selection": pick,
        "steps": [
            f"bilinear (align_corners=False) resize the picked low-res logits to {input_size}x{input_size} "
            "(when they differ)",
            "crop to the valid area [0:valid_h, 0:valid_w]",
            "bilinear (align_corners=False) resize to the native (H, W)",
            "mask = logits > 0",
        ],
        "feed_back": "the picked low-res logits are the next call's mask_input",
    }


def build_manifest(
    model, weights_id: str, files: dict[str, str], opset: int, precision: str, shapes: dict
) -> dict:
    """The manifest of an export of ``model`` (an InteractiveModel)."""
    import torch

    return {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "model": model.name,
        "license": model.license,
        "weights_sha256": weights_id,
        "files": files,
        "opset": opset,
        "precision": precision,
        "exported_with": f"imis, torch {torch.__version__}",
        "prompt_types": sorted(model.prompt_types),
        "multimask": model.multimask,
        "input_size": model.preprocess.input_size,
        "embedding_shape": shapes["embedding"],
        "mask_input_shape": shapes["mask_input"],
        "text_dim": shapes.get("text_dim"),
        "preprocess": preprocess_recipe(model.preprocess),
        "decoder": DECODER_DOC,
        "postprocess": postprocess_recipe(model.multimask, model.preprocess.input_size),
    }


def manifest_path(path: Path) -> Path:
    """The manifest of an export folder, or the one beside an .onnx file of it."""
    path = Path(path)
    if path.is_dir():
        return path / MANIFEST_NAME
    return path.with_name(MANIFEST_NAME)


def read_manifest(path: str | Path) -> tuple[dict, Path]:
    """(manifest, export folder) of an export folder, its manifest.json or one of its .onnx files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: ONNX export not found (pass the folder written by `imis export`)")
    mpath = path if path.name == MANIFEST_NAME else manifest_path(path)
    if not mpath.is_file():
        raise CheckpointError(
            f"{path}: not an imis ONNX export (no {MANIFEST_NAME} beside it); write one with "
            "`imis export MODEL --format onnx -o DIR`"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{mpath}: not an imis ONNX manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: manifest version {manifest.get('version')} is not supported")
    return manifest, mpath.parent
