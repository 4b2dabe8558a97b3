"""The seed section of the volume protocols: the largest cross-section over axes, compared in mm^2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imis.errors import PromptError
from imis.prompts.seed import SEED_AXES, largest_section, seed_axes

TEMPLATES = Path("/usr/share/mricron/templates")


def test_largest_section_compares_physical_areas():
    mask = np.zeros((20, 30, 40), bool)
    mask[5:15, 10:14, 8:30] = True  # 10 z x 4 y x 22 x voxels
    # voxel counts: a z slice 4 x 22 = 88, a y slice 10 x 22 = 220, an x slice 10 x 4 = 40
    assert largest_section(mask, (1.0, 1.0, 1.0)) == (1, 10, 220.0)
    # 0.2 mm between z slices: a y slice is 10 x 22 voxels of 0.2 x 1 mm = 44 mm^2 < a z slice's 88
    assert largest_section(mask, (0.2, 1.0, 1.0)) == (0, 5, 88.0)
    # one axis only: the earlier axial choice
    assert largest_section(mask, (1.0, 1.0, 1.0), seed_axes("z")) == (0, 5, 88.0)
    assert largest_section(mask, (1.0, 1.0, 1.0), seed_axes("x")) == (2, 8, 40.0)


def test_ties_keep_the_axial_slice_and_bad_input_is_refused():
    cube = np.zeros((6, 6, 6), bool)
    cube[1:4, 1:4, 1:4] = True
    assert largest_section(cube, (1.0, 1.0, 1.0)) == (0, 1, 9.0)
    with pytest.raises(PromptError, match=r"^seed axis 'w': one of largest, z, y, x$"):
        seed_axes("w")
    with pytest.raises(PromptError, match="non-empty"):
        largest_section(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0))
    assert SEED_AXES[0] == "largest"


def test_aal_parcels_seeded_across_their_long_extent():
    """On Colin27's AAL atlas (1 mm voxels): the anterior cingulum's largest section is sagittal (an x
    slice), twice the area of its largest axial one; the thalamus's stays axial."""
    if not (TEMPLATES / "aal.nii.gz").is_file():
        pytest.skip("mricron-data (Colin27, AAL) is not installed")
    from imis.io import read_image

    aal = read_image(TEMPLATES / "aal.nii.gz")
    spacing = tuple(reversed(aal.geometry.spacing))
    cingulum = aal.array == 32  # Cingulum_Ant_R
    ax, i, area = largest_section(cingulum, spacing)
    assert ax == 2 and area == cingulum[:, :, i].sum() > 1.9 * largest_section(cingulum, spacing, (0,))[2]
    thalamus = aal.array == 77  # Thalamus_L
    assert largest_section(thalamus, spacing)[:2] == (0, int(np.argmax(thalamus.sum(axis=(1, 2)))))
