"""Headers that claim huge images are refused before memory is taken; the cap is the user's to raise."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from fuzz_helpers import memory_budget

from imis.errors import InputError
from imis.io import read_image
from imis.io.limits import DEFAULT_MAX_BYTES, MAX_BYTES_ENV, max_image_bytes


def _png_claiming(raw: bytes, width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + raw[24:29]
    return raw[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + raw[33:]


def _refused(path, *fragments) -> str:
    with memory_budget(200 << 20), pytest.raises(InputError) as err:  # 10 GB would be a MemoryError
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_png_claiming_100k_by_100k(image_seeds, tmp_path, monkeypatch):
    """Pillow's own bomb limit (179 M pixels) refuses 10^10 pixels at open; below it our checks do."""
    path = tmp_path / "huge.png"
    path.write_bytes(_png_claiming(image_seeds["png"].read_bytes(), 100_000, 100_000))
    _refused(path, "exceeds limit of 178956970 pixels")
    path.write_bytes(_png_claiming(image_seeds["png"].read_bytes(), 12_000, 12_000))
    monkeypatch.setenv(MAX_BYTES_ENV, "256MiB")
    _refused(path, "12000 x 12000", "reading cap of 256.0 MiB", MAX_BYTES_ENV)
    monkeypatch.setenv(MAX_BYTES_ENV, "1TiB")  # under a raised cap, the file's own size refuses it
    _refused(path, "more than", "compressed data can hold")


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_nifti_claiming_100k_by_100k(image_seeds, tmp_path, monkeypatch, ext):
    raw = image_seeds[ext].read_bytes()
    data = bytearray(zlib.decompress(raw, 16 + zlib.MAX_WBITS) if ext == "nii.gz" else raw)
    data[40:56] = struct.pack("<8h", 3, 32767, 32767, 32767, 1, 1, 1, 1)  # the largest NIfTI-1 dims
    if ext == "nii.gz":
        comp = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        data = comp.compress(bytes(data)) + comp.flush()
    path = tmp_path / f"huge.{ext}"
    path.write_bytes(bytes(data))
    _refused(path, "reading cap")
    monkeypatch.setenv(MAX_BYTES_ENV, "1000TiB")
    _refused(path, "truncated" if ext == "nii" else "compressed data can hold")


def test_npy_and_npz_claiming_huge_arrays(tmp_path):
    npy = tmp_path / "huge.npy"
    with open(npy, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
        )
        fh.write(b"\0" * 64)
    _refused(npy, "reading cap")
    import zipfile

    npz = tmp_path / "huge.npz"
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("image.npy", npy.read_bytes())
    _refused(npz, "reading cap")


def test_the_cap_is_the_users(image_seeds, monkeypatch):
    """A real file under a tiny cap is refused; the environment variable and max_bytes= raise it."""
    seed = image_seeds["nii.gz"]
    monkeypatch.setenv(MAX_BYTES_ENV, "1KiB")
    assert max_image_bytes() == 1024
    with pytest.raises(InputError, match="reading cap of 1.0 KiB"):
        read_image(seed)
    assert read_image(seed, max_bytes=1 << 20).array.shape == (6, 20, 24)
    monkeypatch.setenv(MAX_BYTES_ENV, "2M")
    assert read_image(seed).array.shape == (6, 20, 24)
    monkeypatch.delenv(MAX_BYTES_ENV)
    assert max_image_bytes() == DEFAULT_MAX_BYTES == 4 << 30
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(InputError, match="IMIS_MAX_IMAGE_BYTES='lots'"):
        read_image(seed)
