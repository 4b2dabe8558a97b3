"""The released IMed-361M layout: reading, and byte-deterministic writing.

    DATASET/dataset.json                                name, description, dimension, modality, labels,
                                                        numTraining/training, numTest/test
    DATASET/image/<stem>.png                            8-bit RGB (grey replicated into 3 channels)
    DATASET/label/x___<stem>.(C, H, W, 1).npz           scipy.sparse CSR (C, H*W), int32 ones; channel c
                                                        holds label c + 1 (background dropped)
    DATASET/imask/x___<stem>.npy                        int64 (H, W, 1) id map of the generated
                                                        "interactive masks" (0 = no mask)

Every training/test entry of ``dataset.json`` is ``{"image": ..., "label": ..., "imask": ...}`` with paths
relative to the dataset folder. ``../shared/data/btcv-demo`` is a real instance (its imasks re-packed as
``.npz`` with key ``imask``; :func:`read_imask` reads both).

Writing (:func:`write_sample`, :func:`write_dataset_json`) is atomic per file (temporary file +
``os.replace``) and byte-deterministic: PNGs at zlib level 6 without metadata chunks; ``.npz`` archives
are assembled here byte by byte in the layout of the released files (entry order of
``scipy.sparse.save_npz``, fixed 1980-01-01 date, mode 0600, zlib level 6), so that a label re-written from
a released one is byte-identical to it; ``.npy`` files carry no timestamp. Re-running a writer on the same
arrays gives byte-identical files.
"""

from __future__ import annotations

import ast
import io
import json
import re
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imis.data.sample import Sample
from imis.errors import InputError
from imis.io.files import atomic_output, read_json

__all__ = [
    "ImedDataset",
    "ImedEntry",
    "imask_path",
    "iter_samples",
    "label_filename",
    "label_shape",
    "parse_stem",
    "read_dataset",
    "read_image",
    "read_imask",
    "read_label",
    "read_sample",
    "write_dataset_json",
    "write_npz",
    "write_sample",
]

_SHAPE_RE = re.compile(r"\.(\([0-9,\s]+\))\.npz$")
_STEM_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)$")

#: zlib level of every PNG and .npz written here (numpy's and zlib's default).
COMPRESS_LEVEL = 6
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest ZIP date


@dataclass(frozen=True)
class ImedEntry:
    """One image of an IMed-361M dataset with its label file and (optional) imask file.

    ``extra`` holds any other keys of the ``dataset.json`` entry (e.g. a provenance record).
    """

    image: Path
    label: Path
    imask: Path | None
    split: str
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass(frozen=True)
class ImedDataset:
    """A parsed ``dataset.json``; ``meta`` is the whole JSON except the entry lists."""

    root: Path
    name: str
    modality: str
    labels: dict[int, str]  # label value (1..C) -> name; channel c holds label c + 1
    entries: tuple[ImedEntry, ...]
    meta: dict = field(default_factory=dict, compare=False)

    def split(self, name: str) -> list[ImedEntry]:
        return [e for e in self.entries if e.split == name]

    @property
    def description(self) -> str:
        return str(self.meta.get("description", ""))

    def label_names(self, n_channels: int | None = None) -> list[str]:
        """Name of each channel (``labels[c + 1]``; ``label_<c+1>`` where dataset.json has none)."""
        n = n_channels if n_channels is not None else max(self.labels, default=0)
        return [self.labels.get(c + 1, f"label_{c + 1}") for c in range(n)]


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------
def read_dataset(root: str | Path) -> ImedDataset:
    """See :func:`_read_dataset`; a file whose content has the wrong types is an InputError naming it."""
    from imis.io.files import content_errors

    with content_errors(Path(root) / "dataset.json"):
        return _read_dataset(root)


