"""`load_model(..., backend="onnx"|"auto")`: pick the runtime, export once into a cache, open it.

Rule of ``backend="auto"`` (measured on the idle 2-core Sapphire Rapids CPU, README "ONNX export and
runtime"): where the device has fast bfloat16 units (a CPU with AMX/AVX512-BF16, a CUDA GPU) and the
precision is ``auto`` or ``bf16``, PyTorch with bf16 autocast of the encoder (imis-lite encoder 0.29-0.42x
its fp32 time, ViT-B at 1024 0.14x the official fp32 code, btcv-demo Dice within 0.003; ONNX Runtime's
int8 encoder reaches only 0.65-0.78x and its decoder is no faster than ours); otherwise, on a CPU, ONNX
Runtime when it is installed (encoders 0.82-0.9x PyTorch fp32, int8 0.65-0.78x, masks equal to IoU 1.0);
on a GPU, PyTorch (this package does not drive ONNX Runtime's CUDA provider). ``dtype=torch.qint8`` asks
for the int8-weight encoder of an export.

A registry name (with or without ``checkpoint`` weights) is exported on first use into
``$IMIS_CACHE_DIR/onnx`` (default ``~/.cache/imis/onnx``), keyed on the weight file; a ``checkpoint``
that is an export folder, its manifest or one of its .onnx files is opened as is, after checking that
it is an export of the model named.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from imis.errors import CheckpointError, InputError, ModelNotAvailableError
from imis.runtime_options import BACKENDS, PRECISIONS

INT8 = torch.qint8

__all__ = ["BACKENDS", "INT8", "is_onnx_export", "load_backend_model", "resolve_backend"]


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_backend(backend: str, device: str | torch.device = "cpu", precision: str = "fp32") -> str:
    """'torch' | 'onnx' | 'auto' -> the runtime to use on ``device`` at ``precision`` (the module's rule)."""
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device)
    if backend == "onnx":
        if dev.type != "cpu":
            raise InputError(
                f"--backend onnx runs on the CPU only; drop --device {device} or use --backend torch"
            )
        if not onnxruntime_available():
            raise ModelNotAvailableError("--backend onnx needs onnxruntime: pip install onnxruntime")
        return "onnx"
    if backend == "auto":
        from imis.models.interactive import fast_bf16_available

        if precision in ("auto", "bf16") and fast_bf16_available(dev):
            return "torch"
        return "onnx" if dev.type == "cpu" and onnxruntime_available() else "torch"
    return "torch"


def is_onnx_export(path: str | Path | None) -> bool:
    """Whether a --checkpoint names an ONNX export (a folder with a manifest, the manifest, an .onnx file)."""
    if path is None:
        return False
    p = Path(path)
    return (
        p.suffix == ".onnx" or p.name == "manifest.json" or (p.is_dir() and (p / "manifest.json").is_file())
    )


