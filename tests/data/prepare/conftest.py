"""Fixtures for the prepare/restack tests (helpers in prepare_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prepare_helpers import AAL, AAL_NAMES, COLIN, require_templates, write_colin_source


@pytest.fixture(scope="session")
def colin_aal():
    """(Colin27 ImageData, AAL ImageData, {value: name}) read once."""
    require_templates()
    from imis.io import read_image

    names = {}
    for line in AAL_NAMES.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return read_image(COLIN), read_image(AAL), names


@pytest.fixture(scope="session")
def colin_source(tmp_path_factory, colin_aal) -> Path:
    return write_colin_source(tmp_path_factory.mktemp("colin_src") / "Dataset001_Colin", colin_aal)


@pytest.fixture(scope="session")
def colin_prepared(tmp_path_factory, colin_source):
    """The Colin source prepared along z, y, x with the default protocol: (dataset folder, summary)."""
    from imis.data.prepare import prepare

    out = tmp_path_factory.mktemp("colin_ds") / "colin"
    summary = prepare(colin_source, out, progress=False)
    return out, summary