def _read_dataset(root: str | Path) -> ImedDataset:
    """Parse ``root/dataset.json`` (entries only; no image is opened)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: not found (not an IMed-361M dataset folder)")
    meta = read_json(meta_path, "dataset.json")
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    try:
        labels = {int(k): str(v) for k, v in meta.get("labels", {}).items() if int(k) != 0}
    except (TypeError, ValueError, AttributeError):
        raise InputError(
            f'{meta_path}: \'labels\' must map label values to names, e.g. {{"1": "liver"}}'
        ) from None
    modality = ",".join(str(v) for v in dict(meta.get("modality") or {}).values()) or "unknown"
    entries = []
    for split, key in (("train", "training"), ("test", "test")):
        for i, item in enumerate(meta.get(key) or []):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise InputError(
                    f"{meta_path}: entry {i} of '{key}' needs 'image' and 'label' paths, got {item!r}"
                )
            imask = item.get("imask")
            extra = {k: v for k, v in item.items() if k not in ("image", "label", "imask")}
            entries.append(
                ImedEntry(
                    image=root / item["image"],
                    label=root / item["label"],
                    imask=root / imask if imask else None,
                    split=split,
                    extra=extra,
                )
            )
    info = {k: v for k, v in meta.items() if k not in ("training", "test")}
    return ImedDataset(root, meta.get("name", root.name), modality, labels, tuple(entries), info)


def label_shape(path: Path) -> tuple[int, ...]:
    m = _SHAPE_RE.search(Path(path).name)
    try:
        shape = tuple(ast.literal_eval(m.group(1))) if m else ()
    except (SyntaxError, ValueError, TypeError):
        shape = ()
    if len(shape) not in (3, 4) or not all(isinstance(s, int) and s >= 1 for s in shape[1:]):
        raise InputError(
            f"{path}: label file name does not carry its shape, e.g. 'x___a_1.(13, 512, 512, 1).npz'"
        )
    return shape


def _label_matrix(path: Path, shape: tuple[int, ...]):
    from imis.io.arrays import load_csr_npz

    if not path.is_file():
        raise InputError(f"{path}: label file not found")
    mat = load_csr_npz(path)
    if mat.shape[0] * mat.shape[1] != int(np.prod(shape)) or mat.shape[0] != shape[0]:
        raise InputError(f"{path}: sparse matrix {mat.shape} does not hold the shape {shape} in its name")
    return mat


def read_label(path: str | Path, max_bytes: int | None = None) -> np.ndarray:
    """Label file -> bool array (C, H, W); the dense size is checked against the reading cap first."""
    from imis.io.limits import check_claim

    path = Path(path)
    shape = label_shape(path)
    mat = _label_matrix(path, shape)
    check_claim(str(path), int(np.prod(shape)), f"the dense label masks {shape}", max_bytes)
    dense = np.zeros(mat.shape, dtype=bool)
    rows = np.repeat(np.arange(mat.shape[0]), np.diff(mat.indptr))
    dense[rows, mat.indices] = mat.data != 0
    return dense.reshape(shape[:3])


def label_areas(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape from the name, foreground pixels per channel)`` of a label file without densifying it."""
    path = Path(path)
    shape = label_shape(path)
    mat = _label_matrix(path, shape)
    areas = np.diff(mat.indptr) if mat.nnz == np.count_nonzero(mat.data) else (mat != 0).getnnz(axis=1)
    return shape, np.asarray(areas, dtype=np.int64)


def read_image(path: str | Path, max_bytes: int | None = None) -> np.ndarray:
    """A dataset image as stored (RGB PNG -> (H, W, 3) uint8); its size is checked before decoding."""
    from imis.io.limits import check_pillow_claim

    try:
        with Image.open(path) as im:
            check_pillow_claim(im, Path(path), str(path), max_bytes)
            return np.asarray(im)
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None


