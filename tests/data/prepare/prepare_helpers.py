"""Helpers for the prepare/restack tests: Colin27 + AAL (Debian mricron-data) as an nnU-Net raw folder.

To keep the tests fast the volumes are cropped to 60 x 70 x 60 (z, y, x) blocks around the thalami;
the cases are blocks at different offsets, so their slices differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TEMPLATES = Path("/usr/share/mricron/templates")
COLIN = TEMPLATES / "ch2.nii.gz"
AAL = TEMPLATES / "aal.nii.gz"
AAL_NAMES = TEMPLATES / "aal.nii.txt"
#: (z, y, x) corners of the crops; the thalami (AAL 77/78) span z 69-91, y 91-121, x 67-114.
CORNERS = [(50, 71, 60), (45, 66, 55), (55, 76, 65), (48, 70, 58), (52, 68, 62), (46, 74, 57)]
CROP = (60, 70, 60)


def require_templates() -> None:
    missing = [str(p) for p in (COLIN, AAL, AAL_NAMES) if not p.is_file()]
    if missing:
        pytest.skip(
            f"Colin27/AAL templates absent ({', '.join(missing)}); install the Debian package mricron-data"
        )


def crop(data, corner, size=CROP):
    """A (z, y, x) block of a volume, with the geometry that keeps it in place."""
    from imis.io import Geometry, ImageData

    z0, y0, x0 = corner
    block = np.ascontiguousarray(data.array[z0 : z0 + size[0], y0 : y0 + size[1], x0 : x0 + size[2]])
    origin = data.geometry.index_to_physical((x0, y0, z0))
    geometry = Geometry(data.geometry.spacing, origin, data.geometry.direction)
    return ImageData(block, geometry, kind="volume")


def write_colin_source(root: Path, colin_aal, n_cases: int = 2, size=CROP) -> Path:
    """An nnU-Net raw folder of ``n_cases`` Colin27/AAL crops, written with the MSD writer."""
    from imis.data.formats.msd import write_nnunet_raw

    colin, aal, names = colin_aal
    cases = []
    for k in range(n_cases):
        img = crop(colin, CORNERS[k], size)
        lab = crop(aal, CORNERS[k], size)
        cases.append((f"colin_{k:03d}", img, lab.array))
    write_nnunet_raw(root, cases, names, "MRI", name="Colin27AAL")
    return root
