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
    Recipe,
    check_reader,
    gzip_bytes,
    interesting_floats,
    interesting_ints,
    mutated,
    operation,
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


@operation("nifti")
def _nifti_edit(data: bytes, compressed: bool, edits: list[tuple[int, str, float]]) -> bytes:
    buf = bytearray(zlib.decompress(data, 16 + zlib.MAX_WBITS) if compressed else data)
    for off, code, value in edits:
        buf[off : off + struct.calcsize(code)] = struct.pack("<" + code, value)
    return gzip_bytes(bytes(buf)) if compressed else bytes(buf)


@st.composite
def nifti_field(draw, compressed: bool) -> Recipe:
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        off, code = draw(st.sampled_from(_NIFTI_FIELDS))
        edits.append((off, code, draw(interesting_floats() if code == "f" else interesting_ints(16))))
    return Recipe([("nifti", compressed, edits)])


@operation("ihdr")
def _ihdr_edit(data: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    """IHDR fields replaced, its CRC recomputed (so the PNG reader looks at the values)."""
    ihdr = bytearray(data[16:29])
    for off, value in edits:
        ihdr[off : off + len(value)] = value
    return data[:16] + bytes(ihdr) + struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr))) + data[33:]


@st.composite
def png_field(draw) -> Recipe:
    """IHDR width / height / bit depth / colour type set to edge values, with a valid CRC."""
    edits = []
    for _ in range(draw(st.integers(1, 2))):
        field = draw(st.sampled_from(["w", "h", "depth", "colour"]))
        if field in "wh":
            v = draw(st.sampled_from([0, 1, 100_000, 2**31 - 1, 2**32 - 1]) | st.integers(0, 2**32 - 1))
            edits.append((0 if field == "w" else 4, struct.pack(">I", v)))
        else:
            edits.append(
                (8 if field == "depth" else 9, bytes([draw(st.sampled_from([0, 1, 2, 4, 8, 16, 3, 6, 255]))]))
            )
    return Recipe([("ihdr", edits)])


_TEXT_VALUES = [
    "0", "-1", "1", "nan", "inf", "-inf", "1e308", "1e-308", "100000 100000 100000", "100000 100000",
    "0 0 0", "-5 4 3", "nan nan nan", "0 0 0 0 0 0 0 0 0", "3", "4", "7", "17", "99999999999999999999",
    "MET_DOUBLE", "MET_ULONG_LONG", "MET_CHAR_ARRAY", "double", "block", "int64", "gzip", "raw", "bzip2",
    "ascii", "hex", "True", "False", "LOCAL", "missing.raw", "LIST", "(1,0,0) (0,0,0) (0,0,1)", "", "x",
    "24 inf 6", "MET_STRING", "seed.raw", "LIST 2D", "x%s.raw", "s%03d.raw 0 5", "s%03d.raw 0 5 1",
    "s%d.raw 5 0 -1",
]  # fmt: skip


def _header_lines(data: bytes) -> tuple[list[bytes], bytes, bytes]:
    nrrd = data.startswith(b"NRRD")
    if nrrd:
        end = data.find(b"\n\n")
    else:  # MetaImage: up to and with the ElementDataFile line (MetaIO's last, its value fuzzed too)
        end = data.find(b"ElementDataFile")
        end = end if end < 0 else data.find(b"\n", end) + 1 or len(data)
    end = len(data) if end < 0 else end
    return data[:end].split(b"\n"), data[end:], b":" if nrrd else b"="


@operation("line")
def _line_edit(data: bytes, index: int, action: str, value: bytes) -> bytes:
    lines, rest, sep = _header_lines(data)
    i = min(index, len(lines) - 1)
    key = lines[i].partition(sep)[0]
    if action == "set":
        lines[i] = key + sep + b" " + value
    elif action == "drop":
        del lines[i]
    else:
        lines.insert(i, key + sep + b" " + value)
    return b"\n".join(lines) + rest


@st.composite
def text_field(draw, n_lines: int, first: int) -> Recipe:
    """A header line of NRRD / MetaImage text (``key: value`` / ``Key = value``) given an edge value."""
    index = draw(st.integers(first, max(first, n_lines - 1)))
    action = draw(st.sampled_from(["set", "set", "drop", "repeat"]))
    return Recipe([("line", index, action, draw(st.sampled_from(_TEXT_VALUES)).encode())])


@operation("npy")
def _npy_header(data: bytes, head: bytes) -> bytes:
    (hlen,) = struct.unpack("<H", data[8:10])
    return data[:8] + struct.pack("<H", len(head)) + head + data[10 + hlen :]


@st.composite
def npy_field(draw) -> Recipe:
    """The ``.npy`` header dictionary with an edge shape, dtype or order."""
    shape = draw(
        st.sampled_from(["()", "(0,)", "(100000, 100000)", "(-1, 4)", "(2**40,)", "(3, 20, 24, 1, 1)"])
        | st.lists(st.integers(0, 10**6), max_size=4).map(lambda s: str(tuple(s)))
    )
    descr = draw(st.sampled_from(["'<i2'", "'>f8'", "'|O'", "'<c16'", "'|V8'", "'<U4'", "'?'", "'<M8[s]'"]))
    order = draw(st.sampled_from(["False", "True"]))
    head = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}".encode()
    head += b" " * (-(10 + len(head) + 1) % 64) + b"\n"
    return Recipe([("npy", head)])


@operation("dicom")
def _pydicom_edit(data: bytes, edits) -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
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
def dicom_field(draw) -> Recipe:
    keys = draw(st.lists(st.sampled_from(sorted(_DICOM_EDITS)), min_size=1, max_size=3, unique=True))
    return Recipe([("dicom", [(k, draw(st.sampled_from(_DICOM_EDITS[k]))) for k in keys])])


def _structured(ext: str, raw: bytes):
    if ext in ("nii", "nii.gz"):
        return nifti_field(ext == "nii.gz")
    if ext == "png":
        return png_field()
    if ext in ("nrrd", "mha", "mhd"):
        return text_field(len(_header_lines(raw)[0]), 1 if ext == "nrrd" else 0)
    if ext == "npy":
        return npy_field()
    if ext == "dcm":
        return dicom_field()
    return None


def case_strategy(ext: str, raw: bytes):
    """A fuzz case for a seed: (extension to write it under, recipe of its bytes)."""
    header = {"nii": 352, "nii.gz": 64, "npy": 128, "dcm": 1024}.get(ext, 512)
    options = [st.tuples(st.just(ext), mutated(len(raw), header))] * 3
    structured = _structured(ext, raw)
    if structured is not None:
        options += [st.tuples(st.just(ext), structured)] * 3
        both = st.builds(lambda a, b: a + b, structured, mutated(len(raw), header))
        options.append(st.tuples(st.just(ext), both))
    wrong = st.sampled_from(sorted(set(EXTENSIONS) - {ext}))
    options.append(st.tuples(wrong, st.just(Recipe([]))))
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
    @given(case=case_strategy(ext, raw))
    def run(case):
        write_ext, recipe = case
        path = folder / f"seed.{write_ext}"
        path.write_bytes(recipe(raw))
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
    @given(recipe=mutated(len(raw), 64))
    def run(recipe):
        (folder / "seed.raw").write_bytes(recipe(raw))
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
        recipe = data.draw(st.one_of(mutated(len(original), 1024), dicom_field()))
        target.write_bytes(recipe(original))
        try:
            check_reader("dicom-series", folder, read_image, valid_image)
        finally:
            target.write_bytes(original)

    run()
