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


def _read_in_child(*paths: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """read_image of each path in one child process, printing our error (one line each): a reader that
    kills its process (a segmentation fault or abort inside ITK) or hangs then fails the test instead of
    the test run."""
    code = textwrap.dedent(f"""
        from imis.errors import InputError
        from imis.io import read_image
        for path in {[str(p) for p in paths]!r}:
            try:
                read_image(path)
                print("read", path)
            except InputError as exc:
                print(exc)
    """)
    # the messages quote header bytes: UTF-8 both ways, whatever the locale
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"}
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", env=env, timeout=timeout)


def _refused_in_child(path: Path, *fragments: str) -> None:
    out = _read_in_child(path)
    assert out.returncode == 0, f"reader died with {out.returncode}: {out.stderr[-500:]}"
    for fragment in (str(path), *fragments):
        assert fragment in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"NDims", b"1e308"),
        (b"NDims", b"-1"),
        (b"NDims", b"100"),
        (b"DimSize", b"24 20"),
        (b"DimSize", b"24 inf 6"),
    ],
)
def test_metaimage_dimensions_that_crashed_itk(image_seeds, tmp_path, key, value):
    """ITK's MetaIO indexes its arrays by NDims unchecked: these headers were a segmentation fault or heap
    corruption (the whole process died); ``DimSize = 24 inf 6`` was an OverflowError in our own check. Read in a child process so that a regression fails cleanly."""
    mhd = tmp_path / "seed.mhd"
    mhd.write_bytes(_set_line(image_seeds["mhd"].read_bytes(), key, value))
    (tmp_path / "seed.raw").write_bytes((image_seeds["mhd"].parent / "seed.raw").read_bytes())
    _refused_in_child(mhd, "corrupt header")


@pytest.mark.parametrize(
    "name", [b"x%s.raw", b"x%n.raw", b"LO\xcf%s\x8d3", b"x%d.raw 1 1000 1", b"x%d.raw 0 5", b"x%d.raw 0 5 0"]
)
def test_metaimage_data_file_pattern_that_aborted_itk(image_seeds, tmp_path, name):
    """The long run's MHA abort: bit flips turned ``ElementDataFile = LOCAL`` into binary bytes holding a
    ``%``; MetaIO takes a name with ``%`` for a slice-file pattern and gives it to snprintf as the format
    (``x%s.raw``: segmentation fault; the fuzzed name: heap corruption, a glibc abort some reads later).
    ``x%d.raw 0 5`` (no step) was a division by zero (SIGFPE). Only a pattern with one integer field and
    'first last step' naming 1 to DimSize[-1] files reaches ITK now."""
    path = tmp_path / "seed.mha"
    path.write_bytes(_set_line(image_seeds["mha"].read_bytes(), b"ElementDataFile", name))
    _refused_in_child(path, "corrupt header (ElementDataFile = ")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        (b"ElementType", b"MET_STRING", "is not a voxel type"),
        (b"ElementType", b"MET_FLOAT_MATRIX", "is not a voxel type"),
        (b"HeaderSize", b"-5", "HeaderSize = -5"),
        (b"HeaderSize", b"99999999", "HeaderSize = 99999999"),
        (b"ElementDataFile", b"", "ElementDataFile is empty"),
    ],
)
def test_metaimage_header_fields_checked_before_itk(image_seeds, tmp_path, key, value, fragment):
    """Fields ITK read into meaningless pixel types (MET_STRING as float32) or past the data; a header
    without the field gets it added before ElementDataFile."""
    data = image_seeds["mha"].read_bytes()
    if key + b" =" not in data:
        data = data.replace(b"ElementDataFile", key + b" = " + value + b"\nElementDataFile", 1)
    path = tmp_path / "seed.mha"
    path.write_bytes(_set_line(data, key, value))
    expect(path, read_image, "corrupt header", fragment)


def test_metaimage_header_size_moves_the_data(image_seeds, tmp_path):
    """HeaderSize = 5 in a compressed .mha: ITK inflated from byte 5, printed "Uncompress failed" and
    returned the image anyway; the zlib check now starts where ITK reads."""
    data = image_seeds["mha"].read_bytes().replace(b"ElementDataFile", b"HeaderSize = 5\nElementDataFile", 1)
    path = tmp_path / "seed.mha"
    path.write_bytes(data)
    expect(path, read_image, "corrupt compressed data")


def _slice_mhd(image_seeds, folder: Path, data_file: str, n_files: int) -> Path:
    """The real .mhd seed (6 slices of int16) with its data split into slice files s0.raw, s1.raw, ..."""
    raw = (image_seeds["mhd"].parent / "seed.raw").read_bytes()
    per = len(raw) // 6
    for k in range(n_files):
        (folder / f"s{k}.raw").write_bytes(raw[k * per : (k + 1) * per])
    head = image_seeds["mhd"].read_bytes().split(b"ElementDataFile")[0]
    path = folder / "seed.mhd"
    path.write_bytes(head + b"ElementDataFile = " + data_file.encode() + b"\n")
    return path


