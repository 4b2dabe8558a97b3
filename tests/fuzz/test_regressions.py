"""Every crash the fuzzing found, as the minimal file: a real seed plus the one mutation that broke a reader.

Each of these failed before its fix with a segmentation fault, a std::bad_alloc, a bare TypeError /
ValueError / RuntimeError / UnicodeDecodeError, or an error message that did not name the file.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from imis.errors import CheckpointError, ImisError, InputError
from imis.io import read_image

REPO = Path(__file__).resolve().parents[2]


def expect(path, call, *fragments: str, error=InputError) -> str:
    with pytest.raises(error) as err:
        call(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def _set_line(text: bytes, key: bytes, value: bytes) -> bytes:
    lines = [key + b" = " + value if ln.split(b"=")[0].strip() == key else ln for ln in text.split(b"\n")]
    return b"\n".join(lines)


@pytest.mark.parametrize(
    ("key", "value"), [(b"NDims", b"1e308"), (b"NDims", b"-1"), (b"NDims", b"100"), (b"DimSize", b"24 20")]
)
def test_metaimage_dimensions_that_crashed_itk(image_seeds, tmp_path, key, value):
    """ITK's MetaIO indexes its arrays by NDims unchecked: these headers were a segmentation fault or heap
    corruption (the whole process died). Read in a child process so that a regression fails cleanly."""
    mhd = tmp_path / "seed.mhd"
    mhd.write_bytes(_set_line(image_seeds["mhd"].read_bytes(), key, value))
    (tmp_path / "seed.raw").write_bytes((image_seeds["mhd"].parent / "seed.raw").read_bytes())
    code = textwrap.dedent(f"""
        from imis.errors import InputError
        from imis.io import read_image
        try:
            read_image({str(mhd)!r})
        except InputError as exc:
            print(exc)
    """)
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, f"reader died with {out.returncode}: {out.stderr[-500:]}"
    assert str(mhd) in out.stdout and "corrupt header" in out.stdout, out.stdout


def test_metaimage_negative_compressed_size(image_seeds, tmp_path):
    """``CompressedDataSize = -1``: ITK allocated 2**64 - 1 bytes (std::bad_alloc)."""
    path = tmp_path / "seed.mha"
    path.write_bytes(_set_line(image_seeds["mha"].read_bytes(), b"CompressedDataSize", b"-1"))
    expect(path, read_image, "CompressedDataSize = -1")


def test_dicom_series_with_zero_samples_per_pixel(dicom_series, tmp_path):
    """One file of a series with SamplesPerPixel 0: GDCM raised a RuntimeError while scanning the folder."""
    import shutil

    import pydicom

    folder = tmp_path / "series"
    shutil.copytree(dicom_series, folder)
    ds = pydicom.dcmread(folder / "s000.dcm")
    ds.SamplesPerPixel = 0
    ds.save_as(folder / "s000.dcm")
    expect(folder, read_image, "cannot scan the DICOM folder")


def test_nifti_nan_vox_offset(image_seeds, tmp_path):
    """vox_offset NaN in a .nii header: ``int(nan)`` raised ValueError in the integrity check."""
    data = bytearray(image_seeds["nii"].read_bytes())
    data[108:112] = struct.pack("<f", float("nan"))
    path = tmp_path / "seed.nii"
    path.write_bytes(bytes(data))
    try:
        result = read_image(path)
    except ImisError as exc:
        assert str(path) in str(exc)
    else:
        assert np.isfinite(result.array).all()


def test_imed_dataset_json_not_utf8(tmp_path):
    """A dataset.json starting with byte 0x80: UnicodeDecodeError from read_text."""
    from imis.data.formats import imed

    (tmp_path / "dataset.json").write_bytes(b"\x80" + b'{"name": "x"}')
    expect(tmp_path / "dataset.json", lambda p: imed.read_dataset(p.parent), "not UTF-8")


@pytest.mark.parametrize(
    "edit",
    [
        {"training": [{"image": 5, "label": "a"}]},
        {"training": [{"image": "image/a.png", "label": None}]},
    ],
)
def test_imed_dataset_json_wrong_types(tmp_path, edit):
    """Entries whose paths are numbers or null: ``root / 5`` raised TypeError."""
    from imis.data.formats import imed

    meta = {"name": "x", "labels": {"1": "liver"}, "training": [], "test": []} | edit
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    try:
        ds = imed.read_dataset(tmp_path)
        list(imed.iter_samples(ds))
    except InputError as exc:
        assert str(tmp_path) in str(exc)


def test_label_file_name_without_a_shape(imed_label, tmp_path):
    """A label named ``x___a.(,).npz``: ``ast.literal_eval('(,)')`` raised SyntaxError."""
    from imis.data.formats import imed

    path = tmp_path / "x___a.(,).npz"
    path.write_bytes(imed_label.read_bytes())
    expect(path, imed.read_label, "does not carry its shape")


def test_label_claiming_a_huge_dense_shape(imed_label, tmp_path):
    """A real CSR label renamed to claim 13 x 100000 x 100000: its shape agrees with nothing, and a
    consistent huge claim is refused by the cap before the dense masks are allocated."""
    from scipy import sparse

    from imis.data.formats import imed

    path = tmp_path / "x___a.(2, 100000, 100000, 1).npz"
    mat = sparse.csr_matrix((np.ones(3, np.int32), np.array([0, 5, 7]), np.array([0, 2, 3])), (2, 10**10))
    sparse.save_npz(path, mat)
    expect(path, imed.read_label, "reading cap")


def test_own_checkpoint_with_a_list_as_architecture(tmp_path):
    """``arch`` a list in our checkpoint format: ``arch not in ARCHITECTURES`` raised TypeError."""
    from imis.models.registry import IMIS_FORMAT_TAG, load_model

    path = tmp_path / "model.pt"
    torch.save({"format": IMIS_FORMAT_TAG, "version": 1, "arch": [], "state_dict": {}}, path)
    expect(path, lambda p: load_model(checkpoint=p), "unknown architecture", error=CheckpointError)


def test_own_checkpoint_with_huge_arch_kwargs(tmp_path):
    """``encoder_embed_dim`` of 10**6: the network was built (gigabytes) before its weights were checked."""
    from imis.models.registry import IMIS_FORMAT_TAG, load_model

    path = tmp_path / "model.pt"
    obj = {
        "format": IMIS_FORMAT_TAG,
        "version": 1,
        "arch": "sam-vit",
        "arch_kwargs": {
            "encoder_embed_dim": 10**6,
            "encoder_num_heads": 1,
            "encoder_depth": 1,
            "encoder_global_attn_indexes": [0],
        },  # fmt: skip
        "preprocess": {
            "input_size": 1024,
            "resize": "longest_side",
            "interpolation": "bilinear",
            "intensity": "imagenet",
            "minmax_before_resize": False,
        },  # fmt: skip
        "state_dict": {"w": torch.zeros(1)},
    }
    torch.save(obj, path)
    expect(path, lambda p: load_model(checkpoint=p), "does not match", error=CheckpointError)


def test_foreign_checkpoint_without_a_model_name(tmp_path):
    """A foreign checkpoint and no model name: the error did not name the file."""
    from imis.errors import ModelNotAvailableError
    from imis.models.registry import load_model

    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, path)
    expect(path, lambda p: load_model(checkpoint=p), "no model name", error=ModelNotAvailableError)


@pytest.fixture(scope="module")
def imed_label(btcv_dir) -> Path:
    return next((btcv_dir / "label").glob("*.npz"))


def test_own_checkpoint_with_a_tensor_as_version(tmp_path):
    """``version`` an empty tensor: ``version != 1`` raised 'Boolean value of Tensor ... is ambiguous'."""
    from imis.models.registry import IMIS_FORMAT_TAG, load_model

    path = tmp_path / "model.pt"
    torch.save({"format": IMIS_FORMAT_TAG, "version": torch.zeros(0), "state_dict": {}}, path)
    expect(path, lambda p: load_model(checkpoint=p), "version", error=CheckpointError)


def test_checkpoint_key_with_a_newline(tmp_path):
    """A state-dict key holding a newline (one flipped byte of the pickle): the key mismatch error,
    which names the keys, spanned two lines."""
    from imis.models.registry import load_model

    path = tmp_path / "model.pt"
    torch.save({"model": {"\nmage_encoder.patch_embed.proj.weight": torch.zeros(1)}}, path)
    msg = expect(
        path, lambda p: load_model("litemedsam", checkpoint=p), "unexpected key", error=CheckpointError
    )
    assert "'\\nmage_encoder" in msg


def test_pickle_string_length_beyond_the_file(tmp_path):
    """Found from our checkpoint with 167 bytes cut from its start: torch's legacy loader met a pickle
    string opcode whose 4-byte length (here 2**31 - 1) exceeds the file and read() allocated it first."""
    from fuzz_helpers import memory_budget

    from imis.models.formats.torchfile import load_torch_file

    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02X\xff\xff\xff\x7fabc")  # protocol 2, BINUNICODE of 2 GiB, 3 bytes present
    with memory_budget(200 << 20):  # before: "not a readable PyTorch checkpoint (MemoryError)"
        msg = expect(path, load_torch_file, "not a readable", error=CheckpointError)
    assert "MemoryError" not in msg


def test_samed2d_index_entry_with_a_newline(tmp_path):
    """An SA-Med2D index whose image path is a newline: the message naming it spanned two lines. Every
    ImisError now keeps one line (control characters escaped)."""
    from imis.data.formats import samed2d

    (tmp_path / samed2d.INDEX_NAME).write_text(json.dumps({"\n": []}))
    ds = samed2d.read_dataset(tmp_path)
    with pytest.raises(InputError) as err:
        list(samed2d.iter_samples(ds))
    assert "\n" not in str(err.value) and "\\n" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_nifti_infinite_sform_hung_itk(image_seeds, tmp_path, ext):
    """srow_x = (0, inf, 0, ...) with sform_code 1: ITK's NIfTI reader never returned (the long run's
    60 s limit). Read in a child process with a timeout so that a regression fails instead of hanging."""
    import zlib

    raw = image_seeds["nii"].read_bytes()
    data = bytearray(raw)
    data[280:292] = struct.pack("<3f", 0.0, float("inf"), 0.0)
    data[254:256] = struct.pack("<h", 1)
    if ext == "nii.gz":
        comp = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        data = comp.compress(bytes(data)) + comp.flush()
    path = tmp_path / f"seed.{ext}"
    path.write_bytes(bytes(data))
    code = f"from imis.io import read_image\ntry:\n    read_image({str(path)!r})\nexcept Exception as e:\n    print(e)"
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert str(path) in out.stdout and "non-finite srow" in out.stdout, out.stdout + out.stderr[-300:]
