"""Byte-deterministic writing of the released IMed-361M layout (see :mod:`imis.data.formats.imed`).

Each file is written atomically (temporary file + ``os.replace``). PNGs at zlib level 6 without metadata
chunks; ``.npz`` archives are assembled byte by byte in the layout of the released files (entry order of
``scipy.sparse.save_npz``, fixed 1980-01-01 date, mode 0600, zlib level 6), so that a label re-written from
a released one is byte-identical to it; ``.npy`` files carry no timestamp.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imis.errors import InputError
from imis.io.files import atomic_output

#: zlib level of every PNG and .npz written here (numpy's and zlib's default).
COMPRESS_LEVEL = 6
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest ZIP date


def label_filename(stem: str, n_channels: int, height: int, width: int) -> str:
    """``x___<stem>.(C, H, W, 1).npz``, the released label file name."""
    return f"x___{stem}.({n_channels}, {height}, {width}, 1).npz"


def _check_stem(stem: str) -> None:
    if not isinstance(stem, str) or not stem or stem.startswith(".") or any(c in stem for c in "/\\\0"):
        raise InputError(
            f"invalid sample stem {stem!r}: a non-empty file name without '/', '\\' or a leading '.'"
        )


def _zip_deterministic(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A ZIP archive of ``(name, data)`` entries, deflated, in the exact byte layout of the released files.

    Layout (as numpy's ``savez_compressed`` wrote the released IMed-361M labels): per entry a local header
    (version 2.0, date 1980-01-01 00:00, real sizes) with a ZIP64 extra field holding the sizes, the raw
    deflate stream at zlib level :data:`COMPRESS_LEVEL`; then the central directory (Unix, mode 0600) and
    the end record. No timestamp, user or platform data enters the bytes.
    """
    out = bytearray()
    central = bytearray()
    for name, raw in entries:
        fname = name.encode("utf-8")
        comp = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -15)
        data = comp.compress(raw) + comp.flush()
        if max(len(raw), len(data), len(out)) >= 0xFFFFFFFF:
            raise InputError(f"{name}: archive entry of {len(raw)} bytes is too large (4 GiB limit)")
        crc = zlib.crc32(raw) & 0xFFFFFFFF
        offset = len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(raw), len(data))
        # version 2.0, no flags, deflate, time 00:00, date, CRC, sizes, name length: both headers hold them
        shared = (20, 0, 8, 0, _DOS_DATE, crc, len(data), len(raw), len(fname))
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", *shared, len(extra))
        out += fname + extra + data
        # made by Unix 3.0; no extra, comment, disk or internal attributes; mode 0600; local header offset
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x0314, *shared, 0, 0, 0, 0, 0o600 << 16, offset)
        central += fname
    n = len(entries)
    cd_offset = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out)


def write_npz(path: str | Path, arrays: Sequence[tuple[str, np.ndarray]]) -> Path:
    """Write ``arrays`` (name, array) as a compressed ``.npz``, atomically and byte-deterministically.

    Readable by ``numpy.load`` (entries ``<name>.npy``) and, for CSR arrays, ``scipy.sparse.load_npz``; the
    bytes depend only on the arrays and zlib (see :func:`_zip_deterministic`), not on the time, the
    Python version or the machine.
    """
    entries = []
    for name, arr in arrays:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
        entries.append((f"{name}.npy", buf.getvalue()))
    blob = _zip_deterministic(entries)
    with atomic_output(path) as tmp:
        tmp.write_bytes(blob)
    return Path(path)