def test_metaimage_slice_files_read(image_seeds, tmp_path):
    """Multi-file data the checks let through reads the same voxels as the one-file seed."""
    want = read_image(image_seeds["mhd"]).array
    listed = _slice_mhd(image_seeds, tmp_path, "LIST\n" + "\n".join(f"s{k}.raw" for k in range(6)), 6)
    assert np.array_equal(read_image(listed).array, want)
    assert np.array_equal(read_image(_slice_mhd(image_seeds, tmp_path, "s%d.raw 0 5 1", 6)).array, want)


@pytest.mark.parametrize(
    ("data_file", "n_files", "fragment"),
    [
        ("LIST\ns0.raw", 1, "the file holds only 960"),
        ("LIST", 0, "LIST names no data files"),
        ("LIST\ns0.raw\ns1.raw\ns2.raw\ns3.raw\ns4.raw\nnope.raw", 5, "1 of its 6 data files are missing"),
        ("s%d.raw 5 0 -1", 6, "names other than 1 to 6 slice files"),
    ],
)
def test_metaimage_slice_files_itk_filled_with_garbage(image_seeds, tmp_path, data_file, n_files, fragment):
    """ITK returned an image for a LIST naming fewer files than slices (or none) and for a pattern counting
    down (MetaIO reads nothing then): voxels from whatever its buffer held, without an error."""
    expect(_slice_mhd(image_seeds, tmp_path, data_file, n_files), read_image, fragment)


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


def test_dicom_meta_element_length_beyond_the_file(dicom_seed, tmp_path):
    """The long run's DICOM process was killed by the kernel's OOM killer after 3,000 cases: four bytes of
    CT_small.dcm's (0002,0001) value length flipped to 1,970,588,607 made GDCM allocate that much while
    probing the file, and keep it after failing (about 2 GB per such case). Refused from pydicom's walk of
    the element headers now; read in a child process, whose peak memory is checked."""
    import resource

    data = bytearray(dicom_seed.read_bytes())
    data[152:156] = struct.pack("<I", 1_970_588_607)
    path = tmp_path / "seed.dcm"
    path.write_bytes(bytes(data))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    _refused_in_child(path, "element (0002,0001) claims 1970588607 bytes")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb < 1_000_000 or peak_kb == before, f"the child peaked at {peak_kb} KB"


def _vm_peak_growth_in_child(seed: Path, path: Path) -> tuple[int, str]:
    """Read ``seed`` then ``path`` in a child process: how much its VmPeak (all memory ever mapped, taken or
    not: GDCM's over-allocations are not all touched) grew on the second read, in MB, and the error."""
    code = textwrap.dedent(f"""
        from imis.errors import InputError
        from imis.io import read_image

        def peak():
            with open("/proc/self/status") as fh:
                return next(int(ln.split()[1]) // 1024 for ln in fh if ln.startswith("VmPeak:"))

        read_image({str(seed)!r})
        before = peak()
        try:
            read_image({str(path)!r})
            print("read")
        except InputError as exc:
            print(exc)
        print(peak() - before)
    """)
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, encoding="utf-8", env=env, timeout=120
    )
    assert out.returncode == 0, f"reader died with {out.returncode}: {out.stderr[-500:]}"
    message, growth = out.stdout.strip().splitlines()[-2:]
    return int(growth), message


def _dicom_damage(seed: bytes, what: str) -> bytes:
    """One of the damages that made GDCM map hundreds of MB (found by scanning byte values over CT_small's
    first KB), located in the seed by its bytes rather than by offset."""
    data = bytearray(seed)
    if what == "transfer syntax VR":  # 'UI' -> '0I': GDCM reads the next 4 bytes ('1.2.') as a length
        at = data.index(b"\x02\x00\x10\x00UI") + 4
        data[at] = ord("0")
    elif what == "meta VR":  # (0002,0002)'s 'UI' -> 'U0': unknown but in pydicom's 'AA'..'ZZ' range
        at = data.index(b"\x02\x00\x02\x00UI") + 5
        data[at] = ord("0")
    elif what == "charset length":  # (0008,0005)'s length 10 -> 127: the walk resumes inside other values
        at = data.index(b"\x08\x00\x05\x00CS") + 6
        data[at] = 127
    return bytes(data)


@pytest.mark.parametrize(
    ("what", "fragment"),
    [
        ("transfer syntax VR", "element (0002,0010) has no valid value representation"),
        ("meta VR", "element (0002,0002) has no valid value representation"),
        ("charset length", "has no valid value representation"),
    ],
)
def test_dicom_header_damage_refused_before_gdcm_maps_memory(dicom_seed, tmp_path, what, fragment):
    """GDCM mapped 739 MB (the VR cases: an unknown VR is read with a 32-bit length) or 1.5 GB (the
    character set's length: its walk then reads garbage as a length) while probing these files, and kept
    the first; the long run's DICOM process grew by that much per case. The element walk refuses them now
    before GDCM sees the file."""
    path = tmp_path / "seed.dcm"
    path.write_bytes(_dicom_damage(dicom_seed.read_bytes(), what))
    growth, message = _vm_peak_growth_in_child(dicom_seed, path)
    assert growth < 200, f"reading {what} mapped {growth} MB more"
    assert str(path) in message and fragment in message, message


