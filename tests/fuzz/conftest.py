"""Seed files of every format, written in a temporary folder from real data read in place:
btcv-demo (PNG, label .npz, imask .npz, dataset.json), Colin27 (NIfTI and the volumes written from it),
pydicom's sample DICOM files, the parity fixtures' SAM / IMIS-Net weights and LiteMedSAM's checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzz_helpers import FUZZ_CAP, write_report

from tests.io.dicom_helpers import write_dicom_series

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def pytest_sessionfinish(session, exitstatus):
    write_report()


@pytest.fixture(autouse=True)
def _fuzz_cap(monkeypatch):
    """Every fuzz test runs with a low reading cap (and each read with a bounded data segment)."""
    monkeypatch.setenv("IMIS_MAX_IMAGE_BYTES", FUZZ_CAP)


@pytest.fixture(scope="session")
def seed_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("seeds")


@pytest.fixture(scope="session")
def colin_block():
    """A real 24 x 20 x 6 int16 block of Colin27 (x, y, z) with anisotropic spacing and an odd origin."""
    if not COLIN27.is_file():
        pytest.skip(f"Colin27 absent at {COLIN27} (Debian mricron-data)")
    import SimpleITK as sitk

    block = sitk.Cast(sitk.ReadImage(str(COLIN27))[80:104, 100:120, 88:94], sitk.sitkInt16)
    block.SetSpacing((0.8, 0.9, 2.5))
    block.SetOrigin((-12.5, 30.25, 7.0))
    return block


@pytest.fixture(scope="session")
def btcv_crop(btcv_dir) -> np.ndarray:
    """A real 40 x 48 RGB crop of a btcv-demo CT slice (the liver's edge)."""
    from PIL import Image

    with Image.open(btcv_dir / "image" / "ABD_001_100.png") as im:
        return np.asarray(im.convert("RGB"))[200:240, 100:148].copy()


@pytest.fixture(scope="session")
def image_seeds(seed_dir, colin_block, btcv_crop) -> dict[str, Path]:
    """One real seed file per image format that :func:`imis.io.read_image` reads."""
    import SimpleITK as sitk
    from PIL import Image

    out = seed_dir / "images"
    out.mkdir()
    seeds = {}
    Image.fromarray(btcv_crop).save(out / "seed.png")
    Image.fromarray(btcv_crop).save(out / "seed.jpg", quality=90)
    arr = sitk.GetArrayFromImage(colin_block)
    pages = [Image.fromarray(a.astype(np.uint16)) for a in arr[:3]]
    pages[0].save(out / "seed.tif", save_all=True, append_images=pages[1:])
    for name in ("png", "jpg", "tif"):
        seeds[name] = out / f"seed.{name}"
    floats = sitk.Cast(colin_block, sitk.sitkFloat32)
    sitk.WriteImage(floats, str(out / "seed.nii"))  # float data: the NaN/Inf scan runs
    sitk.WriteImage(colin_block, str(out / "seed.nii.gz"))
    sitk.WriteImage(colin_block, str(out / "seed.nrrd"), False)
    sitk.WriteImage(colin_block, str(out / "seed.mha"), True)
    sitk.WriteImage(colin_block, str(out / "seed.mhd"), False)
    for name in ("nii", "nii.gz", "nrrd", "mha", "mhd"):
        seeds[name] = out / f"seed.{name}"
    np.save(out / "seed.npy", arr)
    np.savez_compressed(out / "seed.npz", image=arr, spacing=np.array([2.5, 0.9, 0.8]))
    seeds["npy"], seeds["npz"] = out / "seed.npy", out / "seed.npz"
    return seeds


@pytest.fixture(scope="session")
def dicom_seed() -> Path:
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="session")
def dicom_series(seed_dir, colin_block) -> Path:
    """A 4-file DICOM series written from the Colin27 block (as SimpleITK's DicomSeriesFromArray)."""
    folder = seed_dir / "series"
    write_dicom_series(colin_block[:, :, :4], folder, "1.2.826.0.1.3680043.2.1125.1.4242")
    return folder
