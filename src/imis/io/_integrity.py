"""Checks that ITK's readers do not make, so that a damaged file is an error rather than wrong voxels.

* NIfTI: ITK reads a truncated ``.nii``/``.nii.gz`` without complaint (the missing voxels come back as
  garbage), ignores gzip CRC errors (corrupt bytes become wrong voxels) and replaces NaN/Inf floats by 0.
  Before SimpleITK reads a NIfTI file we stream through it once: decompress, checking the gzip stream and
  its CRC, compare the data length with the header, and count NaN/Inf in float data. For ``.nii.gz`` this
  is one extra decompression pass (reading takes about twice as long); plain ``.nii`` files with integer
  data only need their size checked.
* NRRD: the data must be able to hold what the header claims.
* DICOM series: ITK reads a series with missing or uneven slices (a warning only) at one averaged
  spacing; the slice positions are checked first.
MetaImage has its own module (:mod:`imis.io._metaimage`).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imis.errors import InputError
from imis.io.limits import check_claim, check_deflate, check_present

_GZIP = 16 + zlib.MAX_WBITS
_CHUNK = 1 << 16  # compressed bytes per step: at most ~64 MiB of output even for all-zero data
_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64


@dataclass(frozen=True)
class NiftiHeader:
    endian: str
    datatype: int
    vox_offset: int
    n_bytes: int  # voxel data bytes

    @property
    def float_dtype(self) -> np.dtype | None:
        code = _FLOAT_TYPES.get(self.datatype)
        return np.dtype(self.endian + code) if code else None


def parse_header(head: bytes) -> NiftiHeader | None:
    """The fields needed here from a NIfTI-1 or NIfTI-2 header, or None if it is not one."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            dims = struct.unpack(endian + "8h", head[40:56])
            vox = struct.unpack(endian + "f", head[108:112])[0]
            vox_offset = int(vox) if math.isfinite(vox) else -1
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or vox_offset < 0 or any(d <= 0 for d in dims[1 : ndim + 1]):
        return None
    n_vox = 1
    for d in dims[1 : ndim + 1]:
        n_vox *= int(d)
    return NiftiHeader(endian=endian, datatype=datatype, vox_offset=vox_offset, n_bytes=n_vox * bitpix // 8)


def _inflate(p: Path, src: str, fmt: str, offset: int = 0, gzip: bool = True) -> Iterator[bytes]:
    """Decompressed bytes of the gzip (or zlib) stream starting at ``offset``; InputError if it is
    corrupt or ends early. Data after a complete gzip member that is not a valid member (padding) is
    ignored, as gzip does."""
    wbits = _GZIP if gzip else zlib.MAX_WBITS
    dec = zlib.decompressobj(wbits)
    first = True
    with open(p, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(_CHUNK):
            while chunk:
                if dec.eof:
                    if not gzip:
                        return
                    dec, first = zlib.decompressobj(wbits), False  # another gzip member follows
                try:
                    out = dec.decompress(chunk)
                except zlib.error as exc:
                    if first:
                        raise InputError(
                            f"{src}: cannot read {fmt} file: corrupt compressed data ({exc})"
                        ) from None
                    return
                yield out
                chunk = dec.unused_data if dec.eof else b""
    if not dec.eof:
        raise InputError(
            f"{src}: cannot read {fmt} file: compressed data ends early (file truncated at "
            f"{p.stat().st_size} bytes)"
        )


def _chunks(p: Path, src: str, compressed: bool) -> Iterator[bytes]:
    if compressed:
        yield from _inflate(p, src, "NIfTI")
        return
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


#: Geometry fields of each header version: (name, offset, count), float32 in NIfTI-1, float64 in NIfTI-2.
_GEOMETRY = {
    348: ("f", (("pixdim", 76, 8), ("quatern/qoffset", 256, 6), ("srow", 280, 12))),
    540: ("d", (("pixdim", 104, 8), ("quatern/qoffset", 352, 6), ("srow", 400, 12))),
}


def header_version(head: bytes) -> tuple[int, str] | None:
    """(1 or 2, byte order) of a NIfTI header from its sizeof_hdr (348 / 540), or None."""
    for endian in "<>":
        if len(head) >= 4:
            size = struct.unpack(endian + "i", head[:4])[0]
            if size in _GEOMETRY and len(head) >= size:
                return (1 if size == 348 else 2), endian
    return None


def nonfinite_geometry(head: bytes) -> str | None:
    """The NIfTI-1 or NIfTI-2 geometry field that is NaN or infinite (pixdim, quatern/qoffset, srow), or
    None: ITK's reader hangs on an infinite sform (its polar decomposition never converges)."""
    version = header_version(head)
    if version is None:
        return None
    code, fields = _GEOMETRY[348 if version[0] == 1 else 540]
    for name, off, n in fields:
        values = struct.unpack(f"{version[1]}{n}{code}", head[off : off + struct.calcsize(f"{n}{code}")])
        if not all(math.isfinite(v) for v in values):
            return f"{name} {tuple(values)}"
    return None


def _gzip_head(p: Path, n: int) -> bytes:
    """The first ``n`` decompressed bytes of a gzip file (fewer, or none, if it is corrupt)."""
    dec = zlib.decompressobj(_GZIP)
    with open(p, "rb") as fh:
        try:
            return dec.decompress(fh.read(_CHUNK), n)
        except zlib.error:
            return b""


def check_nifti(p: Path, src: str, max_bytes: int | None = None) -> None:
    """Raise InputError if the NIfTI file is truncated, its gzip stream corrupt, or its floats non-finite,
    or if its header claims more voxel data than the reading cap or than its compressed bytes can hold."""
    with open(p, "rb") as fh:
        magic = fh.read(2)
        compressed = magic == b"\x1f\x8b"  # znzlib reads plain files named .nii.gz too
        head = _gzip_head(p, 540) if compressed else magic + fh.read(538)
    bad = nonfinite_geometry(head)
    if bad is not None:
        raise InputError(f"{src}: cannot read NIfTI file: corrupt header (non-finite {bad})")
    version = header_version(head)
    if version is not None and version[0] == 2:  # ITK vendors only nifti1_io: it reports "no reader"
        raise InputError(
            f"{src}: cannot read NIfTI file: it is NIfTI-2 (540-byte header), which SimpleITK's reader "
            "does not read; save it as NIfTI-1 (e.g. nibabel.Nifti1Image(img.dataobj, img.affine))"
        )
    claim = parse_header(head)
    if claim is not None:
        check_claim(src, claim.n_bytes, "the NIfTI header's voxel data", max_bytes)
        if compressed:
            need = claim.vox_offset + claim.n_bytes
            check_deflate(src, need, p.stat().st_size, "NIfTI file")
    hdr = claim if not compressed else None
    if not compressed and (hdr is None or hdr.float_dtype is None):
        total = p.stat().st_size  # integer data: the length is all we need, no read
    else:
        total, hdr, n_nan, n_inf = _scan(p, src, compressed)
        if hdr is not None and total >= hdr.vox_offset + hdr.n_bytes and (n_nan or n_inf):
            raise InputError(
                f"{src}: intensities contain {n_nan} NaN and {n_inf} Inf values (SimpleITK would read them "
                "as 0); replace or mask them first"
            )
    if hdr is not None and total < hdr.vox_offset + hdr.n_bytes:
        raise InputError(
            f"{src}: cannot read NIfTI file: truncated ({total} of the {hdr.vox_offset + hdr.n_bytes} "
            "bytes of header and voxel data are present)"
        )


def _scan(p: Path, src: str, compressed: bool) -> tuple[int, NiftiHeader | None, int, int]:
    """Stream the file: total bytes, header, and NaN/Inf counts of float voxel data."""
    head = bytearray()
    hdr: NiftiHeader | None = None
    parsed = False
    pos = 0  # absolute offset of the next piece
    carry = b""
    n_nan = n_inf = 0
    for piece in _chunks(p, src, compressed):
        if not parsed:
            head += piece
            if len(head) < 540:
                continue
            hdr, parsed = parse_header(bytes(head[:540])), True
            piece, head = bytes(head), bytearray()
        dtype = hdr.float_dtype if hdr is not None else None
        if dtype is not None:
            lo = max(0, hdr.vox_offset - pos)
            hi = max(0, hdr.vox_offset + hdr.n_bytes - pos)
            seg = carry + piece[lo:hi]
            usable = len(seg) - len(seg) % dtype.itemsize
            values = np.frombuffer(seg[:usable], dtype=dtype)
            if not np.isfinite(values).all():
                n_nan += int(np.isnan(values).sum())
                n_inf += int(np.isinf(values).sum())
            carry = seg[usable:]
        pos += len(piece)
    if not parsed:  # file shorter than 540 bytes
        hdr = parse_header(bytes(head))
        pos = len(head)
    return pos, hdr, n_nan, n_inf


def check_nrrd(p: Path, src: str, n_bytes: int, n_values: int) -> None:
    """Raise InputError if an NRRD file's data cannot hold what its header claims: ``n_bytes`` of raw data,
    1032 times less of gzip data, ``n_values`` numbers of ASCII data. bzip2 data is bounded by the cap."""
    with open(p, "rb") as fh:
        head = fh.read(1 << 16)
    fields: dict[str, str] = {}
    offset = 0
    for i, raw in enumerate(head.splitlines(keepends=True)):
        offset += len(raw)
        line = raw.decode("latin-1").strip()
        if i == 0 or line.startswith("#") or ":=" in line:
            continue
        if not line:
            break
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    else:
        if "data file" not in fields and "datafile" not in fields:
            return  # header without its end: let ITK report it
    data_file = fields.get("data file", fields.get("datafile"))
    target = p
    if data_file is not None:
        if data_file.upper().startswith("LIST") or len(data_file.split()) > 1:
            return  # multi-file data: left to ITK
        target, offset = p.parent / data_file, 0
        if not target.is_file():
            return  # ITK reports it
    available = target.stat().st_size - offset
    encoding = fields.get("encoding", "").lower()
    if encoding == "raw":
        check_present(src, n_bytes, available, "NRRD file")
    elif encoding in ("gzip", "gz"):
        check_deflate(src, n_bytes, available, "NRRD file")
    elif encoding in ("ascii", "txt", "text", "hex"):
        check_present(src, 2 * n_values - 1, available, "NRRD file (text data)")


def check_slice_positions(reader, n: int, src: str, uid: str) -> None:
    """Refuse a series whose slices are not evenly spaced (missing files): ITK only prints a warning and
    returns a volume with one averaged spacing, which puts every slice after the gap at the wrong place."""
    if n < 3:
        return
    try:
        pos = [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)]
        cosines = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    except (RuntimeError, ValueError):
        return  # no patient geometry (e.g. secondary capture): nothing to check against
    bad = [i for i, xyz in enumerate(pos) if len(xyz) != 3 or not np.isfinite(xyz).all()]
    if bad or len(cosines) != 6 or not np.isfinite(cosines).all():  # a damaged tag: np.asarray would raise
        what = (
            f"the position (0020,0032) of slice {bad[0] + 1} is not 3"
            if bad
            else "its orientation (0020,0037) is not 6"
        )
        raise InputError(f"{src}: DICOM series {uid}: {what} finite numbers (a damaged tag)")
    normal = np.cross(cosines[:3], cosines[3:6])
    d = np.diff(np.sort(np.asarray(pos) @ normal))
    step = float(np.median(d))
    if step <= 0 or np.any(np.abs(d - step) > 0.1 * step + 1e-3):
        worst = float(d[np.argmax(np.abs(d - step))])
        raise InputError(
            f"{src}: DICOM series {uid} has missing or uneven slices: a gap of {worst:.3g} mm where the "
            f"slices are {step:.3g} mm apart ({n} files); add the missing files or pass a complete series"
        )