def cache_root() -> Path:
    root = os.environ.get("IMIS_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "imis"


def _cache_key(name: str, weights: Path | None) -> str:
    from imis.models.onnx.export import DEFAULT_OPSET
    from imis.models.onnx.manifest import FORMAT_VERSION

    parts = [name, str(FORMAT_VERSION), str(DEFAULT_OPSET), torch.__version__]
    if weights is not None:
        st = weights.stat()
        parts += [str(weights.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def cached_export(model, weights: Path | None) -> Path:
    """The cache folder holding an export of ``model`` (a torch InteractiveModel), written if missing."""
    from imis.models.onnx.export import export_onnx
    from imis.models.onnx.manifest import MANIFEST_NAME

    folder = cache_root() / "onnx" / f"{model.name}-{_cache_key(model.name, weights)}"
    if (folder / MANIFEST_NAME).is_file() and (folder / "encoder.int8.onnx").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        export_onnx(model, tmp, quantize="int8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _lazy_text_fn(name: str, weights_id: str, load_model):
    """Text prompts of an opened export: the registry model's text tower, if its weights are the export's."""
    loaded: list = []

    def encode(text: str) -> torch.Tensor:
        if not loaded:
            from imis.models.onnx.manifest import weights_sha256

            torch_model = load_model(name)
            if weights_sha256(torch_model.net.state_dict()) != weights_id:
                raise ModelNotAvailableError(
                    f"text prompts of this ONNX export need the text tower of the weights it was exported "
                    f"from; the installed {name!r} weights differ (use --backend torch with them)"
                )
            loaded.append(torch_model)
        return loaded[0].text_embedding(text)

    return encode


def load_backend_model(name, checkpoint, device, dtype, backend: str, load_model, weights_of):
    """The model ``name`` on ``backend`` ('onnx' or 'auto'); see the module docstring.

    load_model: the registry's torch loader; weights_of: name -> its embedded weight file or None
    (handed in by the registry, which this module does not import).
    """
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    if resolve_backend(backend, device, precision) == "torch":
        if is_onnx_export(checkpoint):
            raise CheckpointError(f"{checkpoint}: an ONNX export needs --backend onnx (or auto on a CPU)")
        return load_model(name, checkpoint, device, dtype if dtype is not INT8 else None)
    from imis.models.onnx.runtime import load_onnx_model

    int8 = dtype is INT8
    if dtype is not None and not int8:
        raise InputError(f"the ONNX backend runs fp32 or int8, not {dtype} (use --backend torch for bf16)")
    if is_onnx_export(checkpoint):
        from imis.models.onnx.manifest import read_manifest

        manifest, _ = read_manifest(checkpoint)
        text_fn = (
            _lazy_text_fn(manifest["model"], manifest["weights_sha256"], load_model)
            if manifest.get("text_dim")
            else None
        )
        return load_onnx_model(checkpoint, name, text_fn=text_fn, int8=int8)
    torch_model = load_model(name, checkpoint, "cpu", None)
    weights = Path(checkpoint) if checkpoint is not None else (weights_of(name) if name else None)
    folder = cached_export(torch_model, weights)
    text_fn = torch_model.text_embedding if "text" in torch_model.prompt_types else None
    return load_onnx_model(folder, torch_model.name, text_fn=text_fn, int8=int8)


# Models whose int8-weight encoder was measured to keep the masks (btcv-demo test Dice within 0.01 of
# fp32) and to be faster (benchmarks/onnx_int8.py, README "ONNX export and runtime": box/click Dice
# differences +0.0006/-0.0032 for imis-lite, -0.0022/-0.0004 for litemedsam; encoder 0.89x/0.87x):
# `--precision auto` on the ONNX backend uses int8 only for them.
INT8_KEEPS_MASKS: frozenset[str] = frozenset({"imis-lite", "litemedsam"})


def resolve_runtime(
    backend: str, precision: str, device: str | torch.device = "cpu", name: str | None = None
) -> tuple[str, torch.dtype | None]:
    """(--backend, --precision) -> (backend to use, dtype for load_model): the documented rule.

    backend auto: torch where the device has fast bf16 units and precision is auto/bf16, else onnx on a CPU.
    onnx: fp32, or int8 (the export's int8-weight encoder); auto -> int8 only for INT8_KEEPS_MASKS.
    torch: fp32 or bf16 autocast; auto -> bf16 where the CPU/GPU has fast bf16 units.
    """
    from imis.models.interactive import resolve_precision

    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    chosen = resolve_backend(backend, device, precision)
    if chosen == "onnx":
        if precision == "bf16":
            raise InputError("--precision bf16 runs on --backend torch; the ONNX backend runs fp32 or int8")
        if precision == "int8" or (precision == "auto" and name in INT8_KEEPS_MASKS):
            return chosen, INT8
        return chosen, None
    if precision == "int8":
        raise InputError("--precision int8 runs on the ONNX backend: add --backend onnx")
    return chosen, resolve_precision(precision, device)
