"""Fixtures for the io tests: Colin27 (Debian mricron-data) and a DICOM series written from it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.io.dicom_helpers import write_dicom_series

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
