"""Fuzzing :func:`imis.io.read_image` from a real seed file of every format it reads.

Each case writes one mutated file (byte mutations, a header field set to an edge value, or the seed
under another format's extension) and reads it under the oracle of ``fuzz_helpers.check_reader``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fuzz_helpers import (
    FUZZ_SETTINGS,
    Quiet,
    check_reader,
    gzip_bytes,
    interesting_floats,
    interesting_ints,
    mutated,
)
from hypothesis import given
from hypothesis import strategies as st

from imis.io import read_image

pytestmark = pytest.mark.fuzz  # IMIS_FUZZ_EXAMPLES cases per format; scripts/fuzz_long.sh

EXTENSIONS = ("png", "jpg", "tif", "nii", "nii.gz", "nrrd", "mha", "mhd", "npy", "npz", "dcm")


def valid_image(result) -> None:
    """A result the readers return must be usable: finite numbers of a supported shape."""
    arr = result.array
    assert arr.dtype.kind in "biuf" and arr.ndim in (2, 3) and arr.size > 0
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all()
    assert all(np.isfinite(result.geometry.spacing)) and min(result.geometry.spacing) > 0


# -- format-specific header edits -------------------------------------------------------------------------
_NIFTI_FIELDS = (
    [(40 + 2 * i, "h") for i in range(8)]  # dim[0..7]
    + [(70, "h"), (72, "h")]  # datatype, bitpix
    + [(76 + 4 * i, "f") for i in range(8)]  # pixdim[0..7]: spacing
    + [(108, "f"), (112, "f"), (116, "f")]  # vox_offset, scl_slope, scl_inter
    + [(252, "h"), (254, "h")]  # qform_code, sform_code
    + [(256 + 4 * i, "f") for i in range(6)]  # quatern_b/c/d, qoffset_x/y/z
    + [(280 + 4 * i, "f") for i in range(12)]  # srow_x/y/z
)


@st.composite
def nifti_field(draw, raw: bytes, compressed: bool) -> bytes:
    buf = bytearray(zlib.decompress(raw, 16 + zlib.MAX_WBITS) if compressed else raw)
    for _ in range(draw(st.integers(1, 3))):
        off, code = draw(st.sampled_from(_NIFTI_FIELDS))
        value = draw(interesting_floats() if code == "f" else interesting_ints(16))
        buf[off : off + struct.calcsize(code)] = struct.pack("<" + code, value)
    return gzip_bytes(bytes(buf)) if compressed else bytes(buf)


@st.composite
def png_field(draw, raw: bytes) -> bytes:
    """IHDR width / height / bit depth / colour type set to edge values, with a valid CRC."""
    ihdr = bytearray(raw[16:29])
    for _ in range(draw(st.integers(1, 2))):
        field = draw(st.sampled_from(["w", "h", "depth", "colour"]))
        if field in "wh":
            v = draw(st.sampled_from([0, 1, 100_000, 2**31 - 1, 2**32 - 1]) | st.integers(0, 2**32 - 1))
            ihdr[0 if field == "w" else 4 : 4 if field == "w" else 8] = struct.pack(">I", v)
        else:
            ihdr[8 if field == "depth" else 9] = draw(st.sampled_from([0, 1, 2, 4, 8, 16, 3, 6, 255]))
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return raw[:16] + bytes(ihdr) + crc + raw[33:]


_TEXT_VALUES = [
    "0", "-1", "1", "nan", "inf", "-inf", "1e308", "1e-308", "100000 100000 100000", "100000 100000",
    "0 0 0", "-5 4 3", "nan nan nan", "0 0 0 0 0 0 0 0 0", "3", "4", "7", "17", "99999999999999999999",
    "MET_DOUBLE", "MET_ULONG_LONG", "MET_CHAR_ARRAY", "double", "block", "int64", "gzip", "raw", "bzip2",
    "ascii", "hex", "True", "False", "LOCAL", "missing.raw", "LIST", "(1,0,0) (0,0,0) (0,0,1)", "", "x",
]  # fmt: skip


@st.composite
def text_field(draw, raw: bytes) -> bytes:
    """A header line of NRRD / MetaImage text (``key: value`` / ``Key = value``) given an edge value."""
    end = raw.find(b"\n\n") if raw.startswith(b"NRRD") else raw.find(b"ElementDataFile")
    end = len(raw) if end < 0 else end
    lines = raw[:end].split(b"\n")
    i = draw(st.integers(1 if raw.startswith(b"NRRD") else 0, max(0, len(lines) - 1)))
    sep = b":" if raw.startswith(b"NRRD") else b"="
    key = lines[i].partition(sep)[0]
    value = draw(st.sampled_from(_TEXT_VALUES)).encode()
    action = draw(st.sampled_from(["set", "set", "drop", "repeat"]))
    if action == "set":
        lines[i] = key + sep + b" " + value
    elif action == "drop":
        del lines[i]
    else:
        lines.insert(i, key + sep + b" " + value)
    return b"\n".join(lines) + raw[end:]


@st.composite
def npy_field(draw, raw: bytes) -> bytes:
    """The ``.npy`` header dictionary with an edge shape, dtype or order."""
    shape = draw(
        st.sampled_from(["()", "(0,)", "(100000, 100000)", "(-1, 4)", "(2**40,)", "(3, 20, 24, 1, 1)"])
        | st.lists(st.integers(0, 10**6), max_size=4).map(lambda s: str(tuple(s)))
    )
    descr = draw(st.sampled_from(["'<i2'", "'>f8'", "'|O'", "'<c16'", "'|V8'", "'<U4'", "'?'", "'<M8[s]'"]))
    order = draw(st.sampled_from(["False", "True"]))
    head = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}".encode()
    head += b" " * (-(10 + len(head) + 1) % 64) + b"\n"
    (hlen,) = struct.unpack("<H", raw[8:10])
    return raw[:8] + struct.pack("<H", len(head)) + head + raw[10 + hlen :]


def _pydicom_edit(raw: bytes, edits) -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw))
    for keyword, value in edits:
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


_DICOM_EDITS = {
    "Rows": [0, 1, 65535, 4096],
    "Columns": [0, 1, 65535, 4096],
    "BitsAllocated": [0, 1, 8, 12, 32, 64],
    "BitsStored": [0, 1, 16, 40],
    "HighBit": [0, 31, 64],
    "PixelRepresentation": [0, 1, 2],
    "SamplesPerPixel": [0, 3, 4, 100],
    "NumberOfFrames": ["0", "2", "100000", "-1"],
    "PixelSpacing": [[0, 0], [-1, 1], ["nan", "1"], ["inf", "inf"], [1e308, 1]],
    "SliceThickness": ["0", "-1", "nan"],
    "ImagePositionPatient": [["nan", "0", "0"], ["1e308", "0", "0"], None],
    "ImageOrientationPatient": [[0, 0, 0, 0, 0, 0], ["nan"] * 6, [1, 0, 0, 1, 0, 0], None],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL", "XYZ"],
    "PixelData": [None, b"", b"\x00\x01"],
    "RescaleSlope": ["0", "nan", "1e308"],
    "RescaleIntercept": ["nan", "-1e308"],
}


@st.composite
def dicom_field(draw, raw: bytes) -> bytes:
    keys = draw(st.lists(st.sampled_from(sorted(_DICOM_EDITS)), min_size=1, max_size=3, unique=True))
    return _pydicom_edit(raw, [(k, draw(st.sampled_from(_DICOM_EDITS[k]))) for k in keys])


def _structured(ext: str, raw: bytes):
    if ext in ("nii", "nii.gz"):
        return nifti_field(raw, ext == "nii.gz")
    if ext == "png":
        return png_field(raw)
    if ext in ("nrrd", "mha", "mhd"):
        return text_field(raw)
    if ext == "npy":
        return npy_field(raw)
    if ext == "dcm":
        return dicom_field(raw)
    return None


def case_strategy(ext: str, raw: bytes, others: dict[str, bytes]):
    """A mutated file for a seed: (extension to write it under, bytes)."""
    header = {"nii": 352, "nii.gz": 64, "npy": 128, "dcm": 1024}.get(ext, 512)
    options = [st.tuples(st.just(ext), mutated(Quiet(raw), header))] * 3
    structured = _structured(ext, raw)
    if structured is not None:
        options += [st.tuples(st.just(ext), structured)] * 3
        options.append(st.tuples(st.just(ext), structured.flatmap(lambda b: mutated(b, header))))
    wrong = st.sampled_from(sorted(set(EXTENSIONS) - {ext}))
    options.append(st.tuples(wrong, st.just(raw)))
    return st.one_of(options)


def _seed_files(ext: str, image_seeds, dicom_seed) -> Path:
    return dicom_seed if ext == "dcm" else image_seeds[ext]


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_read_image_never_breaks(ext, image_seeds, dicom_seed, tmp_path_factory):
    seed = _seed_files(ext, image_seeds, dicom_seed)
    raw = seed.read_bytes()
    assert read_image(seed).array.size > 0  # the seed itself is valid
    folder = tmp_path_factory.mktemp(f"fuzz-{ext.replace('.', '-')}")
    if ext == "mhd":  # the detached data file travels with its header
        (folder / "seed.raw").write_bytes((seed.parent / "seed.raw").read_bytes())

    @FUZZ_SETTINGS
    @given(case=case_strategy(ext, raw, {}))
    def run(case):
        write_ext, data = case
        path = folder / f"seed.{write_ext}"
        path.write_bytes(data)
        try:
            check_reader(ext, path, read_image, valid_image)
        finally:
            path.unlink()

    run()


@pytest.mark.parametrize("which", ["header", "data"])
def test_mhd_data_file_never_breaks(which, image_seeds, tmp_path_factory):
    """The detached ``.raw`` of a MetaImage header: truncated, grown or flipped."""
    seed = image_seeds["mhd"]
    folder = tmp_path_factory.mktemp("fuzz-mhd-raw")
    (folder / "seed.mhd").write_bytes(seed.read_bytes())
    raw = (seed.parent / "seed.raw").read_bytes()

    @FUZZ_SETTINGS
    @given(data=mutated(raw, 64))
    def run(data):
        (folder / "seed.raw").write_bytes(data)
        check_reader("mhd+raw", folder / "seed.mhd", read_image, valid_image)

    run()


def test_dicom_series_never_breaks(dicom_series, tmp_path_factory):
    """One file of a real 4-file series mutated (bytes or DICOM fields), the folder read as a series."""
    import shutil

    folder = tmp_path_factory.mktemp("fuzz-series")
    for f in dicom_series.iterdir():
        shutil.copy(f, folder / f.name)
    assert read_image(folder).array.shape[0] == 4

    @FUZZ_SETTINGS
    @given(index=st.integers(0, 3), data=st.data())
    def run(index, data):
        target = folder / f"s{index:03d}.dcm"
        original = target.read_bytes()
        choice = st.one_of(mutated(original, 1024), dicom_field(original))
        target.write_bytes(data.draw(choice))
        try:
            check_reader("dicom-series", folder, read_image, valid_image)
        finally:
            target.write_bytes(original)

    run()
