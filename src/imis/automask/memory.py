"""Keep freed memory in the process for reuse while a worker decodes click grids.

The grid decoder (:mod:`imis.models.grid_decode`) allocates and frees tensors of 4-15 MB hundreds of
times per image. glibc's malloc serves blocks that size with fresh ``mmap`` pages (its threshold starts
at 128 KiB) or hands freed heap tops back to the system, so every batch page-faults its tensors in
again: measured 0.25-0.75 million minor faults per 512 x 512 slice, and the decode 1.15-1.4x slower than
with the memory kept (benchmarks/automask.py). An automask worker is a long batch job whose working set
is the same from one batch to the next, so it asks malloc to keep what it frees. Elsewhere (the app,
the interactive session) the default stays: returning memory matters more there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit systems; larger blocks are rare here (masks, logits)
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True where it took effect (Linux with
    glibc), False elsewhere (other C libraries keep their own policy)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
