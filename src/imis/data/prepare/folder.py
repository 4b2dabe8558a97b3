"""The output folder of `imis prepare`: its file names, atomic writes, the lock, the settings a resume must
match, the per-case done-markers and the cleanup of a killed run's leftovers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imis.data.prepare.config import PrepareConfig
from imis.data.prepare.layout import Layout
from imis.data.prepare.sources import SourceInfo
from imis.errors import InputError
from imis.io import atomic_output

FORMAT_VERSION = 1
CASES_DIR = "cases"
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
SETTINGS = "prepare.json"
LOCK = ".prepare.lock"
#: Settings that change only the split/leakage step: a rerun may change them without redoing cases.
_SPLIT_KEYS = (
    "name",
    "description",
    "test_fraction",
    "max_test_images",
    "seed",
    "leakage_datasets",
    "vocabulary",
)
#: Settings added after format version 1, left out of the fingerprint at their default (which gives the
#: output of the versions before them), so that datasets prepared before they existed still resume.
_LATER_KEYS: dict[str, Any] = {"slice_step": 1, "drop_duplicate_slices": False}
_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp")


def json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    return (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def clean_temporaries(root: Path) -> int:
    n = 0
    for d in (root, root / "image", root / "label", root / "imask", root / CASES_DIR):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if _TMP_RE.match(p.name) and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    f = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"{root}: another `imis prepare` is writing this dataset; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        f.close()


def run_settings(
    source: str, info: SourceInfo, cfg: PrepareConfig, layout: Layout, modality: tuple[str, ...]
):
    case_cfg = {
        k: v
        for k, v in cfg.to_json().items()
        if k not in _SPLIT_KEYS and not (k in _LATER_KEYS and v == _LATER_KEYS[k])
    }
    fingerprint = _fingerprint(
        {"version": FORMAT_VERSION, "config": case_cfg, "layout": layout.to_json(), "modality": modality}
    )
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "source": str(Path(source).resolve()),
        "source_kind": info.kind,
        "modality": list(modality),
        "config": cfg.to_json(),
        "layout": layout.to_json(),
    }


def check_out_folder(root: Path, settings: dict) -> None:
    """Refuse to write into a folder that is not ours or was prepared with other per-case settings."""
    path = root / SETTINGS
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("fingerprint") != settings["fingerprint"]:
            diff = sorted(
                k
                for k in set(old.get("config", {})) | set(settings["config"])
                if old.get("config", {}).get(k) != settings["config"].get(k) and k not in _SPLIT_KEYS
            )
            if old.get("layout") != settings["layout"]:
                diff.append("labels/vocabulary (channel layout)")
            if old.get("modality") != settings["modality"]:
                diff.append("modality")
            raise InputError(
                f"{root}: was prepared with different settings ({', '.join(diff) or 'format version'}); "
                "resume with the same settings, or choose a new --out folder"
            )
    elif root.exists() and any(p.name != LOCK for p in root.iterdir()):
        raise InputError(
            f"{root}: exists and is not a dataset made by `imis prepare` (no {SETTINGS}); choose a new or "
            "empty --out folder"
        )


def done_record(root: Path, case: str, fingerprint: str) -> dict | None:
    path = root / CASES_DIR / f"{case}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("fingerprint") != fingerprint or rec.get("case") != case:
        return None
    return rec


def remove_case_files(root: Path, rec: dict) -> None:
    for s in rec.get("slices", []):
        for key in ("image", "label", "imask"):
            if s.get(key):
                with contextlib.suppress(OSError):
                    (root / s[key]).unlink()
    with contextlib.suppress(OSError):
        (root / CASES_DIR / f"{rec['case']}.json").unlink()
