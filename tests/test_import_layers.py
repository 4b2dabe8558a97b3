"""The package's import graph, read from the source (every import, those inside functions included):
no cycle between modules, and no stage importing a higher one
(io <- data/prompts <- models <- session <- bench/train/automask <- app/cli/demo)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: rank of each top-level part of ``imis``: a module may import its own rank or a lower one
RANKS = {
    "": 0,  # imis/__init__.py
    "errors": 0,
    "console": 0,
    "runtime_options": 0,  # --backend/--precision arguments (onnx branch)
    "cli_options": 0,  # argparse pieces shared by prepare (data) and automask
    "names": 0,
    "io": 1,
    "data": 2,
    "prompts": 2,
    "models": 3,
    "session": 4,
    "bench": 5,
    "train": 5,
    "automask": 5,
    "app": 6,
    "cli": 6,
    "cli_help": 6,  # the help texts of cli.py's subcommands
    "demo": 6,
}


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for path in sorted((root / "imis").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _targets(module: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """The modules of ``imis`` that one import statement names (``from a import b``: ``a.b`` when it is a
    module, else ``a``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
            base = ".".join(parts[:keep] + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" for a in node.names] + [base]
    return [n for n in names if n in mods]


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the modules of ``imis`` it imports (a module importing its own parent package is left
    out: Python has already imported the parent by then)."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[m] |= {t for t in _targets(m, path, node, mods) if t != m and not m.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def rank(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    if part not in RANKS:
        raise KeyError(f"{module}: its part {part!r} has no stage in RANKS; add it")
    return RANKS[part]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} -> {t}" for m, ts in sorted(graph.items()) for t in sorted(ts) if rank(t) > rank(m)]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_stage_imports_a_higher_one():
    assert layer_violations(import_graph()) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "imis" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_every_stage_package_is_ranked_and_every_rank_is_a_real_part():
    # the stages of the preamble each have a rank, and RANKS names no part that is gone (a renamed
    # stage would otherwise keep a stale entry while its new name fails only when first imported)
    parts = {m.split(".")[1] if "." in m else "" for m in import_graph()}
    assert {"io", "data", "automask", "models", "session", "train", "bench", "app"} <= parts
    assert parts == set(RANKS)


def test_the_checks_see_a_lazy_cycle_and_an_upward_import(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "bench/__init__.py": "",
            "bench/runner.py": "from imis.bench.report import x\n",
            "bench/report.py": "def f():\n    from imis.bench import runner\n",
            "io/__init__.py": "",
            "io/image.py": "def g():\n    from .. import cli\n",
            "cli.py": "",
        },
    )
    graph = import_graph(root)
    assert cycles(graph) == [["imis.bench.report", "imis.bench.runner"]]
    assert layer_violations(graph) == ["imis.io.image -> imis.cli"]


def test_a_new_top_level_part_must_be_given_a_stage():
    with pytest.raises(KeyError, match="no stage"):
        rank("imis.newthing.module")