def imask_path(path: str | Path) -> Path:
    """The imask file to read for ``path``: ``path`` itself, else its ``.npz`` re-pack (as in btcv-demo).

    Raises :class:`InputError` when neither exists.
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.suffix == ".npy" and p.with_suffix(".npz").is_file():
        return p.with_suffix(".npz")
    raise InputError(f"{p}: imask file not found")


def read_imask(path: str | Path) -> np.ndarray:
    """Read an imask id map -> int64 ``(H, W)``.

    The released form is ``.npy`` holding int64 ``(H, W, 1)``; a ``.npz`` holding it under the key
    ``imask`` (or as its only array) is read too. When ``path`` is a missing ``.npy`` and the ``.npz``
    beside it exists (btcv-demo's re-pack), that is read.
    """
    from imis.io.arrays import load_npy, load_npz, npz_keys

    p = imask_path(path)
    try:
        if p.suffix == ".npz":
            keys = npz_keys(p)
            key = "imask" if "imask" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise InputError(f"{p}: .npz holds {keys} and no 'imask' array")
            arr = load_npz(p, [key])[key]
        else:
            arr = load_npy(p)
    except InputError as exc:
        raise InputError(f"{p}: unreadable imask ({str(exc).removeprefix(f'{p}: ')})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{p}: imask must be (H, W, 1) or (H, W), got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise InputError(f"{p}: imask must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def parse_stem(stem: str) -> tuple[str, int | None]:
    """``"ABD_001_100"`` -> ``("ABD_001", 100)``; a stem without a trailing ``_<digits>`` -> ``(stem, None)``."""
    m = _STEM_SLICE_RE.match(stem)
    if not m:
        return stem, None
    return m.group("case"), int(m.group("slice"))


def select_cases(
    entries: list[ImedEntry], cases: Sequence[str] = (), exclude: Sequence[str] = (), where: str = "dataset"
) -> list[ImedEntry]:
    """The entries of the cases ``cases`` (all when empty) minus those of ``exclude``; the case of a
    stem is :func:`parse_stem`'s (``ABD_035_120`` -> ``ABD_035``). A case id that no entry has is an
    InputError naming ``where`` and the cases there are."""
    if not cases and not exclude:
        return list(entries)
    case_of = {e.stem: parse_stem(e.stem)[0] for e in entries}
    present = set(case_of.values())
    unknown = (set(cases) | set(exclude)) - present
    if unknown:
        raise InputError(
            f"{where} has no case {', '.join(sorted(unknown))} (its cases: {', '.join(sorted(present))})"
        )
    keep = (set(cases) or present) - set(exclude)
    return [e for e in entries if case_of[e.stem] in keep]


def read_sample(
    dataset: ImedDataset, entry: ImedEntry, *, keep_empty: bool = False, with_imask: bool = True
) -> Sample:
    """One entry as a :class:`Sample` (image as stored, masks named by ``dataset.labels``).

    Empty channels are dropped unless ``keep_empty``. The imask is read when the entry has one and
    ``with_imask``. Raises :class:`InputError` when files are missing or sizes disagree.
    """
    image = read_image(entry.image)
    labels = read_label(entry.label)
    h, w = image.shape[:2]
    if labels.shape[1:] != (h, w):
        raise InputError(
            f"{entry.label}: label size {labels.shape[1:]} differs from the image {entry.image} ({h}, {w})"
        )
    names = dataset.label_names(labels.shape[0])
    masks = {name: labels[c] for c, name in enumerate(names) if keep_empty or labels[c].any()}
    imask = None
    if with_imask and entry.imask is not None:
        imask = read_imask(entry.imask)
        if imask.shape != (h, w):
            raise InputError(f"{entry.imask}: imask size {imask.shape} differs from the image ({h}, {w})")
    case, index = parse_stem(entry.stem)
    root = dataset.root

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return str(p)

    provenance: dict[str, Any] = {
        "format": "imed",
        "root": str(root),
        "image": rel(entry.image),
        "label": rel(entry.label),
        "imask": rel(entry.imask),
        "case": case,
        "slice": index,
    }
    provenance.update(entry.extra)
    modality = dataset.modality if dataset.modality != "unknown" else None
    return Sample(
        id=entry.stem,
        image=image,
        masks=masks,
        imask=imask,
        provenance=provenance,
        split=entry.split,
        dataset=dataset.name,
        modality=modality,
    )


def iter_samples(
    dataset: ImedDataset | str | Path,
    split: str | None = None,
    *,
    keep_empty: bool = False,
    with_imask: bool = True,
) -> Iterator[Sample]:
    """Yield the dataset's entries as :class:`Sample` in ``dataset.json`` order (training, then test).

    ``split`` (``"train"``/``"test"``) restricts to one split; ``dataset`` may also be a folder path.
    """
    if not isinstance(dataset, ImedDataset):
        dataset = read_dataset(dataset)
    if split is not None and split not in ("train", "test"):
        raise InputError(f"split must be 'train', 'test' or None, got {split!r}")
    for entry in dataset.entries:
        if split is None or entry.split == split:
            yield read_sample(dataset, entry, keep_empty=keep_empty, with_imask=with_imask)


# ---------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------
def label_filename(stem: str, n_channels: int, height: int, width: int) -> str:
    """``x___<stem>.(C, H, W, 1).npz``, the released label file name."""
    return f"x___{stem}.({n_channels}, {height}, {width}, 1).npz"


def _check_stem(stem: str) -> None:
    if not isinstance(stem, str) or not stem or stem.startswith(".") or any(c in stem for c in "/\\\0"):
        raise InputError(
            f"invalid sample stem {stem!r}: a non-empty file name without '/', '\\' or a leading '.'"
        )


def _zip_deterministic(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A ZIP archive of ``(name, data)`` entries, deflated, in the exact byte layout of the released files.

    Layout (as numpy's ``savez_compressed`` wrote the released IMed-361M labels): per entry a local header
    (version 2.0, date 1980-01-01 00:00, real sizes) with a ZIP64 extra field holding the sizes, the raw
    deflate stream at zlib level :data:`COMPRESS_LEVEL`; then the central directory (Unix, mode 0600) and
    the end record. No timestamp, user or platform data enters the bytes.
    """
    out = bytearray()
    central = bytearray()
    for name, raw in entries:
        fname = name.encode("utf-8")
        comp = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -15)
        data = comp.compress(raw) + comp.flush()
        if max(len(raw), len(data), len(out)) >= 0xFFFFFFFF:
            raise InputError(f"{name}: archive entry of {len(raw)} bytes is too large (4 GiB limit)")
        crc = zlib.crc32(raw) & 0xFFFFFFFF
        offset = len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(raw), len(data))
        out += struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            0,
            8,
            0,
            _DOS_DATE,
            crc,
            len(data),
            len(raw),
            len(fname),
            len(extra),
        )
        out += fname + extra + data
        central += struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            0x0314,
            20,
            0,
            8,
            0,
            _DOS_DATE,
            crc,
            len(data),
            len(raw),
            len(fname),
            0,
            0,
            0,
            0,
            0o600 << 16,
            offset,
        )
        central += fname
    n = len(entries)
    cd_offset = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out)


