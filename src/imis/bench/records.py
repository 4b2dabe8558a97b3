"""The predictions file of a run directory (``predictions.jsonl``): one JSON row per prediction, appended
and flushed row by row, read back with torn or repeated lines ignored (see :mod:`imis.bench.runner` for
the row fields)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def row_key(row: dict[str, Any]) -> tuple:
    return (row.get("model"), row.get("image"), row.get("target"), row.get("kind"), row.get("k"))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a predictions.jsonl; a torn or malformed line is ignored, a repeated key keeps the first."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        key = row_key(row)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


class RowWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = {row_key(r) for r in read_rows(path)}
        # a torn last line (no final newline) is cut so that the next row starts on its own line
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                path.write_bytes(data[: data.rfind(b"\n") + 1])
        self.fh = path.open("a", encoding="utf-8")
        self.written = 0

    def write(self, row: dict[str, Any]) -> None:
        key = row_key(row)
        if key in self.done:
            return
        self.fh.write(json.dumps(row, sort_keys=True, allow_nan=False) + "\n")
        self.fh.flush()
        self.done.add(key)
        self.written += 1

    def close(self) -> None:
        self.fh.close()
