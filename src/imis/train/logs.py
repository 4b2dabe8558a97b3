"""What a training run writes as it goes: CSV logs (a resumed run keeps one table), TensorBoard, progress
bars."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class CsvLog:
    def __init__(self, path: Path, fields: list[str], enabled: bool) -> None:
        self.path, self.fields, self.enabled = path, fields, enabled
        if not enabled:
            return
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
        if header is not None and list(header) != fields:
            # A run resumed by a newer version that logs more columns: rewrite the old rows under the
            # new header (new columns left empty) rather than append misaligned rows.
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k)) for k in self.fields])


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)


def tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - TensorBoard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def progress_bar(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False)
