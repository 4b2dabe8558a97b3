"""Fixtures for the io tests: Colin27 (Debian mricron-data) and a DICOM series written from it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")


@pytest.fixture(scope="session")
def colin_path() -> Path:
    if not COLIN27.is_file():
        pytest.skip(f"Colin27 template absent at {COLIN27} (install the Debian package mricron-data)")
    return COLIN27


@pytest.fixture(scope="session")
def colin(colin_path):
    from imis.io import read_image

    return read_image(colin_path)


@pytest.fixture(scope="session")
def colin_sitk(colin_path):
    import SimpleITK as sitk

    return sitk.ReadImage(str(colin_path))


def oblique_direction() -> tuple[float, ...]:
    """A proper rotation (20 deg about z, then 10 deg about x): column 2 = column 0 x column 1."""
    a, b = math.radians(20), math.radians(10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rx @ rz).ravel())


def write_dicom_series(image, folder: Path, series_uid: str, modality: str = "MR", prefix: str = "s") -> None:
    """Write a 3D SimpleITK image as one DICOM file per slice (as SimpleITK's DicomSeriesFromArray example)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {
        "0008|0060": modality,
        "0008|0008": "DERIVED\\SECONDARY",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.77",
        "0020|000e": series_uid,
        "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0008|103e": "imis io test",
    }
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(sl)


@pytest.fixture(scope="session")
def dicom_writer():
    """:func:`write_dicom_series`, as a fixture (test modules cannot import conftest)."""
    return write_dicom_series


@pytest.fixture
def colin_block(colin_sitk):
    """A small int16 block of Colin27 with anisotropic spacing, an oblique direction and an odd origin."""
    import SimpleITK as sitk

    block = sitk.Cast(colin_sitk[60:124, 80:144, 86:94], sitk.sitkInt16) * 4 - 100
    block.SetSpacing((0.8, 0.9, 2.5))
    block.SetDirection(oblique_direction())
    block.SetOrigin((-12.5, 30.25, 7.0))
    return block
