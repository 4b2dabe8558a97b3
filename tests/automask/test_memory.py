"""An automask worker asks glibc's malloc to keep the memory it frees (the grid decode's cycle of 4-15 MB
tensors page-faulted fresh pages in before; benchmarks/automask.py measures the effect)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the mmap and trim thresholds are glibc's",
)
def test_thresholds_take_effect_under_glibc():
    # in a child: the setting is process-wide and must not leak into the test session
    code = f"import sys; sys.path.insert(0, {str(SRC)!r}); from imis.automask.memory import retain_freed_memory as r; print(r())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "True"


def test_other_platforms_keep_their_policy(monkeypatch):
    from imis.automask import memory

    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.retain_freed_memory() is False
