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

Writing (:func:`write_sample`, :func:`write_dataset_json`, in :mod:`imis.data.formats.imed_write`,
re-exported here) is atomic per file and byte-deterministic: re-running a writer on the same arrays gives
byte-identical files, and a label re-written from a released one is byte-identical to it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# The writers live in imed_write (one reason to change each); re-exported so that ``imed.write_sample``
# and the other public names keep working.
from imis.data.formats.imed_write import (
    COMPRESS_LEVEL,
    label_filename,
    write_dataset_json,
    write_npz,
    write_png,
    write_sample,
)
from imis.data.sample import Sample
from imis.errors import InputError
from imis.io.files import read_json_object

__all__ = [
    "COMPRESS_LEVEL",
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
    "write_png",
    "write_sample",
]

_SHAPE_RE = re.compile(r"\.(\([0-9,\s]+\))\.npz$")
_STEM_SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)$")


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
    meta = read_json_object(meta_path, "dataset.json", "not an IMed-361M dataset folder")
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