def test_dicom_damaged_transfer_syntax_uid(dicom_seed, tmp_path):
    """A transfer syntax UID with a letter in it: refused from the file meta header."""
    data = bytearray(dicom_seed.read_bytes())
    at = data.index(b"1.2.840.10008.1.2.1\x00")
    data[at + 4] = ord("x")
    path = tmp_path / "seed.dcm"
    path.write_bytes(bytes(data))
    expect(path, read_image, "transfer syntax UID (0002,0010) '1.2.x40.10008.1.2.1' is not a valid UID")


@pytest.mark.parametrize(
    ("keyword", "value"), [("Columns", 65535), ("BitsAllocated", 32), ("SamplesPerPixel", 3)]
)
def test_dicom_pixel_data_shorter_than_the_header_says(dicom_seed, tmp_path, keyword, value):
    """The long run's 16.8 s case: Columns 65,535 over CT_small's 128 x 128 pixels. GDCM read it as a
    128 x 65,535 image, the missing 16 MB filled from its buffer; refused from the header now."""
    import pydicom

    ds = pydicom.dcmread(dicom_seed)
    setattr(ds, keyword, value)
    path = tmp_path / "seed.dcm"
    ds.save_as(path, enforce_file_format=False)
    expect(path, read_image, "the pixel data holds 32768 bytes", "needs")


def test_dicom_series_with_a_damaged_position(dicom_series, tmp_path):
    """The long run's series case: one byte of s000.dcm's ImagePositionPatient zeroed ('-1\\x00.5\\30.25\\7')
    made the slice-position check build a ragged array (bare ValueError from numpy)."""
    import shutil

    folder = tmp_path / "series"
    shutil.copytree(dicom_series, folder)
    data = bytearray((folder / "s000.dcm").read_bytes())
    at = data.index(b"-12.5\\30.25")
    data[at + 2] = 0
    (folder / "s000.dcm").write_bytes(bytes(data))
    expect(folder, read_image, "the position (0020,0032) of slice", "is not 3 finite numbers")


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
    out = _read_in_child(path, timeout=60)
    assert str(path) in out.stdout and "non-finite srow" in out.stdout, out.stdout + out.stderr[-300:]


def _nifti2_bytes(nifti1: Path) -> bytearray:
    """The real NIfTI-1 seed rewritten as NIfTI-2 (540-byte header, float64 geometry) by nibabel."""
    nib = pytest.importorskip("nibabel")
    img = nib.load(nifti1)
    out = nib.Nifti2Image(np.asanyarray(img.dataobj), img.affine)
    out.header.set_qform(img.affine, 1)
    out.header.set_sform(img.affine, 1)
    return bytearray(out.to_bytes())


# (offset in NIfTI-1, offset in NIfTI-2, field name in the message)
_GEOMETRY_FIELDS = {
    "pixdim[1]": (80, 112, "pixdim"),
    "quatern_b": (256, 352, "quatern/qoffset"),
    "qoffset_z": (276, 392, "quatern/qoffset"),
    "srow_y[1]": (300, 440, "srow"),
}


@pytest.mark.parametrize("version", [1, 2])
def test_nifti_non_finite_geometry_refused(image_seeds, tmp_path, version):
    """NaN / infinite spacing, quaternion, offset or sform in a NIfTI-1 or NIfTI-2 header is refused from the
    header, naming the field, before ITK sees it (ITK hung for good on an infinite sform; NIfTI-2 was not
    checked at all). Read in a child process with a timeout: a regression fails instead of hanging."""
    seed = bytearray(image_seeds["nii"].read_bytes()) if version == 1 else _nifti2_bytes(image_seeds["nii"])
    code = "<f" if version == 1 else "<d"
    cases = {}
    for field, (off1, off2, name) in _GEOMETRY_FIELDS.items():
        for value in (float("nan"), float("-inf")):
            data, off = bytearray(seed), off1 if version == 1 else off2
            data[off : off + struct.calcsize(code)] = struct.pack(code, value)
            path = tmp_path / f"{field}-{value}.nii"
            path.write_bytes(bytes(data))
            cases[path] = name
    out = _read_in_child(*cases, timeout=60)
    assert out.returncode == 0, f"reader died with {out.returncode}: {out.stderr[-500:]}"
    lines = out.stdout.splitlines()
    assert len(lines) == len(cases), out.stdout
    for line, (path, name) in zip(lines, cases.items(), strict=True):
        assert line.startswith(str(path)) and f"corrupt header (non-finite {name} (" in line, line


def test_nifti2_refused_with_a_way_out(image_seeds, tmp_path):
    """SimpleITK's NIfTI reader is NIfTI-1 only (ITK vendors nifti1_io alone) and said "not a recognised
    image file" for a valid NIfTI-2 file; it is now named, with the conversion that reads it."""
    path = tmp_path / "seed.nii"
    path.write_bytes(bytes(_nifti2_bytes(image_seeds["nii"])))
    expect(path, read_image, "it is NIfTI-2 (540-byte header)", "Nifti1Image")