def _csr_arrays(masks: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The arrays of ``scipy.sparse.save_npz`` for the CSR matrix (C, H*W) of int32 ones of ``masks``."""
    c = masks.shape[0]
    n = int(masks.shape[1]) * int(masks.shape[2])
    flat = masks.reshape(c, n)
    if n >= 2**31:
        raise InputError(f"images of {n} pixels are too large for int32 CSR indices")
    rows, cols = np.nonzero(flat)
    indptr = np.zeros(c + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=c), out=indptr[1:])
    return [
        ("indices", cols.astype(np.int32)),
        ("indptr", indptr),
        ("format", np.asarray(b"csr")),
        ("shape", np.asarray((c, n), dtype=np.int64)),
        ("data", np.ones(len(cols), dtype=np.int32)),
    ]


def _rgb_uint8(image: np.ndarray, stem: str) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise InputError(f"{stem}: image must be uint8 (convert to 8 bit first), got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{stem}: image must be (H, W) grey or (H, W, 3) RGB, got shape {img.shape}")
    if min(img.shape[:2]) < 1:
        raise InputError(f"{stem}: empty image of shape {img.shape}")
    return np.ascontiguousarray(img)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)``/``(H, W, 3)`` array as PNG, atomically and byte-deterministically."""
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(
            tmp, format="PNG", compress_level=COMPRESS_LEVEL, optimize=False
        )
    return Path(path)


def write_sample(
    root: str | Path,
    stem: str,
    image: np.ndarray,
    masks: np.ndarray,
    imask: np.ndarray | None = None,
) -> dict[str, str]:
    """Write one image with its masks (and imask) in the released layout; return its dataset.json entry.

    * ``image``: uint8 ``(H, W)`` (replicated to 3 channels) or ``(H, W, 3)`` -> ``image/<stem>.png`` (RGB).
    * ``masks``: bool (or 0/1 integer) ``(C, H, W)`` -> ``label/x___<stem>.(C, H, W, 1).npz``, a CSR matrix
      ``(C, H*W)`` of int32 ones readable by ``scipy.sparse.load_npz``; ``C`` may be 0.
    * ``imask``: integer ``(H, W)`` (or ``(H, W, 1)``) -> ``imask/x___<stem>.npy`` int64 ``(H, W, 1)``.

    Returns ``{"image": "image/<stem>.png", "label": "label/...npz"}`` plus ``"imask"`` when one was
    written. Each file is written atomically; identical inputs give byte-identical files.
    """
    _check_stem(stem)
    root = Path(root)
    rgb = _rgb_uint8(image, stem)
    h, w = rgb.shape[:2]
    m = np.asarray(masks)
    if m.ndim == 2:
        raise InputError(f"{stem}: masks must be (C, H, W); wrap a single mask as masks[None]")
    if m.ndim != 3 or m.shape[1:] != (h, w):
        raise InputError(
            f"{stem}: masks of shape {m.shape} do not match the image ({h}, {w}); expected (C, {h}, {w})"
        )
    if m.dtype != bool:
        if m.dtype.kind not in "iu" or (m.size and (m.min() < 0 or m.max() > 1)):
            raise InputError(f"{stem}: masks must be bool or 0/1 integers, got dtype {m.dtype}")
        m = m.astype(bool)
    im = None
    if imask is not None:
        im = np.asarray(imask)
        if im.ndim == 3 and im.shape[2] == 1:
            im = im[..., 0]
        if im.shape != (h, w):
            raise InputError(f"{stem}: imask of shape {im.shape} does not match the image ({h}, {w})")
        if im.dtype.kind not in "iub":
            raise InputError(f"{stem}: imask must hold integer ids, got dtype {im.dtype}")
    entry = {"image": f"image/{stem}.png", "label": f"label/{label_filename(stem, m.shape[0], h, w)}"}
    write_png(root / entry["image"], rgb)
    write_npz(root / entry["label"], _csr_arrays(m))
    if im is not None:
        entry["imask"] = f"imask/x___{stem}.npy"
        with atomic_output(root / entry["imask"]) as tmp:
            np.save(tmp, np.ascontiguousarray(im.astype(np.int64)[..., None]), allow_pickle=False)
    return entry


def write_dataset_json(
    root: str | Path,
    name: str,
    description: str,
    modality: Mapping[Any, str],
    labels: Mapping[int, str],
    training: Sequence[Mapping[str, str]],
    test: Sequence[Mapping[str, str]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``root/dataset.json`` atomically in the released key order; return its path.

    ``modality`` is ``{0: "ct"}`` (keys become strings); ``labels`` maps label values 1..C to names
    (``0: "background"`` is added when absent); ``extra`` keys are appended after ``test`` and must not
    repeat a released key. The text is deterministic (4-space indent, keys in this order, trailing newline).
    """
    released = (
        "name",
        "description",
        "dimension",
        "modality",
        "labels",
        "numTraining",
        "training",
        "numTest",
        "test",
    )
    lab = {int(k): str(v) for k, v in labels.items()}
    lab.setdefault(0, "background")
    meta: dict[str, Any] = {
        "name": str(name),
        "description": str(description),
        "dimension": "2D",
        "modality": {str(k): str(v) for k, v in modality.items()},
        "labels": {str(k): lab[k] for k in sorted(lab)},
        "numTraining": len(training),
        "training": [dict(e) for e in training],
        "numTest": len(test),
        "test": [dict(e) for e in test],
    }
    for key, value in (extra or {}).items():
        if key in released:
            raise InputError(f"dataset.json extra key {key!r} would overwrite a released key")
        meta[key] = value
    path = Path(root) / "dataset.json"
    text = json.dumps(meta, indent=4, ensure_ascii=False) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
