"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    """One embedding cache folder for the whole session (the tiny encoder is deterministic)."""
    return tmp_path_factory.mktemp("embeddings")
