"""File helpers shared by the readers, writers and configuration loaders: compound extensions, atomic
output, YAML files with clear errors."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "file_extension", "read_yaml"]


def file_extension(path: str | os.PathLike) -> str:
    """Lower-case extension, ``.nii.gz`` kept whole: ``'a/b.NII.GZ'`` -> ``'.nii.gz'``, ``'x'`` -> ``''``."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz") and len(name) > len(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` with ``os.replace``.

    The temporary name keeps the extension (``.x.nii.gz.<hex>.tmp.nii.gz``) so that writers choosing the
    format by extension (SimpleITK, Pillow, numpy) behave as for ``path``. A reader never sees a
    half-written ``path``; on any error the temporary file is removed and ``path`` is left untouched.
    Missing parent folders are created. The file is created with mode 0o666 less the umask.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ext = file_extension(target)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp{ext}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        os.close(fd)
        break
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def read_yaml(path: str | os.PathLike, what: str = "configuration") -> Any:
    """Parse a YAML (or JSON) file; a missing, unreadable or invalid file is an InputError naming it."""
    import yaml

    from imis.errors import InputError

    src = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{src}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{src}: cannot read the {what} ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{src}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable, non-UTF-8 or invalid file is an InputError naming it."""
    import json

    from imis.errors import InputError

    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None


def read_json_object(path: str | os.PathLike, what: str, not_found: str) -> dict:
    """:func:`read_json` of a file that must hold a JSON object (a dataset's ``dataset.json``);
    ``not_found``: what a missing file means, said in the error (``not an MSD / nnU-Net raw folder``)."""
    from imis.errors import InputError

    if not Path(path).is_file():
        raise InputError(f"{path}: not found ({not_found})")
    meta = read_json(path, what)
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


@contextmanager
def content_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a TypeError / ValueError / ... met while interpreting a parsed file into an InputError naming it."""
    from imis.errors import ImisError, InputError

    try:
        yield
    except ImisError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise InputError(f"{path}: unexpected content ({type(exc).__name__}: {msg})") from None
