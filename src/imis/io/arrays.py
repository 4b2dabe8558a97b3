"""``.npy`` and ``.npz`` reading that checks each array's header before numpy allocates it.

``numpy.load`` allocates what an ``.npy`` header claims before it reads the data (for an ``.npz`` member
the whole array, for an ``.npy`` file as much as ``fromfile`` is asked for): a 100-byte file claiming a
shape of ``(100000, 100000)`` takes 10 GB first and fails after. Here the header is read first and the
claim checked against the data the file (or the archive member) holds and against the reading cap of
:mod:`imis.io.limits`; pickled (object) arrays are refused. Every failure is an :class:`InputError`
naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from imis.errors import InputError
from imis.io.limits import check_claim, check_deflate, check_present, claimed_bytes

__all__ = ["load_npy", "load_npz", "npz_keys"]

_MAX_HEADER = 10_000  # numpy's own default limit of a header's size


def _cause(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:300]}" if msg else type(exc).__name__


def _read_header(fh, src: str, kind: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, header bytes)`` of the ``.npy`` stream at ``fh``'s position."""
    fmt = np.lib.format
    start = fh.tell()
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
    else:  # (3, 0): utf-8 header, same fields; numpy has no public reader for it
        shape, _, dtype = fmt._read_array_header(fh, version, max_header_size=_MAX_HEADER)
    if dtype.hasobject:
        raise InputError(
            f"{src}: cannot read {kind} file: it holds Python objects (a pickle), never loaded (allow_pickle=False)"
        )
    if any(int(s) < 0 for s in shape):
        raise InputError(f"{src}: cannot read {kind} file: negative dimension in the array header {shape}")
    return tuple(int(s) for s in shape), dtype, fh.tell() - start


def _checked(call, src: str, what: str):
    try:
        return call()
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # ValueError (bad header), EOFError, zipfile.BadZipFile, OSError, zlib.error
        raise InputError(f"{src}: cannot read {what} file: {_cause(exc)}") from None


def load_npy(path: str | Path, src: str | None = None, max_bytes: int | None = None) -> np.ndarray:
    """The array of an ``.npy`` file, its header checked against the file's size and the reading cap."""
    p = Path(path)
    src = src or str(path)

    def read() -> np.ndarray:
        with open(p, "rb") as fh:
            shape, dtype, header = _read_header(fh, src, "NPY")
        need = claimed_bytes(shape, dtype.itemsize)
        check_claim(src, need, f"the array {shape} {dtype}", max_bytes)
        check_present(src, need, p.stat().st_size - header, "NPY file")
        return np.load(p, allow_pickle=False)

    return _checked(read, src, "NPY")


def npz_keys(path: str | Path, src: str | None = None) -> list[str]:
    """Array names of an ``.npz`` archive (members ``<name>.npy``), in archive order."""
    src = src or str(path)

    def names() -> list[str]:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]

    return _checked(names, src, "NPZ")


def _check_member(zf: zipfile.ZipFile, name: str, archive_size: int, src: str, max_bytes: int | None):
    info = zf.getinfo(name)
    where = f"{src} (array {name.removesuffix('.npy')!r})"
    if info.compress_size > archive_size:
        raise InputError(f"{where}: member claims {info.compress_size} compressed bytes, more than the file")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        check_deflate(where, info.file_size, info.compress_size, "NPZ archive member")
    elif info.compress_type == zipfile.ZIP_STORED:
        check_present(where, info.file_size, info.compress_size, "NPZ archive member")
    with zf.open(info) as fh:
        shape, dtype, header = _read_header(fh, where, "NPZ")
    need = claimed_bytes(shape, dtype.itemsize)
    check_claim(where, need, f"the array {shape} {dtype}", max_bytes)
    check_present(where, need, info.file_size - header, "NPZ archive member")


def load_npz(
    path: str | Path, keys: list[str] | None = None, src: str | None = None, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all when None) of an ``.npz`` archive, each header checked before loading."""
    p = Path(path)
    src = src or str(path)

    def read() -> dict[str, np.ndarray]:
        size = p.stat().st_size
        with zipfile.ZipFile(p) as zf:
            names = {n.removesuffix(".npy"): n for n in zf.namelist()}
            wanted = list(names) if keys is None else keys
            missing = [k for k in wanted if k not in names]
            if missing:
                raise InputError(
                    f"{src}: .npz has no array {', '.join(missing)} (it holds {', '.join(names)})"
                )
            for k in wanted:
                _check_member(zf, names[k], size, src, max_bytes)
        with np.load(p, allow_pickle=False) as npz:
            return {k: npz[k] for k in wanted}

    return _checked(read, src, "NPZ")


def load_csr_npz(path: str | Path, src: str | None = None, max_bytes: int | None = None):
    """A ``scipy.sparse.save_npz`` CSR matrix, its arrays checked as :func:`load_npz` does and its
    structure (index ranges, ``indptr``) validated by scipy; duplicates summed."""
    from scipy import sparse

    src = src or str(path)
    arrays = load_npz(path, ["format", "shape", "data", "indices", "indptr"], src, max_bytes)
    fmt = arrays["format"]
    if fmt.dtype.kind not in "SU" or fmt.ndim != 0 or str(fmt.item(), "ascii", "replace") != "csr":
        raise InputError(f"{src}: cannot read sparse label file: format {fmt!r} is not 'csr'")
    shape = arrays["shape"]
    if shape.dtype.kind not in "iu" or shape.shape != (2,) or (shape < 0).any():
        raise InputError(f"{src}: cannot read sparse label file: shape {shape.tolist()} is not 2 sizes")

    def build():
        mat = sparse.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(int(s) for s in shape)
        )
        mat.check_format(full_check=True)
        mat.sum_duplicates()
        return mat

    return _checked(build, src, "sparse label")
