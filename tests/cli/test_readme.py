"""Every example of the README runs and writes what it names, so that none can go stale (issue 22).

Each ``bash`` block (but the sections of :data:`readme_helpers.NOT_RUN`) is run command by command,
in order, through ``imis.cli.main`` in one folder beside a ``../shared`` link, as a user would paste
them; every file or folder a command names with ``-o``/``--out``/``--overlay``/``--preview`` must exist
afterwards. The README's own commands are run; only ``imis bench`` gets ``--limit-images 1`` and
``--max-interactions 1`` (the same code on one image of the split, one interaction instead of 9: the
README's iterative runs take minutes on 2 cores, the random walker most). The ``python`` blocks are executed too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from readme_helpers import COLIN, NOT_RUN, commands, make_inputs, outputs, readme_blocks, yaml_files

from imis.cli import main

BLOCKS = [(section, code) for section, code in readme_blocks("bash") if section not in NOT_RUN]
HEAVY = ("Datasets", "Benchmark")  # prepare with Ray, stats on btcv-demo, six bench runs


def _params():
    for i, (section, code) in enumerate(BLOCKS):
        marks = [pytest.mark.slow] if section.startswith(HEAVY) else []
        yield pytest.param(code, id=f"{i}-{section.split(':')[0].split()[0].lower()}", marks=marks)


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_dir) -> Path:
    if not (COLIN / "ch2.nii.gz").is_file():
        pytest.skip("Colin27 not installed (apt-get install mricron-data)")
    folder = tmp_path_factory.mktemp("readme") / "work"
    folder.mkdir()
    make_inputs(folder, shared_dir)
    return folder


def _small(argv: list[str]) -> list[str]:
    """``imis bench`` on one image of the split with one interaction (the README's 9 take minutes here)."""
    if argv[0] != "bench":
        return argv
    argv = [*argv, "--limit-images", "1"] if "--limit-images" not in argv else list(argv)
    if "--max-interactions" in argv:
        argv[argv.index("--max-interactions") + 1] = "1"
        return argv
    return [*argv, "--max-interactions", "1"]


def test_readme_sections_found():
    sections = [s for s, _ in readme_blocks("bash")]
    for wanted in ("Segment from the command line", "Datasets: prepare, restack, stats", "Benchmark"):
        assert wanted in sections, f"README has no bash block under {wanted!r}"
    assert set(NOT_RUN) <= set(sections), "a section left out of this test is gone: update NOT_RUN"
    assert {"cases.yaml", "prepare.yaml"} <= set(yaml_files())


@pytest.mark.parametrize("code", list(_params()))
def test_readme_commands_run(code, work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    for argv in commands(code):
        assert argv[0] == "imis", f"README command {' '.join(argv)!r} is not an imis command"
        rc = main(_small(argv[1:]))
        captured = capsys.readouterr()
        assert rc == 0, f"{' '.join(argv)} -> exit {rc}: {captured.err.strip()[-500:]}"
        assert captured.out.strip(), f"{' '.join(argv)} printed nothing"
        for out in outputs(argv):
            assert (work / out).exists(), f"{' '.join(argv)} did not write {out}"


def test_readme_python_runs(work, monkeypatch):
    monkeypatch.chdir(work)
    blocks = readme_blocks("python")
    assert blocks, "README has no python block"
    for section, code in blocks:
        namespace: dict = {}
        exec(compile(code, f"README.md ({section})", "exec"), namespace)
        if "session" in namespace:
            assert namespace["session"].label_map.any(), f"{section}: the example segmented nothing"
