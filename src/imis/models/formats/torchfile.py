"""Reading PyTorch files that come from users: never with pickle's power to run code.

``torch.load`` unpickles; a pickle can call any function while it loads (``os.system``, ...). Every file
a user hands us (``--checkpoint``, a run folder's ``state.pt``, LiteMedSAM's release) is read with
``weights_only=True``: only tensors, numbers, strings and containers are rebuilt, anything else is
refused before it runs. Failures are one :class:`imis.errors.CheckpointError` line naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from imis.errors import CheckpointError

__all__ = ["load_torch_file"]


class _BoundedReader:
    """The file as ``torch.load`` reads it, with every ``read(n)`` cut to the bytes the file still
    holds: pickle's string opcodes carry 4- or 8-byte lengths, and ``read(2**32)`` on a 1 MB file would
    allocate 4 GB before finding out that the data is not there."""

    def __init__(self, fh, size: int) -> None:
        self._fh, self._size = fh, size

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self._fh.read()
        return self._fh.read(min(n, max(0, self._size - self._fh.tell())))

    def readline(self, n: int = -1) -> bytes:
        return self._fh.readline(n)

    def readinto(self, buffer) -> int:
        return self._fh.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def load_torch_file(path: str | Path, what: str = "PyTorch checkpoint") -> Any:
    """The object saved in ``path`` by ``torch.save``, loaded on the CPU with ``weights_only=True``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file not found")
    try:
        with open(path, "rb") as fh:
            return torch.load(_BoundedReader(fh, path.stat().st_size), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        first = " ".join(str(exc).split())[:300]
        if "weights_only" in first or "Unsupported global" in first:
            raise CheckpointError(
                f"{path}: refused: the {what} holds Python objects beyond tensors and containers, which "
                f"could run code when loaded (read with weights_only=True): {first}"
            ) from None
        raise CheckpointError(f"{path}: not a readable {what} ({first})") from None
    except Exception as exc:  # torch raises RuntimeError, ValueError, EOFError, zipfile errors ...
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"{path}: not a readable {what} ({first})") from None
