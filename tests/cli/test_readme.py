"""Every example of the README runs and writes what it names, so that none can go stale (issue 22).

Each ``bash`` block (but the sections of :data:`readme_helpers.NOT_RUN`) is run command by command,
in order, through ``imis.cli.main`` in one folder beside a ``../shared`` link, as a user would paste
them; every file or folder a command names with ``-o``/``--out``/``--overlay``/``--preview`` (and the
``imask/`` of ``imis automask DATASET``) must exist afterwards. The README's own commands are run; only
``imis bench`` gets ``--limit-images 1`` and ``--max-interactions 1`` (the same code on one image of the
split, one interaction instead of 9: the README's iterative runs take minutes on 2 cores, the random
walker most) and ``imis automask`` ``--points-per-side 8`` (the same generator on 64 clicks instead of
1024). ``imis serve`` commands are started as written on a free port (``--port`` added), asked
``/api/info`` (and ``/api/files`` where a DATA_DIR is given, without the token where one is set) and
stopped. A command needing what this machine lacks (:data:`readme_helpers.NOT_RUN_COMMANDS`: a Ray
cluster with GPUs) is named with its reason. The ``python`` blocks are executed too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from readme_helpers import (
    COLIN,
    NOT_RUN,
    NOT_RUN_COMMANDS,
    REPO,
    SERVE_SECTION,
    USER_PATHS,
    commands,
    make_inputs,
    not_run_reason,
    outputs,
    producer,
    readme_blocks,
    split_env,
    yaml_files,
)

from imis.cli import main

BLOCKS = [(s, code) for s, code in readme_blocks("bash") if s not in NOT_RUN and s != SERVE_SECTION]
# prepare with Ray, stats on btcv-demo, six bench runs; two Colin27 propagations and a volume bench;
# two automask runs (each loads and encodes; the second in two processes)
HEAVY = ("Datasets", "Benchmark", "Volumes", "Interactive masks")


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
    """``imis bench`` on one image of the split with one interaction (the README's 9 take minutes here);
    ``imis automask`` with an 8 x 8 click grid (the default 32 x 32 took 6 minutes a run at load 20)."""
    if argv[0] == "automask" and "--points-per-side" not in argv:
        return [*argv, "--points-per-side", "8"]
    if argv[0] != "bench":
        return argv
    argv = [*argv, "--limit-images", "1"] if "--limit-images" not in argv else list(argv)
    if "--max-interactions" in argv:
        argv[argv.index("--max-interactions") + 1] = "1"
        return argv
    return [*argv, "--max-interactions", "1"]


def _made_first(argv: list[str], work: Path, capsys) -> None:
    """A dataset another section's command writes (``automask data/mydataset`` reads what ``prepare``
    wrote), made by that README command when this section runs alone (``-k``)."""
    if argv[1] == "automask" and not (work / argv[2]).exists():
        first = producer(argv[2])
        assert first, f"no README command writes {argv[2]}, which {' '.join(argv)} reads"
        assert main(_small(first[1:])) == 0, f"{' '.join(first)}: {capsys.readouterr().err[-500:]}"
        capsys.readouterr()


def test_readme_sections_found():
    sections = [s for s, _ in readme_blocks("bash")]
    for wanted in ("Segment from the command line", "Datasets: prepare, restack, stats", "Benchmark"):
        assert wanted in sections, f"README has no bash block under {wanted!r}"
    assert set(NOT_RUN) <= set(sections), "a section left out of this test is gone: update NOT_RUN"
    assert SERVE_SECTION in sections, f"README has no bash block under {SERVE_SECTION!r}"
    lines = [" ".join(argv) for _, code in readme_blocks("bash") for argv in commands(code)]
    for text in NOT_RUN_COMMANDS:
        assert any(text in line for line in lines), f"no README command has {text!r}: update NOT_RUN_COMMANDS"
    assert {"cases.yaml", "prepare.yaml"} <= set(yaml_files())


@pytest.mark.parametrize("code", list(_params()))
def test_readme_commands_run(code, work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    for argv in commands(code):
        env, argv = split_env(argv)
        assert argv[0] == "imis", f"README command {' '.join(argv)!r} is not an imis command"
        if not_run_reason(argv):
            continue  # named in NOT_RUN_COMMANDS, with its reason
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _made_first(argv, work, capsys)
        rc = main(_small(argv[1:]))
        captured = capsys.readouterr()
        assert rc == 0, f"{' '.join(argv)} -> exit {rc}: {captured.err.strip()[-500:]}"
        assert captured.out.strip(), f"{' '.join(argv)} printed nothing"
        for out in outputs(argv):
            assert (work / out).exists(), f"{' '.join(argv)} did not write {out}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url, headers={"X-Imis-Token": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _wait_until_up(proc: subprocess.Popen, url: str, token: str | None, log: Path) -> dict:
    """/api/info once the server answers (it loads the model first); fails if the process ends."""
    deadline = time.monotonic() + 300  # a model load on a loaded 2-core machine
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited ({proc.returncode}): {log.read_text()[-800:]}"
        try:
            status, info = _get(f"{url}/api/info", token)
            assert status == 200, f"/api/info answered {status}"
            return info
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"the server did not answer within 300 s: {log.read_text()[-800:]}")


def _serve_commands() -> list[list[str]]:
    return [argv for s, code in readme_blocks("bash") if s == SERVE_SECTION for argv in commands(code)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_serve_commands())))
def test_readme_serve_commands_answer(index, work, tmp_path):
    """Each README ``imis serve`` command, as written (the user's ``/data`` is a folder here) plus a free
    port: it answers /api/info, lists DATA_DIR where one is given, refuses a call without its token."""
    env, argv = split_env(_serve_commands()[index])
    argv = [USER_PATHS.get(a, a) for a in argv]
    assert argv[:2] == ["imis", "serve"], f"{' '.join(argv)} is not an imis serve command"
    token = argv[argv.index("--token") + 1] if "--token" in argv else None
    has_data_dir = len(argv) > 2 and not argv[2].startswith("-")
    port = _free_port()
    run_env = {k: v for k, v in os.environ.items() if k != "IMIS_TOKEN"} | env
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        cmd = [sys.executable, "-m", "imis.cli", *argv[1:], "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=work, env=run_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        info = _wait_until_up(proc, url, token, log)
        assert info["model"] == "imis-lite" and info["data_dir"] is has_data_dir, info
        if has_data_dir:
            status, listing = _get(f"{url}/api/files", token)
            assert status == 200 and listing, f"DATA_DIR {argv[2]} listed {status}: {listing}"
        if token:
            assert _get(f"{url}/api/info")[0] == 401, "a call without the token was answered"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_readme_python_runs(work, monkeypatch):
    monkeypatch.chdir(work)
    blocks = readme_blocks("python")
    assert blocks, "README has no python block"
    for section, code in blocks:
        namespace: dict = {}
        exec(compile(code, f"README.md ({section})", "exec"), namespace)
        if "session" in namespace:
            assert namespace["session"].label_map.any(), f"{section}: the example segmented nothing"
