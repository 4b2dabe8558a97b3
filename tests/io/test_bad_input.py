"""Bad input gives one InputError line naming the file and the cause (never a crash or garbage data)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from imis.errors import InputError
from imis.io import Geometry, ImageData, read_image, require_2d, validate_image, write_label_map


def expect_error(path, *causes: str, **kwargs) -> str:
    """read_image(path) must raise an InputError naming ``path`` and every cause fragment, on one line."""
    with pytest.raises(InputError) as err:
        read_image(path, **kwargs)
    msg = str(err.value)
    assert str(path) in msg, msg
    for cause in causes:
        assert cause in msg, msg
    assert "\n" not in msg
    return msg


@pytest.fixture
def colin_nii_gz(colin_sitk, tmp_path):
    """A real (cropped) Colin27 volume written as .nii.gz."""
    path = tmp_path / "colin.nii.gz"
    sitk.WriteImage(colin_sitk[40:140, 40:180, 40:140], str(path))
    return path


def test_truncated_nii_gz(colin_nii_gz):
    data = colin_nii_gz.read_bytes()
    colin_nii_gz.write_bytes(data[: len(data) // 2])  # SimpleITK alone would read this without complaint
    expect_error(colin_nii_gz, "cannot read NIfTI file", "truncated")


def test_truncated_uncompressed_nii(colin_sitk, tmp_path):
    path = tmp_path / "colin.nii"
    sitk.WriteImage(colin_sitk[40:140, 40:180, 40:140], str(path))
    path.write_bytes(path.read_bytes()[:100_000])
    expect_error(path, "cannot read NIfTI file", "truncated (100000 of the")


@pytest.mark.parametrize(("ext", "fmt"), [(".nii.gz", "NIfTI"), (".mha", "MetaImage")])
def test_corrupt_compressed_volume(colin_sitk, tmp_path, ext, fmt):
    path = tmp_path / f"colin{ext}"
    sitk.WriteImage(colin_sitk[40:140, 40:180, 40:140], str(path), True)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 1000] = bytes(range(256)) * 3 + bytes(232)  # SimpleITK alone reads this as wrong voxels
    path.write_bytes(bytes(data))
    expect_error(path, f"cannot read {fmt} file", "corrupt compressed data")


@pytest.mark.parametrize(("ext", "compress"), [(".mha", False), (".nrrd", True)])
def test_truncated_mha_and_nrrd(colin_sitk, tmp_path, ext, compress):
    path = tmp_path / f"colin{ext}"
    sitk.WriteImage(colin_sitk[40:140, 40:180, 40:140], str(path), compress)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    msg = expect_error(path, "cannot read")
    assert "truncated" in msg or "expected" in msg


def test_corrupt_png_bytes(btcv_dir, tmp_path):
    data = bytearray((btcv_dir / "image" / "ABD_001_100.png").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # garbage in the IDAT stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    expect_error(path, "cannot read PNG file")


def test_truncated_png(btcv_dir, tmp_path):
    data = (btcv_dir / "image" / "ABD_001_100.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 3])
    expect_error(path, "cannot read PNG file", "truncated")


def test_not_an_image_with_image_extension(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are notes, not a JPEG")
    expect_error(path, "cannot read JPEG file", "cannot identify image file")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.txt"
    path.write_text("hello")
    expect_error(path, "unsupported extension '.txt'", ".nii.gz", "DICOM series folder")


def test_4d_array(tmp_path):
    path = tmp_path / "four.npy"
    np.save(path, np.zeros((2, 3, 4, 5), np.float32))
    expect_error(path, "4D array of shape (2, 3, 4, 5) is not supported")


def test_4d_nifti(colin_sitk, tmp_path):
    block = colin_sitk[40:60, 40:60, 40:60]
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([block, block]), str(path))
    expect_error(path, "4D image of size (20, 20, 20, 2)", "not supported")


def test_one_pixel_image(tmp_path):
    path = tmp_path / "pixel.png"
    Image.fromarray(np.array([[7]], np.uint8)).save(path)
    expect_error(path, "image is 1x1 pixels", "at least 2x2")


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_and_inf_intensities(colin_sitk, tmp_path, bad):
    block = sitk.Cast(colin_sitk[40:80, 40:80, 40:80], sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(block)
    arr[3, 4, 5] = np.nan if bad == "nan" else np.inf
    arr[6, 7, 8] = np.nan if bad == "nan" else -np.inf
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(block)
    path = tmp_path / f"{bad}.nii.gz"
    sitk.WriteImage(img, str(path))
    want = "2 NaN and 0 Inf" if bad == "nan" else "0 NaN and 2 Inf"
    expect_error(path, f"intensities contain {want} values")


def test_non_existent_path(tmp_path):
    expect_error(tmp_path / "missing.nii.gz", "no such file or folder")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("no DICOM here")
    expect_error(tmp_path, "no DICOM series", "1 files")


def test_empty_array(tmp_path):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((0, 5), np.uint8))
    expect_error(path, "empty array (shape (0, 5))")


def test_non_numeric_dtype(tmp_path):
    path = tmp_path / "words.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    expect_error(path, "non-numeric dtype <U1")


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    expect_error(path, "cannot read NPY file", "allow_pickle=False")


def test_npz_without_an_image_key(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, a=np.zeros((4, 4)), b=np.ones((4, 4)))
    expect_error(path, "holds 2 arrays (a, b)", "'image'")


def test_volume_where_2d_is_needed(colin):
    with pytest.raises(InputError) as err:
        require_2d(colin)
    msg = str(err.value)
    assert str(colin.path) in msg and "3D volume of shape (z, y, x) = (181, 217, 181)" in msg
    assert "pass an axis and index" in msg and "--slice z:90" in msg


def test_validate_image_names_the_argument():
    with pytest.raises(InputError, match=r"^--image: complex intensities \(complex64\)"):
        validate_image(np.zeros((4, 4), np.complex64), "--image")
    with pytest.raises(InputError, match=r"^arr: volume of shape \(1, 1, 9\)"):
        validate_image(np.zeros((1, 1, 9)), "arr")
    assert validate_image(np.zeros((8, 8, 3)), "x") == ("2d", True)
    assert validate_image(np.zeros((4, 4, 3)), "x", kind="volume") == ("volume", False)


def test_bad_label_maps(tmp_path):
    with pytest.raises(
        InputError, match=r"out\.png: labels must be an integer or bool array, got dtype float32"
    ):
        write_label_map(tmp_path / "out.png", np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match=r"out\.png: labels must be >= 0, found -1"):
        write_label_map(tmp_path / "out.png", -np.ones((4, 4), np.int32))
    with pytest.raises(InputError, match=r"out\.jpg: cannot write a label map as '\.jpg'"):
        write_label_map(tmp_path / "out.jpg", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match=r"PNG holds 2D label maps only"):
        write_label_map(tmp_path / "out.png", np.zeros((2, 4, 4), np.uint8))
    ref = ImageData(np.zeros((5, 6), np.uint8), geometry=Geometry.identity(2))
    with pytest.raises(InputError, match=r"do not match the image <array> of shape \(5, 6\)"):
        write_label_map(tmp_path / "out.nii.gz", np.zeros((6, 5), np.uint8), reference=ref)
    assert list(tmp_path.iterdir()) == []
