"""Checks that ITK's readers do not make, so that a damaged file is an error rather than wrong voxels.

* NIfTI: ITK reads a truncated ``.nii``/``.nii.gz`` without complaint (the missing voxels come back as
  garbage), ignores gzip CRC errors (corrupt bytes become wrong voxels) and replaces NaN/Inf floats by 0.
  Before SimpleITK reads a NIfTI file we stream through it once: decompress, checking the gzip stream and
  its CRC, compare the data length with the header, and count NaN/Inf in float data. For ``.nii.gz`` this
  is one extra decompression pass (reading takes about twice as long); plain ``.nii`` files with integer
  data only need their size checked.
* MetaImage: ITK prints "Uncompress failed" for a corrupt compressed ``.mha``/``.mhd`` and returns the
  image anyway; we inflate the zlib stream once and check that it is complete and valid.
"""

from __future__ import annotations

import math
import re
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


def nonfinite_geometry(head: bytes) -> str | None:
    """The NIfTI-1 geometry field that is NaN or infinite (pixdim, quatern/qoffset, srow), or None: ITK's
    reader hangs on an infinite sform (its polar decomposition never converges)."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            for name, off, n in (("pixdim", 76, 8), ("quatern/qoffset", 256, 6), ("srow", 280, 12)):
                values = struct.unpack(f"{endian}{n}f", head[off : off + 4 * n])
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


_MET_NDIM_FIELDS = ("dimsize", "elementspacing", "elementsize", "offset", "origin", "position",
                    "centerofrotation")  # fmt: skip
_MET_MATRIX_FIELDS = ("transformmatrix", "rotation", "orientation")
_MET_INT_FIELDS = ("ndims", "elementnumberofchannels", "headersize", "compresseddatasize")


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        return None


def _bad_metaimage_field(fields: dict[str, str]) -> str | None:
    """What ITK's MetaIO would crash on (it indexes its arrays by NDims unchecked), or None."""
    for key in _MET_INT_FIELDS:
        if key in fields and not re.fullmatch(r"-?\d{1,9}", fields[key]):
            return f"{key} = {fields[key]!r} is not an integer"
    ndims = int(fields.get("ndims", "0"))
    if not 1 <= ndims <= 6:
        return f"NDims = {fields.get('ndims')!r} (1 to 6 dimensions are readable)"
    if not 1 <= int(fields.get("elementnumberofchannels", "1")) <= 64:
        return f"ElementNumberOfChannels = {fields['elementnumberofchannels']!r} (1 to 64)"
    for key in _MET_NDIM_FIELDS + _MET_MATRIX_FIELDS:
        if key not in fields:
            continue
        values = _numbers(fields[key])
        want = ndims * ndims if key in _MET_MATRIX_FIELDS else ndims
        if values is None or len(values) != want:
            return f"{key} = {fields[key][:60]!r} does not hold {want} numbers for NDims = {ndims}"
        if key == "dimsize" and not all(v >= 1 and v == int(v) for v in values):
            return f"DimSize = {fields[key][:60]!r} is not {ndims} sizes >= 1"
    return None


def check_metaimage_header(p: Path, src: str) -> None:
    """Refuse a MetaImage header whose dimensions or per-dimension fields do not agree: ITK's MetaIO
    reads past its arrays (a segmentation fault or heap corruption) on NDims = 1e308 or a DimSize with
    fewer values than NDims. Called before ITK sees the file."""
    with open(p, "rb") as fh:
        head = fh.read(1 << 16)
    fields: dict[str, str] = {}
    for raw in head.splitlines():
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            break
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    if "ndims" not in fields:
        raise InputError(f"{src}: cannot read MetaImage file: its header has no NDims line")
    bad = _bad_metaimage_field(fields)
    size = p.stat().st_size
    data = p.parent / fields.get("elementdatafile", "LOCAL")
    if fields.get("elementdatafile", "LOCAL").upper() != "LOCAL" and data.is_file():
        size = data.stat().st_size
    if bad is None and "compresseddatasize" in fields and not 1 <= int(fields["compresseddatasize"]) <= size:
        # ITK allocates CompressedDataSize bytes unchecked: -1 is a std::bad_alloc
        bad = f"CompressedDataSize = {fields['compresseddatasize']} for {size} bytes of data"
    if bad is not None:
        raise InputError(f"{src}: cannot read MetaImage file: corrupt header ({bad})")


def check_metaimage(p: Path, src: str, n_bytes: int) -> None:
    """Raise InputError if a MetaImage header names a missing data file, if its data cannot hold the
    ``n_bytes`` its header claims (uncompressed data shorter than that, compressed data more than 1032
    times smaller), or if its compressed data (``.mha``, or ``.mhd`` + ``.zraw``) is a corrupt or
    incomplete zlib stream. Multi-file data is left to ITK, which reports it."""
    with open(p, "rb") as fh:
        head = fh.read(1 << 16)
    fields: dict[str, str] = {}
    offset = 0
    data_file = None
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            return  # not a header line: let ITK report it
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            data_file = value.strip()
            break
    if data_file is None:
        return
    if data_file.upper() == "LOCAL":
        target = p
    elif data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
        return  # multi-file data: left to ITK
    else:
        target, offset = p.parent / data_file, 0
        if not target.is_file():
            raise InputError(f"{src}: cannot read MetaImage file: its data file {target} does not exist")
    available = target.stat().st_size - offset
    if fields.get("compresseddata", "").lower() != "true":
        check_present(src, n_bytes, available, "MetaImage file")
        return
    check_deflate(src, n_bytes, available, "MetaImage file")
    name = src if target == p else f"{src} (data file {target.name})"
    for _ in _inflate(target, name, "MetaImage", offset=offset, gzip=False):
        pass


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
