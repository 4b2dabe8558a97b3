"""Writing the imask id maps and their provenance into a dataset folder, resumably and atomically.

    DATASET/imask/x___<stem>.npy          int64 (H, W, 1) id map, 0 = no mask (the released format)
    DATASET/automask/settings.json        the run's settings, model, weights and fingerprint
    DATASET/automask/records/<stem>.json  per image: which id came from the model (predicted IoU,
                                          stability, click, output token) and which from the GT
    DATASET/dataset.json                  each processed entry gains "imask": "imask/x___<stem>.npy"

An image is finished when its record exists with the run's fingerprint (the record is written after
the id map, both through a temporary file and ``os.replace``); a rerun skips finished images and
redoes the others, so a killed run resumed gives the same bytes as an uninterrupted one. dataset.json
is rewritten once at the end from the records.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np

from imis.errors import InputError
from imis.io.files import atomic_output

__all__ = ["AutomaskStore"]

FOLDER = "automask"
_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp")  # atomic_output's temporary names


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class AutomaskStore:
    """The automask files of one dataset folder."""

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint

    def imask_rel(self, stem: str) -> str:
        return f"imask/x___{stem}.npy"

    def record_path(self, stem: str) -> Path:
        return self.root / FOLDER / "records" / f"{stem}.json"

    def read_record(self, stem: str) -> dict | None:
        try:
            return json.loads(self.record_path(stem).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_done(self, stem: str) -> bool:
        rec = self.read_record(stem)
        return (
            rec is not None
            and rec.get("fingerprint") == self.fingerprint
            and (self.root / self.imask_rel(stem)).is_file()
        )

    def stale(self, stems: list[str]) -> list[str]:
        """Images with a record of other settings (they would be overwritten)."""
        out = []
        for s in stems:
            rec = self.read_record(s)
            if rec is not None and rec.get("fingerprint") != self.fingerprint:
                out.append(s)
        return out

    def clean_temporaries(self) -> int:
        """Remove the temporary files a killed run left behind (never a finished file)."""
        n = 0
        for d in (self.root, self.root / "imask", self.root / FOLDER, self.root / FOLDER / "records"):
            for p in d.iterdir() if d.is_dir() else ():
                if _TMP_RE.match(p.name) and p.is_file():
                    with contextlib.suppress(OSError):
                        p.unlink()
                        n += 1
        return n

    def write_settings(self, settings: dict) -> None:
        with atomic_output(self.root / FOLDER / "settings.json") as tmp:
            tmp.write_bytes(_json_bytes(settings))

    def write(self, stem: str, id_map: np.ndarray, record: dict) -> None:
        """Id map first, then the record that marks the image finished."""
        path = self.root / self.imask_rel(stem)
        with atomic_output(path) as tmp:
            np.save(tmp, np.ascontiguousarray(id_map.astype(np.int64)[..., None]), allow_pickle=False)
        rec = {"fingerprint": self.fingerprint, "imask": self.imask_rel(stem), **record}
        with atomic_output(self.record_path(stem)) as tmp:
            tmp.write_bytes(_json_bytes(rec))

    def update_dataset_json(self, stems: set[str]) -> int:
        """Point the entries of finished images at their id maps; returns how many entries changed."""
        path = self.root / "dataset.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot be read back to record the imasks ({exc})") from None
        changed = 0
        for key in ("training", "test"):
            for entry in meta.get(key) or []:
                stem = Path(entry["image"]).stem
                if stem in stems and self.is_done(stem) and entry.get("imask") != self.imask_rel(stem):
                    entry["imask"] = self.imask_rel(stem)
                    changed += 1
        if changed:
            with atomic_output(path) as tmp:
                tmp.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        return changed
