"""How much memory a reader may take for one file, decided from its header before anything is allocated.

A file's header states the size of its pixel data; a damaged or hostile header can claim 100,000 x
100,000 pixels in a file of a few bytes. Every reader checks the claim against two bounds before it
allocates the pixel buffer:

* **the reading cap**: at most ``IMIS_MAX_IMAGE_BYTES`` bytes of decoded pixel data per file (default
  4 GiB, enough for a 1024 x 1024 x 1000 float32 volume). Raise it with the environment variable
  (``IMIS_MAX_IMAGE_BYTES=16GiB``; plain bytes or a ``K``/``M``/``G``/``T`` suffix, ``KiB``... or
  ``KB``... all read as powers of 1024) or per call (``read_image(path, max_bytes=...)``).
* **what the file can hold**: uncompressed data needs as many bytes in the file as it claims; deflate
  (gzip, zlib: ``.nii.gz``, compressed MetaImage and NRRD, PNG, ``.npz``) expands at most
  :data:`DEFLATE_MAX_RATIO` times, so a claim beyond that ratio of the compressed bytes is refused too.

Each refusal is an :class:`imis.errors.InputError` naming the file, the claim and the bound.
"""

from __future__ import annotations

import math
import os
import re

from imis.errors import InputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFLATE_MAX_RATIO",
    "MAX_BYTES_ENV",
    "check_claim",
    "check_deflate",
    "check_present",
    "format_bytes",
    "max_image_bytes",
]

MAX_BYTES_ENV = "IMIS_MAX_IMAGE_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
#: Deflate's largest expansion: 258 bytes per 2-bit code at best, 1032:1 (zlib's documentation).
DEFLATE_MAX_RATIO = 1032
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def _parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise InputError(
            f"{MAX_BYTES_ENV}={text!r}: not a size (bytes, or a number with K/M/G/T, e.g. 16GiB)"
        )
    value = float(m.group(1)) * (1 << _UNITS[m.group(2).lower()])
    if not 0 < value < 2**63:
        raise InputError(f"{MAX_BYTES_ENV}={text!r}: the cap must be a positive size")
    return int(value)


def max_image_bytes(override: int | None = None) -> int:
    """The reading cap in bytes: ``override`` if given, else ``$IMIS_MAX_IMAGE_BYTES``, else 4 GiB."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override <= 0:
            raise InputError(f"max_bytes must be a positive number of bytes, got {override!r}")
        return override
    env = os.environ.get(MAX_BYTES_ENV, "").strip()
    return _parse_bytes(env) if env else DEFAULT_MAX_BYTES


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def claimed_bytes(shape, itemsize: int) -> int:
    """Bytes of an array of ``shape`` (any ints, possibly huge) and ``itemsize``; exact Python ints."""
    return math.prod(int(s) for s in shape) * int(itemsize)


def check_claim(src: str, n_bytes: int, what: str, max_bytes: int | None = None) -> None:
    """Refuse ``n_bytes`` of decoded pixel data (described by ``what``) above the reading cap."""
    cap = max_image_bytes(max_bytes)
    if n_bytes > cap:
        raise InputError(
            f"{src}: {what} would take {format_bytes(n_bytes)}, above the reading cap of "
            f"{format_bytes(cap)} (raise it with {MAX_BYTES_ENV}=<size> or max_bytes=)"
        )


def check_present(src: str, n_bytes: int, available: int, what: str) -> None:
    """Refuse uncompressed data claiming more bytes than the file holds (truncated or corrupt header).
    ``what`` names the file kind: ``"MetaImage file"``."""
    if n_bytes > available:
        raise InputError(
            f"{src}: cannot read {what}: its header claims {n_bytes} bytes of uncompressed data, the file "
            f"holds only {max(available, 0)} (truncated file or corrupt header)"
        )


def check_deflate(src: str, n_bytes: int, compressed: int, what: str) -> None:
    """Refuse a claim that ``compressed`` bytes of deflate data cannot hold (more than 1032:1)."""
    if n_bytes > DEFLATE_MAX_RATIO * max(compressed, 0) + 1024:
        raise InputError(
            f"{src}: cannot read {what}: its header claims {n_bytes} bytes, more than {compressed} bytes "
            f"of compressed data can hold (deflate expands at most {DEFLATE_MAX_RATIO}:1): corrupt header"
        )


#: Bytes Pillow keeps per pixel of a mode (others: 4), and the samples per pixel of PNG's colour types.
_PIL_BYTES = {"1": 1, "L": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_raw_bytes(path, w: int, h: int) -> int:
    """Filtered scanline bytes of a PNG's image (what its deflate stream must expand to)."""
    with open(path, "rb") as fh:
        ihdr = fh.read(26)
    bits = ihdr[24] if len(ihdr) == 26 else 1
    channels = _PNG_CHANNELS.get(ihdr[25], 1) if len(ihdr) == 26 else 1
    return h * (1 + (w * bits * channels + 7) // 8)


def check_pillow_claim(im, path, src: str, max_bytes: int | None = None, before: int = 0) -> int:
    """Check the opened (not yet decoded) Pillow image ``im``: its pixels, decoded and converted once,
    under the cap (``before`` bytes of earlier pages counted too); a PNG's under what its file can hold.
    Returns the bytes counted so far."""
    w, h = im.size
    total = before + w * h * _PIL_BYTES.get(im.mode, 4)
    check_claim(src, 2 * total, f"{w} x {h} {im.mode} pixels (decoded and converted)", max_bytes)
    if im.format == "PNG":
        check_deflate(src, _png_raw_bytes(path, w, h), os.path.getsize(path), "PNG file")
    return total