def write_npz(path: str | Path, arrays: Sequence[tuple[str, np.ndarray]]) -> Path:
    """Write ``arrays`` (name, array) as a compressed ``.npz``, atomically and byte-deterministically.

    Readable by ``numpy.load`` (entries ``<name>.npy``) and, for CSR arrays, ``scipy.sparse.load_npz``; the
    bytes depend only on the arrays and zlib (see :func:`_zip_deterministic`), not on the time, the
    Python version or the machine.
    """
    entries = []
    for name, arr in arrays:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
        entries.append((f"{name}.npy", buf.getvalue()))
    blob = _zip_deterministic(entries)
    with atomic_output(path) as tmp:
        tmp.write_bytes(blob)
    return Path(path)


def _csr_arrays(masks: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The arrays of ``scipy.sparse.save_npz`` for the CSR matrix (C, H*W) of int32 ones of ``masks``."""
    c = masks.shape[0]
    n = int(masks.shape[1]) * int(masks.shape[2])
    flat = masks.reshape(c, n)
    if n >= 2**31:
        raise InputError(f"images of {n} pixels are too large for int32 CSR indices")
    rows, cols = np.nonzero(flat)
    indptr = np.zeros(c + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=c), out=indptr[1:])
    return [
        ("indices", cols.astype(np.int32)),
        ("indptr", indptr),
        ("format", np.asarray(b"csr")),
        ("shape", np.asarray((c, n), dtype=np.int64)),
        ("data", np.ones(len(cols), dtype=np.int32)),
    ]


def _rgb_uint8(image: np.ndarray, stem: str) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise InputError(f"{stem}: image must be uint8 (convert to 8 bit first), got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{stem}: image must be (H, W) grey or (H, W, 3) RGB, got shape {img.shape}")
    if min(img.shape[:2]) < 1:
        raise InputError(f"{stem}: empty image of shape {img.shape}")
    return np.ascontiguousarray(img)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)``/``(H, W, 3)`` array as PNG, atomically and byte-deterministically."""
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(
            tmp, format="PNG", compress_level=COMPRESS_LEVEL, optimize=False
        )
    return Path(path)


def write_sample(
    root: str | Path,
    stem: str,
    image: np.ndarray,
    masks: np.ndarray,
    imask: np.ndarray | None = None,
) -> dict[str, str]:
    """Write one image with its masks (and imask) in the released layout; return its dataset.json entry.

    * ``image``: uint8 ``(H, W)`` (replicated to 3 channels) or ``(H, W, 3)`` -> ``image/<stem>.png`` (RGB).
    * ``masks``: bool (or 0/1 integer) ``(C, H, W)`` -> ``label/x___<stem>.(C, H, W, 1).npz``, a CSR matrix
      ``(C, H*W)`` of int32 ones readable by ``scipy.sparse.load_npz``; ``C`` may be 0.
    * ``imask``: integer ``(H, W)`` (or ``(H, W, 1)``) -> ``imask/x___<stem>.npy`` int64 ``(H, W, 1)``.

    Returns ``{"image": "image/<stem>.png", "label": "label/...npz"}`` plus ``"imask"`` when one was
    written. Each file is written atomically; identical inputs give byte-identical files.
    """
    _check_stem(stem)
    root = Path(root)
    rgb = _rgb_uint8(image, stem)
    h, w = rgb.shape[:2]
    m = np.asarray(masks)
    if m.ndim == 2:
        raise InputError(f"{stem}: masks must be (C, H, W); wrap a single mask as masks[None]")
    if m.ndim != 3 or m.shape[1:] != (h, w):
        raise InputError(
            f"{stem}: masks of shape {m.shape} do not match the image ({h}, {w}); expected (C, {h}, {w})"
        )
    if m.dtype != bool:
        if m.dtype.kind not in "iu" or (m.size and (m.min() < 0 or m.max() > 1)):
            raise InputError(f"{stem}: masks must be bool or 0/1 integers, got dtype {m.dtype}")
        m = m.astype(bool)
    im = None
    if imask is not None:
        im = np.asarray(imask)
        if im.ndim == 3 and im.shape[2] == 1:
            im = im[..., 0]
        if im.shape != (h, w):
            raise InputError(f"{stem}: imask of shape {im.shape} does not match the image ({h}, {w})")
        if im.dtype.kind not in "iub":
            raise InputError(f"{stem}: imask must hold integer ids, got dtype {im.dtype}")
    entry = {"image": f"image/{stem}.png", "label": f"label/{label_filename(stem, m.shape[0], h, w)}"}
    write_png(root / entry["image"], rgb)
    write_npz(root / entry["label"], _csr_arrays(m))
    if im is not None:
        entry["imask"] = f"imask/x___{stem}.npy"
        with atomic_output(root / entry["imask"]) as tmp:
            np.save(tmp, np.ascontiguousarray(im.astype(np.int64)[..., None]), allow_pickle=False)
    return entry


def write_dataset_json(
    root: str | Path,
    name: str,
    description: str,
    modality: Mapping[Any, str],
    labels: Mapping[int, str],
    training: Sequence[Mapping[str, str]],
    test: Sequence[Mapping[str, str]],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``root/dataset.json`` atomically in the released key order; return its path.

    ``modality`` is ``{0: "ct"}`` (keys become strings); ``labels`` maps label values 1..C to names
    (``0: "background"`` is added when absent); ``extra`` keys are appended after ``test`` and must not
    repeat a released key. The text is deterministic (4-space indent, keys in this order, trailing newline).
    """
    released = (
        "name",
        "description",
        "dimension",
        "modality",
        "labels",
        "numTraining",
        "training",
        "numTest",
        "test",
    )
    lab = {int(k): str(v) for k, v in labels.items()}
    lab.setdefault(0, "background")
    meta: dict[str, Any] = {
        "name": str(name),
        "description": str(description),
        "dimension": "2D",
        "modality": {str(k): str(v) for k, v in modality.items()},
        "labels": {str(k): lab[k] for k in sorted(lab)},
        "numTraining": len(training),
        "training": [dict(e) for e in training],
        "numTest": len(test),
        "test": [dict(e) for e in test],
    }
    for key, value in (extra or {}).items():
        if key in released:
            raise InputError(f"dataset.json extra key {key!r} would overwrite a released key")
        meta[key] = value
    path = Path(root) / "dataset.json"
    text = json.dumps(meta, indent=4, ensure_ascii=False) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
