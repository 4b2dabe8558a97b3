"""Plain-text output shared by every command: below the stages, so that any of them can print a table
without importing :mod:`imis.cli` (which imports them all)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def print_table(rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None, file=None) -> None:
    """A plain aligned text table (the summary printed at the end of commands)."""
    file = file or sys.stdout
    if not rows:
        print("(no rows)", file=file)
        return
    columns = list(columns or rows[0].keys())
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=file)
