"""The fuzzing harness: byte mutations of real seed files, and the oracle every reader must pass.

Oracle (:func:`check_reader`): reading a mutated file either returns a valid result or raises one of
our errors (:class:`imis.errors.ImisError`) whose one-line message names the file; never another
exception, never a hang (a hard per-case limit kills the process with a traceback, a soft one fails the
case), never an allocation beyond the budget (the process runs under ``RLIMIT_DATA`` = what it uses
plus :data:`MEMORY_BUDGET` while fuzzing, with the reading cap set lower still, so a reader that
allocates what a corrupt header claims dies with MemoryError, which the oracle rejects).

The number of examples per format comes from ``IMIS_FUZZ_EXAMPLES`` (default: a short run of a few
seconds per format); every case run is counted per format and, with ``IMIS_FUZZ_REPORT=<file>``, the
counts are written there as JSON at the end of the session (see scripts/fuzz_long.sh).
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import struct
import sys
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from imis.errors import ImisError

EXAMPLES = int(os.environ.get("IMIS_FUZZ_EXAMPLES", "40"))
SOFT_SECONDS = 10.0  # a case taking longer fails
HARD_SECONDS = 60.0  # a case still running then is a hang: faulthandler dumps the stacks and exits
MEMORY_BUDGET = 1 << 30  # bytes above what the process uses when fuzzing starts
FUZZ_CAP = "256MiB"  # IMIS_MAX_IMAGE_BYTES while fuzzing
COUNTS: Counter = Counter()
SECONDS: Counter = Counter()

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=EXAMPLES <= 200,  # the short CI run is reproducible; the long run explores
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

_ALLOC_WORDS = ("MemoryError", "bad_alloc", "Failed to allocate", "Unable to allocate", "Cannot allocate")


def _vm_data() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def memory_budget(extra: int = MEMORY_BUDGET):
    """Limit the process's data segment to its present size + ``extra`` (restored on exit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = _vm_data() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def check_reader(fmt: str, path: Path, read, validate=None, names: tuple[str, ...] = ()):
    """Run ``read(path)`` under the oracle; returns the result or the error (both fine). The error must
    name ``path`` (or one of ``names``: a dataset reader may name the dataset folder's file at fault)."""
    COUNTS[fmt] += 1
    faulthandler.dump_traceback_later(HARD_SECONDS, exit=True)
    t0 = time.perf_counter()
    try:
        with memory_budget():
            result = read(path)
    except ImisError as exc:
        msg = str(exc)
        named = (str(path), path.name, *names)
        assert any(n in msg for n in named), f"error does not name the file: {msg}"
        assert "\n" not in msg, f"multi-line message: {msg!r}"
        assert not any(w in msg for w in _ALLOC_WORDS), f"a reader tried to allocate too much: {msg}"
        return exc
    finally:
        faulthandler.cancel_dump_traceback_later()
        elapsed = time.perf_counter() - t0
        SECONDS[fmt] += elapsed
    assert elapsed < SOFT_SECONDS, f"{fmt}: a case took {elapsed:.1f} s"
    if validate is not None:
        validate(result)
    return result


def write_report() -> None:
    out = os.environ.get("IMIS_FUZZ_REPORT")
    if not out or not COUNTS:
        return
    report = {fmt: {"cases": n, "seconds": round(SECONDS[fmt], 1)} for fmt, n in sorted(COUNTS.items())}
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfuzz cases per format written to {out}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------------------
INTERESTING = (
    0,
    1,
    2,
    3,
    7,
    8,
    255,
    256,
    0x7FFF,
    0x8000,
    0xFFFF,
    100_000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
)


class Quiet:
    """A seed passed to a strategy: hypothesis prints strategies' arguments, and a multi-megabyte repr
    under the fuzzing memory budget is a MemoryError of the harness, not of a reader."""

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<seed {type(self.value).__name__}>"


def _unquiet(value):
    return value.value if isinstance(value, Quiet) else value


@st.composite
def byte_mutation(draw, data: bytes, header: int = 512):
    """One of: truncation, bit flips, overwritten / inserted / deleted bytes, an integer field (1, 2, 4
    or 8 bytes, either byte order) set to an interesting value, mostly inside the first ``header``
    bytes."""
    data = _unquiet(data)
    n = len(data)
    buf = bytearray(data)
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "field", "field"]))
    near = draw(st.booleans())
    pos = draw(st.integers(0, max(0, (min(n, header) if near else n) - 1)))
    if kind == "truncate" or n == 0:
        return bytes(buf[:pos])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            p = draw(st.integers(0, max(0, (min(n, header) if near else n) - 1)))
            buf[p] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if kind == "overwrite":
        chunk = draw(st.binary(min_size=1, max_size=16))
        buf[pos : pos + len(chunk)] = chunk
        return bytes(buf)
    if kind == "insert":
        return bytes(buf[:pos] + draw(st.binary(min_size=1, max_size=64)) + buf[pos:])
    if kind == "delete":
        return bytes(buf[:pos] + buf[pos + draw(st.integers(1, 256)) :])
    width = draw(st.sampled_from([1, 2, 4, 8]))
    value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2 ** (8 * width) - 1)) % (2 ** (8 * width))
    order = draw(st.sampled_from("<>"))
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    buf[pos : pos + width] = struct.pack(order + fmt, value)[: max(0, n - pos)]
    return bytes(buf)


@st.composite
def mutated(draw, data: bytes, header: int = 512):
    """1 to 3 byte mutations of ``data``."""
    data = _unquiet(data)
    for _ in range(draw(st.integers(1, 3))):
        data = draw(byte_mutation(data, header))
    return data


def gzip_bytes(raw: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return comp.compress(raw) + comp.flush()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def interesting_floats():
    return st.sampled_from(
        [0.0, -0.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"), 0.5, 2.0]
    )


def interesting_ints(bits: int = 16, signed: bool = True):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    picks = [
        v for v in (0, 1, -1, 2, 3, 4, 7, 8, 255, 1000, 32767, -32768, 100_000, 2**31 - 1) if lo <= v <= hi
    ]
    return st.sampled_from(picks) | st.integers(lo, hi)
