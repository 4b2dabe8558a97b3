"""Read and write ``.safetensors`` files with our own code (no ``safetensors`` package at run time).

File layout (https://github.com/huggingface/safetensors, format section):

- bytes 0..8: ``N``, the header length, an unsigned 64-bit little-endian integer;
- bytes 8..8+N: a UTF-8 JSON object mapping each tensor name to
  ``{"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}`` (offsets relative to the
  start of the data section), plus an optional ``"__metadata__"`` object of string -> string;
- bytes 8+N..: the data section, every tensor's elements in row-major order, little-endian. The tensors
  cover it exactly, with neither holes nor overlaps.

A file that breaks any of these rules (truncated, bad JSON, unknown dtype, offsets that disagree with the
shape, ...) raises CheckpointError with a one-line message naming the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from imis.errors import CheckpointError

__all__ = [
    "DTYPES",
    "TensorInfo",
    "read_safetensors",
    "read_safetensors_header",
    "write_safetensors",
]

# safetensors dtype name -> torch dtype. The 8-bit floats exist only in recent torch builds.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
_NAMES = {v: k for k, v in DTYPES.items()}

_LENGTH_BYTES = 8
_MAX_HEADER = 100_000_000  # the reference implementation refuses larger headers too
_METADATA = "__metadata__"


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name, shape and byte range ``[begin, end)`` within the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _fail(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid safetensors file: {why}")


def _parse_entry(path: Path, name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _fail(path, f"header entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise _fail(path, f"tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or any(
        not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape
    ):
        raise _fail(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or any(not isinstance(o, int) or isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    info = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    expected = math.prod(info.shape) * DTYPES[dtype].itemsize
    if info.nbytes != expected:
        raise _fail(
            path,
            f"tensor {name!r} ({dtype} {list(shape)}) needs {expected} bytes but its data_offsets span "
            f"{info.nbytes}",
        )
    return info


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of a safetensors file without reading the tensors.

    Returns ``(tensors, metadata)``: tensor name -> :class:`TensorInfo` in data order, and the
    ``__metadata__`` strings (empty when absent). Raises CheckpointError for a missing, truncated or
    malformed file, including one whose data section is shorter or longer than the tensors it declares.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(_LENGTH_BYTES)
            if len(prefix) < _LENGTH_BYTES:
                raise _fail(path, f"file is {size} bytes, shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER:
                raise _fail(path, f"header length {length} is implausibly large (corrupt file?)")
            if _LENGTH_BYTES + length > size:
                raise _fail(
                    path, f"truncated: header needs {length} bytes, file has {size - 8} after the length"
                )
            raw = fh.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"header is not UTF-8 JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    metadata = header.pop(_METADATA, None) or {}
    if not isinstance(metadata, dict) or any(
        not isinstance(k, str) or not isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "__metadata__ is not an object of strings")
    infos = sorted(
        ((name, _parse_entry(path, name, entry)) for name, entry in header.items()),
        key=lambda item: (item[1].begin, item[1].end),
    )
    position = 0
    for name, info in infos:
        if info.begin != position:
            what = "overlaps the previous tensor" if info.begin < position else "leaves a gap before it"
            raise _fail(path, f"tensor {name!r} at data offset {info.begin} {what} (expected {position})")
        position = info.end
    data_size = size - _LENGTH_BYTES - length
    if data_size < position:
        raise _fail(path, f"truncated: the tensors need {position} data bytes, the file has {data_size}")
    if data_size > position:
        raise _fail(path, f"{data_size - position} unexpected bytes after the last tensor")
    return dict(infos), dict(metadata)


def _from_little_endian(raw: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """(nbytes,) uint8 little-endian bytes -> tensor of ``dtype`` and ``shape`` in native byte order."""
    size = dtype.itemsize
    if sys.byteorder == "big" and size > 1:
        raw = raw.view(-1, size).flip(-1).reshape(-1)
    if dtype == torch.bool:
        return raw.to(torch.bool).reshape(shape)
    return raw.view(dtype).reshape(shape)


def read_safetensors(
    path: str | os.PathLike, device: str | torch.device = "cpu", names: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """Read a safetensors file into ``{name: tensor}`` (file order of the data; each tensor owns its memory).

    ``names`` restricts the result to those tensors (all when None; a name the file lacks raises
    CheckpointError). Tensors are read straight into freshly allocated (aligned) CPU tensors, then moved
    to ``device``. Raises CheckpointError, naming the file, when it is missing, truncated or malformed.
    """
    path = Path(path)
    infos, _ = read_safetensors_header(path)
    if names is not None:
        missing = sorted(set(names) - infos.keys())
        if missing:
            raise CheckpointError(f"{path}: safetensors file has no tensor named {', '.join(missing[:5])}")
        infos = {k: v for k, v in infos.items() if k in names}
    out: dict[str, torch.Tensor] = {}
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(_LENGTH_BYTES))
            start = _LENGTH_BYTES + length
            for name, info in infos.items():
                raw = torch.empty(info.nbytes, dtype=torch.uint8)
                if info.nbytes:
                    fh.seek(start + info.begin)
                    got = fh.readinto(memoryview(raw.numpy()))
                    if got != info.nbytes:  # the file shrank after the header was checked
                        raise _fail(path, f"truncated inside tensor {name!r}")
                tensor = _from_little_endian(raw, DTYPES[info.dtype], info.shape)
                out[name] = tensor.to(device)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc.strerror or exc})") from exc
    return out


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (any device; saved contiguous, little-endian, in name order) as a safetensors file.

    The header is padded with spaces to a multiple of 8 bytes, as the reference writer does, so that
    every tensor of the data section starts 8-byte aligned when tensors are aligned themselves.
    """
    header: dict[str, object] = {}
    if metadata:
        header[_METADATA] = {str(k): str(v) for k, v in metadata.items()}
    blobs: list[bytes] = []
    position = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in safetensors")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        raw = (flat.to(torch.uint8) if tensor.dtype == torch.bool else flat).view(torch.uint8)
        if sys.byteorder == "big" and tensor.dtype.itemsize > 1:
            raw = raw.view(-1, tensor.dtype.itemsize).flip(-1).reshape(-1)
        blob = raw.numpy().tobytes()
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [position, position + len(blob)],
        }
        blobs.append(blob)
        position += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with Path(path).open("wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)))
        fh.write(encoded)
        for blob in blobs:
            fh.write(blob)
