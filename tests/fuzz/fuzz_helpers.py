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
# A case's CPU seconds are bounded, not its wall time: the long run shares a loaded machine at a low
# priority, where a 0.4 s read took 16.8 s of wall time (the DICOM series run stopped on such a case).
SOFT_SECONDS = 10.0  # a case taking more CPU time (all the process's threads) fails
HARD_SECONDS = (
    180.0  # wall time: a case still running then is a hang: faulthandler dumps the stacks and exits
)
MEMORY_BUDGET = 1 << 30  # bytes above what the process uses when fuzzing starts
FUZZ_CAP = "256MiB"  # IMIS_MAX_IMAGE_BYTES while fuzzing
REPORT_EVERY = 250  # cases of a format between two interim reports
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


_HANG_LOGS: dict[Path, object] = {}


def _hang_log(path: Path):
    folder = path.parent if path.parent.name else Path(".")
    if folder not in _HANG_LOGS:
        _HANG_LOGS[folder] = open(folder / "hang-traceback.txt", "w")  # noqa: SIM115 - kept open: written at exit
    return _HANG_LOGS[folder]


def check_reader(fmt: str, path: Path, read, validate=None, names: tuple[str, ...] = ()):
    """Run ``read(path)`` under the oracle; returns the result or the error (both fine). The error must
    name ``path`` (or one of ``names``: a dataset reader may name the dataset folder's file at fault)."""
    COUNTS[fmt] += 1
    if COUNTS[fmt] % REPORT_EVERY == 0:
        write_report(final=False)  # a run stopped at the deadline (or killed by a reader) keeps its count
    # pytest captures fd 2, and a hung case exits the process: its stacks go to a file beside the case
    faulthandler.dump_traceback_later(HARD_SECONDS, exit=True, file=_hang_log(path))
    t0, cpu0 = time.perf_counter(), time.process_time()
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
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        SECONDS[fmt] += elapsed
    assert cpu < SOFT_SECONDS, f"{fmt}: a case took {cpu:.1f} CPU s ({elapsed:.1f} s of wall time)"
    if validate is not None:
        validate(result)
    return result


def write_report(final: bool = True) -> None:
    """The cases run and seconds spent per format, to ``$IMIS_FUZZ_REPORT`` (if set): at the session's end,
    and every :data:`REPORT_EVERY` cases of a format on the way (``"finished": false``)."""
    out = os.environ.get("IMIS_FUZZ_REPORT")
    if not out or not COUNTS:
        return
    report = {
        fmt: {"cases": n, "seconds": round(SECONDS[fmt], 1), "finished": final}
        for fmt, n in sorted(COUNTS.items())
    }
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    if final:
        print(f"\nfuzz cases per format written to {out}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------------------
# Strategies return a Recipe (a list of small operations), never the mutated bytes: hypothesis keeps
# what its strategies draw until the run ends, and 10,000 megabyte-sized files would not fit in memory.
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
_APPLY: dict = {}  # operation name -> function(bytes, *args) -> bytes


def operation(name: str):
    def register(fn):
        _APPLY[name] = fn
        return fn

    return register


class Recipe:
    """Operations that turn a seed's bytes into one fuzz case: ``recipe(seed) -> bytes``."""

    def __init__(self, ops: list[tuple]) -> None:
        self.ops = ops

    def __call__(self, data: bytes) -> bytes:
        for name, *args in self.ops:
            data = _APPLY[name](data, *args)
        return data

    def __add__(self, other: Recipe) -> Recipe:
        return Recipe(self.ops + other.ops)

    def __repr__(self) -> str:
        return f"Recipe({self.ops!r})"[:2000]


@operation("truncate")
def _truncate(data: bytes, pos: int) -> bytes:
    return data[:pos]


@operation("flip")
def _flip(data: bytes, bits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, bit in bits:
        if pos < len(buf):
            buf[pos] ^= 1 << bit
    return bytes(buf)


@operation("put")
def _put(data: bytes, pos: int, chunk: bytes) -> bytes:
    """Overwrite at ``pos`` (nothing past the end)."""
    buf = bytearray(data)
    buf[pos : pos + len(chunk)] = chunk[: max(0, len(buf) - pos)]
    return bytes(buf)


@operation("insert")
def _insert(data: bytes, pos: int, chunk: bytes) -> bytes:
    return data[:pos] + chunk + data[pos:]


@operation("delete")
def _delete(data: bytes, pos: int, n: int) -> bytes:
    return data[:pos] + data[pos + n :]


@st.composite
def byte_mutation(draw, n: int, header: int = 512) -> tuple[tuple, int]:
    """One operation on ``n`` bytes and the length after it: truncation, bit flips, overwritten / inserted
    / deleted bytes, or an integer field (1, 2, 4 or 8 bytes, either byte order) set to an interesting
    value; positions mostly inside the first ``header`` bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "field", "field"]))
    top = max(0, (min(n, header) if draw(st.booleans()) else n) - 1)
    pos = draw(st.integers(0, top))
    if kind == "truncate" or n == 0:
        return ("truncate", pos), min(pos, n)
    if kind == "flip":
        bits = [(draw(st.integers(0, top)), draw(st.integers(0, 7))) for _ in range(draw(st.integers(1, 8)))]
        return ("flip", bits), n
    if kind == "overwrite":
        return ("put", pos, draw(st.binary(min_size=1, max_size=16))), n
    if kind == "insert":
        chunk = draw(st.binary(min_size=1, max_size=64))
        return ("insert", pos, chunk), n + len(chunk)
    if kind == "delete":
        k = draw(st.integers(1, 256))
        return ("delete", pos, k), n - min(k, n - pos)
    width = draw(st.sampled_from([1, 2, 4, 8]))
    value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2 ** (8 * width) - 1)) % (2 ** (8 * width))
    fmt = draw(st.sampled_from("<>")) + {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    return ("put", pos, struct.pack(fmt, value)), n


@st.composite
def mutated(draw, n: int | bytes | Quiet, header: int = 512) -> Recipe:
    """1 to 3 byte mutations of a seed of ``n`` bytes (or of the given seed's length)."""
    n = _unquiet(n)
    n = n if isinstance(n, int) else len(n)
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        op, n = draw(byte_mutation(n, header))
        ops.append(op)
    return Recipe(ops)


class Quiet:
    """A seed passed to a strategy, printed short in hypothesis' reports."""

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<seed {type(self.value).__name__}>"


def _unquiet(value):
    return value.value if isinstance(value, Quiet) else value


def gzip_bytes(raw: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return comp.compress(raw) + comp.flush()


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
