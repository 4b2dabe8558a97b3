"""Files in and out of the server: bounded uploads, paths confined to DATA_DIR, zips, exports.

Every refusal is an `AppError` carrying the HTTP status and a one-line reason the page shows.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import numpy as np

from imis.errors import ImisError
from imis.io import SUPPORTED_EXTENSIONS, file_extension, read_image, write_label_map

OPEN_EXTENSIONS = (*SUPPORTED_EXTENSIONS, ".zip")
EXPORT_FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "png": ".png", "dcm": ".dcm"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


class AppError(Exception):
    """A refusal with an HTTP status (4xx) and the reason shown to the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def safe_filename(name: str) -> str:
    """The base name of an uploaded file, reduced to safe characters; its extension must be readable."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    base = _SAFE_NAME.sub("_", base).lstrip(".")[:120]
    if not base:
        raise AppError(400, "the upload has no file name")
    ext = file_extension(base)
    if ext not in OPEN_EXTENSIONS:
        raise AppError(
            400,
            f"{base}: unsupported file type {ext or '(none)'!r}; open one of {', '.join(OPEN_EXTENSIONS)}",
        )
    return base


async def save_upload(chunks: AsyncIterator[bytes], declared: int | None, limit: int, dest: Path) -> int:
    """Stream an upload to `dest`, refusing it (413) as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before any byte is read; an undeclared or
    understated one is refused when the count passes the limit, without reading the rest.
    """
    mb = limit / 2**20
    if declared is not None and declared > limit:
        raise AppError(413, f"the file is {declared / 2**20:.1f} MB; the upload limit is {mb:.0f} MB")
    size = 0
    with open(dest, "wb") as f:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise AppError(413, f"the file exceeds the upload limit of {mb:.0f} MB")
            f.write(chunk)
    if size == 0:
        raise AppError(400, f"{dest.name}: the uploaded file is empty")
    return size


def resolve_in(root: Path, rel: str | None) -> Path:
    """`rel` inside DATA_DIR `root`, refusing absolute paths and '..' (400) and anything resolving
    outside it, symlinks included (404: nothing outside DATA_DIR is acknowledged to exist)."""
    rel = (rel or "").strip()
    if "\x00" in rel:
        raise AppError(400, "invalid character in the path")
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise AppError(400, f"{rel}: absolute paths are not allowed; give a path inside the data folder")
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if ".." in parts:
        raise AppError(400, f"{rel}: '..' is not allowed in a path")
    base = root.resolve()
    full = (base / Path(*parts)).resolve() if parts else base
    if not full.is_relative_to(base) or not full.exists():
        raise AppError(404, f"{rel}: not found in the data folder")
    return full


def list_dir(root: Path, rel: str | None) -> dict:
    """Folders and openable files of one folder of DATA_DIR (links out of it are left out)."""
    folder = resolve_in(root, rel)
    if not folder.is_dir():
        raise AppError(400, f"{rel}: not a folder")
    base = root.resolve()
    entries = []
    for p in sorted(folder.iterdir(), key=lambda q: q.name.lower()):
        if p.name.startswith("."):
            continue
        target = p.resolve()
        if not target.is_relative_to(base) or not target.exists():
            continue
        is_dir = target.is_dir()
        if not is_dir and file_extension(p.name) not in OPEN_EXTENSIONS:
            continue
        size = 0 if is_dir else target.stat().st_size
        entries.append({"name": p.name, "path": p.relative_to(base).as_posix(), "dir": is_dir, "size": size})
    here = folder.relative_to(base).as_posix()
    return {"path": "" if here == "." else here, "entries": entries}


_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n", "PNG"),
    ".jpg": (b"\xff\xd8\xff", "JPEG"),
    ".jpeg": (b"\xff\xd8\xff", "JPEG"),
    ".nrrd": (b"NRRD", "NRRD"),
    ".zip": (b"PK", "zip"),
    ".nii.gz": (b"\x1f\x8b", "gzip-compressed NIfTI"),
}


def check_content(path: Path) -> None:
    """Refuse a file whose bytes are not what its extension says (a PNG renamed .nii, ...): readers that
    sniff the content would otherwise open it as something else."""
    ext = file_extension(path)
    with open(path, "rb") as f:
        head = f.read(352)
    if ext in _MAGIC:
        magic, what = _MAGIC[ext]
        if not head.startswith(magic):
            raise AppError(400, f"{path.name}: not a {what} file (its content does not match the extension)")
    elif ext == ".nii":
        sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
        if len(head) < 348 or not sizes & {348, 540}:
            raise AppError(
                400, f"{path.name}: not a NIfTI file (no NIfTI header; is it another format renamed?)"
            )


def _nifti_claim(head: bytes) -> int | None:
    """Bytes a NIfTI-1/2 header says the file holds (header + voxels); None when `head` is no NIfTI header."""
    for order in ("<", ">"):
        size = int.from_bytes(head[:4], "little" if order == "<" else "big")
        if size == 348 and len(head) >= 348:
            dims = np.frombuffer(head, f"{order}i2", 8, 40)
            bitpix = int(np.frombuffer(head, f"{order}i2", 1, 72)[0])
            offset = int(np.frombuffer(head, f"{order}f4", 1, 108)[0])
        elif size == 540 and len(head) >= 540:
            dims = np.frombuffer(head, f"{order}i8", 8, 16)
            bitpix = int(np.frombuffer(head, f"{order}i2", 1, 14)[0])
            offset = int(np.frombuffer(head, f"{order}i8", 1, 168)[0])
        else:
            continue
        n = int(dims[0])
        if not 1 <= n <= 7:
            return None
        voxels = 1
        for d in dims[1 : n + 1]:
            voxels *= max(int(d), 1)
        return max(offset, size) + voxels * max(bitpix, 8) // 8
    return None


def check_inflated(path: Path, limit: int) -> None:
    """Refuse (413) a gzip-compressed file (.nii.gz) that would inflate beyond `limit` bytes, without
    inflating it all: first by what its NIfTI header claims (the first 540 inflated bytes), then by
    counting while inflating in chunks, stopping as soon as the count passes the limit (a header that
    understates the data, or data after it)."""
    if file_extension(path) != ".nii.gz":
        return
    mb = limit / 2**20
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
    size, head, checked = 0, b"", False
    try:
        with open(path, "rb") as f:
            pending = f.read(1 << 16)
            while pending and not inflater.eof:
                data = inflater.decompress(pending, 1 << 20)  # at most 1 MiB inflated at a time
                pending = inflater.unconsumed_tail or f.read(1 << 16)
                size += len(data)
                head += data[: max(0, 540 - len(head))]
                if not checked and (len(head) >= 540 or inflater.eof or not pending):
                    checked = True
                    claim = _nifti_claim(head)
                    if claim is not None and claim > limit:
                        raise AppError(
                            413,
                            f"{path.name}: its header says it inflates to {claim / 2**20:.0f} MB, above "
                            f"the limit of {mb:.0f} MB for decompressed data (--max-upload-mb)",
                        )
                if size > limit:
                    raise AppError(
                        413,
                        f"{path.name}: it inflates to more than the limit of {mb:.0f} MB (--max-upload-mb)",
                    )
    except zlib.error as exc:
        raise AppError(400, f"{path.name}: not a readable gzip file ({exc})") from None


def open_path(path: Path, limit: int, workdir: Path, made: list[Path] | None = None):
    """Read an image, volume, DICOM folder or zip (DICOM series or one image inside) as ImageData.

    A zip is extracted under `workdir`; the folder is appended to `made` (a DICOM series' files must
    outlive the read for a DICOM SEG export; the caller removes the folder with the session)."""
    if path.is_file():
        check_content(path)
        if file_extension(path) == ".zip":
            path = _extract_zip(path, limit, workdir)
            if made is not None:
                made.append(path if path.is_dir() else path.parent)
            if path.is_file():
                check_content(path)
        if path.is_file():
            check_inflated(path, limit)
    return read_image(path)


def _extract_zip(path: Path, limit: int, workdir: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="zip-", dir=workdir))
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AppError(400, f"{path.name}: not a readable zip file ({exc})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if not members:
            raise AppError(400, f"{path.name}: the zip file is empty")
        # the sizes the zip declares bound what extraction writes (zipfile stops each member there and
        # refuses it when its data says otherwise), so nothing is inflated before this check
        inflated = sum(m.file_size for m in members)
        if len(members) > 5000 or inflated > limit:
            raise AppError(
                413,
                f"{path.name}: the zip inflates to {inflated / 2**20:.0f} MB in {len(members)} files, above "
                f"the limit of {limit / 2**20:.0f} MB (--max-upload-mb) or 5000 files",
            )
        for i, m in enumerate(members):
            name = PurePosixPath(m.filename).name
            if not name or name.startswith("."):
                continue
            with zf.open(m) as src, open(out / f"{i:05d}_{_SAFE_NAME.sub('_', name)}", "wb") as dst:
                shutil.copyfileobj(src, dst)
    files = [p for p in out.iterdir() if p.is_file()]
    singles = [p for p in files if file_extension(p) in SUPPORTED_EXTENSIONS and file_extension(p) != ".dcm"]
    return singles[0] if len(files) == 1 and singles else out


def write_export(doc, fmt: str, workdir: Path) -> Path:
    """Write the document's label map in `fmt` with the input's geometry; returns the file."""
    if fmt not in EXPORT_FORMATS:
        raise AppError(400, f"export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "png" and not doc.is_2d:
        raise AppError(400, "PNG export is for 2D images; export a volume as NIfTI or NRRD")
    stem = re.sub(r"(\.nii)?\.[A-Za-z0-9]+$", "", doc.name) or "image"
    out = Path(tempfile.mkdtemp(prefix="export-", dir=workdir)) / f"{stem}_labels{EXPORT_FORMATS[fmt]}"
    labels = doc.export_labels()
    if fmt == "dcm":  # DICOM SEG, for volumes opened from a DICOM series (frames reference its files)
        from imis.io.dicom_seg import write_dicom_seg

        if doc.is_2d:
            raise AppError(400, "DICOM SEG export needs a volume opened from a DICOM series")
        names = {o.label: o.name for o in doc.objects}
        try:
            write_dicom_seg(out, labels, reference=doc.data, names=names)
        except ImisError as exc:  # name the files as the user knows them, not by server paths
            msg = str(exc).replace(str(out), out.name).replace(str(doc.data.path), doc.name)
            raise AppError(400, msg) from None
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom refusing the series
            raise AppError(400, f"DICOM SEG export failed: {type(exc).__name__}: {exc}") from None
        return out
    small = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels
    write_label_map(out, small, reference=doc.data)
    return out
