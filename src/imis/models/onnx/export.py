"""`imis export`: a loaded model -> encoder.onnx + decoder.onnx + manifest.json (+ run_onnx.py).

The encoder graph is the model's own image encoder at its input size; the decoder graph is
:class:`DecoderGraph` with a dynamic number of prompt tokens. Both carry the model name, their role
and the weights digest in their metadata. ``quantize="int8"`` adds an encoder with int8 weights
(ONNX Runtime dynamic quantization of its MatMul/Gemm nodes); the fp32 encoder stays beside it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

import torch

from imis.errors import InputError
from imis.models.onnx.graphs import LABEL_TEXT, DecoderGraph, has_text_path
from imis.models.onnx.manifest import (
    MANIFEST_NAME,
    META_MODEL,
    META_ROLE,
    META_WEIGHTS,
    build_manifest,
    weights_sha256,
)

# The dynamo exporter writes opset 18 and above; 18 is what onnxruntime-web and most runtimes read.
SUPPORTED_OPSETS = range(18, 24)
DEFAULT_OPSET = 18
QUANTIZE_CHOICES = ("int8",)
ENCODER_FILE, DECODER_FILE, ENCODER_INT8_FILE = "encoder.onnx", "decoder.onnx", "encoder.int8.onnx"
STANDALONE_FILE = "run_onnx.py"

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "check_opset",
    "export_decoder",
    "export_encoder",
    "export_onnx",
]


def check_opset(opset: int) -> int:
    if int(opset) not in SUPPORTED_OPSETS:
        raise InputError(
            f"--opset {opset}: unsupported; the exporter writes opsets "
            f"{SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )
    return int(opset)


def _math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Attention written out (MatMul, Add, Softmax, MatMul): what every ONNX runtime runs and fuses."""
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    logits = (q * s) @ k.transpose(-2, -1)
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(dim=-1) @ v


@contextlib.contextmanager
def _export_mode():
    """Attention as plain ops and the ViT's relative-position bias in one piece while tracing.

    The fused CPU attention kernel's output layout does not survive the exporter's decomposition, and
    the ViT's cache-sized bias chunks are an eager-mode optimisation that would unroll into hundreds
    of graph nodes.
    """
    import torch.nn.functional as F

    from imis.models import image_encoder

    saved_sdpa, saved_budget = F.scaled_dot_product_attention, dict(image_encoder._BIAS_BUDGET)
    F.scaled_dot_product_attention = _math_sdpa
    image_encoder._BIAS_BUDGET["cpu"] = 1 << 40
    # the exporter logs one warning per torchvision op it cannot register (torchvision is not installed)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    saved_level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quiet.setLevel(saved_level)
        F.scaled_dot_product_attention = saved_sdpa
        image_encoder._BIAS_BUDGET.clear()
        image_encoder._BIAS_BUDGET.update(saved_budget)


def _export(module: torch.nn.Module, args: tuple, path: Path, opset: int, names: dict, dynamic=None) -> None:
    # Traced with autograd on: the modules' inference-only caches (keyed on data pointers, which traced
    # tensors lack) are skipped then. The exporter's own artefact files go to a temporary folder.
    with _export_mode(), torch.enable_grad(), tempfile.TemporaryDirectory() as tmp:
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=names["inputs"],
            output_names=names["outputs"],
            dynamic_shapes=dynamic,
            external_data=False,
            artifacts_dir=tmp,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def _decoder_inputs(net, emb_shape: tuple[int, ...], with_text: bool) -> tuple[tuple, dict]:
    pe = net.prompt_encoder
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [5.0, 5.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0, float(LABEL_TEXT)]])
    if not with_text:
        coords, labels = coords[:, :3], labels[:, :3]
    args = [
        torch.randn(*emb_shape),
        coords,
        labels,
        torch.zeros(1, 1, *pe.mask_input_size),
        torch.zeros(1),
    ]
    n = torch.export.Dim("num_tokens", min=1, max=256)
    dynamic = {"point_coords": {1: n}, "point_labels": {1: n}}
    if with_text:
        args.append(torch.zeros(1, net.text_projection.out_features))
        dynamic["text_embedding"] = None
    for key in ("image_embeddings", "mask_input", "has_mask_input"):
        dynamic[key] = None
    return tuple(args), dynamic


def export_encoder(
    encoder: torch.nn.Module, input_size: int, path: Path, opset: int = DEFAULT_OPSET
) -> tuple:
    """An image encoder -> ONNX graph ``image`` (1, 3, S, S) -> ``image_embeddings``; returns its shape."""
    image = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        shape = tuple(encoder(image).shape)
    _export(
        encoder,
        (image,),
        Path(path),
        check_opset(opset),
        {"inputs": ["image"], "outputs": ["image_embeddings"]},
    )
    return shape


def export_decoder(net: torch.nn.Module, emb_shape: tuple, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """A PromptableSegmenter's prompt encoder + mask decoder -> the ONNX decoder graph (DecoderGraph)."""
    with_text = has_text_path(net)
    args, dynamic = _decoder_inputs(net, emb_shape, with_text)
    names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
    names += ["text_embedding"] if with_text else []
    io = {"inputs": names, "outputs": ["low_res_masks", "iou_predictions"]}
    _export(DecoderGraph(net).eval(), args, Path(path), check_opset(opset), io, dynamic)


def export_onnx(
    model,
    out_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    encoder: bool = True,
) -> dict:
    """Write ``model`` (an InteractiveModel on the torch backend) as an ONNX export into ``out_dir``.

    encoder=False writes the decoder only (benchmarks of the click path). Returns the manifest (also
    written to ``out_dir/manifest.json``).
    """
    opset = check_opset(opset)
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise InputError(f"--quantize {quantize!r}: supported: {', '.join(QUANTIZE_CHOICES)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model.net).float().cpu().eval()  # tracing must not touch the live model's caches
    weights_id = weights_sha256(net.state_dict())
    s = model.preprocess.input_size
    files = {}
    if encoder:
        emb_shape = export_encoder(net.image_encoder, s, out / ENCODER_FILE, opset)
        files["encoder"] = ENCODER_FILE
    else:
        emb_shape = _embedding_shape(net, s)
    export_decoder(net, emb_shape, out / DECODER_FILE, opset)
    files["decoder"] = DECODER_FILE
    for role, fname in files.items():
        _set_metadata(out / fname, {META_MODEL: model.name, META_ROLE: role, META_WEIGHTS: weights_id})
    precision = "fp32"
    if quantize == "int8" and encoder:
        quantize_encoder(out / ENCODER_FILE, out / ENCODER_INT8_FILE)
        files["encoder_int8"] = ENCODER_INT8_FILE
        precision = "fp32 (encoder_int8: int8 weights, dynamic quantization)"
    shapes = {
        "embedding": list(emb_shape),
        "mask_input": [1, 1, *net.prompt_encoder.mask_input_size],
        "text_dim": net.text_projection.out_features if has_text_path(net) else None,
    }
    manifest = build_manifest(model, weights_id, files, opset, precision, shapes)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copyfile(Path(__file__).with_name("standalone.py"), out / STANDALONE_FILE)
    return manifest


def _embedding_shape(net: torch.nn.Module, input_size: int) -> tuple:
    pe = net.prompt_encoder
    return (1, pe.embed_dim, *pe.image_embedding_size)


def quantize_encoder(src: Path, dst: Path) -> None:
    """int8 weights for the encoder's MatMul/Gemm nodes (activations quantized per call, per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    _copy_metadata(src, dst)


def _copy_metadata(src: Path, dst: Path) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    _set_metadata(dst, meta)
