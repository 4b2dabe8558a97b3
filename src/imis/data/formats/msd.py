"""Medical Segmentation Decathlon (MSD) and nnU-Net raw folders: reader of 3D cases, and an nnU-Net writer.

    ROOT/dataset.json
    ROOT/imagesTr/<case>_0000.nii.gz [, <case>_0001.nii.gz ...]   nnU-Net: one file per channel
    ROOT/imagesTr/<case>.nii.gz                                   MSD: one (possibly 4D multi-channel) file
    ROOT/labelsTr/<case>.nii.gz                                   integer label map, same grid as the image
    ROOT/imagesTs/...                                             optional test images (labelsTs/ optional)

``dataset.json`` ``labels`` may be the MSD form ``{"0": "background", "1": "liver"}`` or the nnU-Net v2 form
``{"background": 0, "liver": 1}``; nnU-Net v2 region labels (``"whole tumor": [1, 2, 3]``) are not label
values and are listed in ``MsdDataset.regions`` only. Channels are named by ``modality`` (MSD, nnU-Net v1)
or ``channel_names`` (v2). Cases come from the ``training``/``test`` lists when their files exist, else from
the files of ``imagesTr``/``imagesTs`` (``<case>_<4 digits><file_ending>``).

Volumes are :class:`imis.io.ImageData` (``(z, y, x)`` arrays, SimpleITK geometry in LPS). A case whose
label map differs from the image in shape or geometry, holds non-integer or negative values, or cannot be
read raises :class:`InputError` naming the case and the cause, so that a caller can report it and go on.
Label maps stored as floats holding whole numbers are accepted and converted to integers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imis.errors import InputError
from imis.io import Geometry, ImageData, atomic_output, read_image, validate_image, write_label_map

__all__ = ["MsdCase", "MsdDataset", "MsdEntry", "iter_cases", "read_case", "read_dataset", "write_nnunet_raw"]

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: Geometry tolerance (mm and direction cosines) between an image and its label map.
GEOMETRY_ATOL = 1e-3


@dataclass(frozen=True)
class MsdEntry:
    """One case: its image file(s) (one per channel, or one multi-channel file) and label file."""

    id: str
    images: tuple[Path, ...]
    label: Path | None
    split: str  # "train" or "test"


@dataclass(frozen=True)
class MsdDataset:
    root: Path
    name: str
    labels: dict[int, str]  # label value -> name, background (0) excluded
    channels: dict[int, str]  # channel index -> modality name ("CT", "T2", ...)
    entries: tuple[MsdEntry, ...]
    file_ending: str = ".nii.gz"
    style: str = "nnunet"  # "nnunet" (v2 labels form) or "msd"
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False)
    meta: dict = field(default_factory=dict, compare=False)

    def split(self, name: str) -> list[MsdEntry]:
        return [e for e in self.entries if e.split == name]

    @property
    def modality(self) -> str:
        """The modality of channel 0 (lower case), e.g. ``"ct"``, ``"mri"``."""
        return self.channels.get(0, "unknown").lower()


@dataclass
class MsdCase:
    """One case read from disk: the image channel, its label map (None for unlabelled test cases)."""

    id: str
    image: ImageData
    label: ImageData | None
    labels: dict[int, str]
    modality: str
    split: str
    channel: int = 0
    image_path: Path | None = None
    label_path: Path | None = None

    def label_names(self) -> dict[int, str]:
        """Names of the label values present in the label map (declared names; undeclared -> ``label_<v>``)."""
        if self.label is None:
            return {}
        values = np.unique(self.label.array)
        return {int(v): self.labels.get(int(v), f"label_{int(v)}") for v in values if v != 0}


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------
def _parse_labels(raw: Any, path: Path) -> tuple[dict[int, str], dict[str, tuple[int, ...]], str]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: 'labels' must be a non-empty object")
    labels: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    if all(str(k).lstrip("-").isdigit() for k in raw):  # MSD: {"0": "background", "1": "liver"}
        for k, v in raw.items():
            labels[int(k)] = str(v)
        style = "msd"
    else:  # nnU-Net v2: {"background": 0, "liver": 1, "region": [1, 2]}
        for k, v in raw.items():
            if isinstance(v, bool):
                raise InputError(f"{path}: label {k!r} has value {v!r}; expected an integer")
            if isinstance(v, int):
                if v in labels:
                    raise InputError(f"{path}: labels {labels[v]!r} and {k!r} share the value {v}")
                labels[v] = str(k)
            elif isinstance(v, list) and len(v) == 1 and isinstance(v[0], int):
                labels.setdefault(v[0], str(k))
            elif isinstance(v, list) and v and all(isinstance(x, int) for x in v):
                regions[str(k)] = tuple(v)  # overlapping region of several values: not a label value
            else:
                raise InputError(
                    f"{path}: label {k!r} has value {v!r}; expected an integer or a list of them"
                )
        style = "nnunet"
    if any(v < 0 for v in labels):
        raise InputError(f"{path}: negative label values {sorted(v for v in labels if v < 0)}")
    labels.pop(0, None)
    return dict(sorted(labels.items())), regions, style


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) and len(name) > len(ending) else None


def _scan(folder: Path, ending: str) -> dict[str, list[Path]]:
    """``<case>_<XXXX><ending>`` files of a folder grouped by case, channels in order."""
    cases: dict[str, list[tuple[int, Path]]] = {}
    if not folder.is_dir():
        return {}
    for p in sorted(folder.iterdir()):
        stem = _strip_ending(p.name, ending)
        if stem is None or p.name.startswith("."):
            continue
        m = _CHANNEL_RE.match(stem)
        if m:
            cases.setdefault(m.group("case"), []).append((int(m.group("channel")), p))
        else:  # MSD: one file per case
            cases.setdefault(stem, []).append((0, p))
    return {c: [p for _, p in sorted(files)] for c, files in cases.items()}


def _entry_from_list(
    root: Path, item: Any, split: str, ending: str, n_channels: int, meta_path: Path
) -> MsdEntry:
    if isinstance(item, str):
        image_rel, label_rel = item, None
    elif isinstance(item, dict) and "image" in item:
        image_rel, label_rel = item["image"], item.get("label")
    else:
        raise InputError(f"{meta_path}: {split} entry {item!r} needs an 'image' path")
    image = root / image_rel
    stem = _strip_ending(image.name, ending) or image.name.split(".")[0]
    if image.is_file():
        images = (image,)
    else:  # nnU-Net v1 lists "<case>.nii.gz" while the files carry channel suffixes
        images = tuple(image.parent / f"{stem}_{c:04d}{ending}" for c in range(max(n_channels, 1)))
    label = root / label_rel if label_rel else None
    return MsdEntry(stem, images, label, split)


def read_dataset(root: str | Path) -> MsdDataset:
    """See :func:`_read_dataset`; a file whose content has the wrong types is an InputError naming it."""
    from imis.io.files import content_errors

    with content_errors(Path(root) / "dataset.json"):
        return _read_dataset(root)


def _read_dataset(root: str | Path) -> MsdDataset:
    """Parse an MSD / nnU-Net raw folder (``dataset.json`` and file listing; no volume is read)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    from imis.io.files import read_json_object

    meta = read_json_object(meta_path, "dataset.json", "not an MSD / nnU-Net raw folder")
    labels, regions, style = _parse_labels(meta.get("labels"), meta_path)
    raw_channels = meta.get("channel_names") or meta.get("modality") or {}
    try:
        channels = {int(k): str(v) for k, v in dict(raw_channels).items()}
    except (TypeError, ValueError):
        raise InputError(
            f"{meta_path}: 'channel_names'/'modality' must map channel numbers to names"
        ) from None
    ending = str(meta.get("file_ending", ".nii.gz"))
    entries: list[MsdEntry] = []
    for split, key, img_dir, lab_dir in (
        ("train", "training", "imagesTr", "labelsTr"),
        ("test", "test", "imagesTs", "labelsTs"),
    ):
        listed = meta.get(key)
        scanned = _scan(root / img_dir, ending)
        if scanned or not listed:
            for case, files in scanned.items():
                label = root / lab_dir / f"{case}{ending}"
                entries.append(MsdEntry(case, tuple(files), label if label.is_file() else None, split))
        else:
            for item in listed:
                entries.append(_entry_from_list(root, item, split, ending, len(channels), meta_path))
    if not entries:
        raise InputError(
            f"{root}: no cases found in imagesTr/ or imagesTs/ (file ending {ending!r} of dataset.json)"
        )
    info = {k: v for k, v in meta.items() if k not in ("training", "test")}
    return MsdDataset(
        root=root,
        name=str(meta.get("name", root.name)),
        labels=labels,
        channels=channels,
        entries=tuple(entries),
        file_ending=ending,
        style=style,
        regions=regions,
        meta=info,
    )


def _read_channel(path: Path, channel: int, case: str) -> ImageData:
    """A 3D channel: the file itself, or channel ``channel`` of a 4D MSD file."""
    try:
        image = read_image(path)
    except InputError as exc:
        if "4D image" not in str(exc):
            raise InputError(f"case {case}: {exc}") from None
    else:
        if channel != 0:
            raise InputError(f"case {case}: {path} holds one channel; channel {channel} does not exist")
        return image
    import SimpleITK as sitk

    try:
        img4 = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"case {case}: {path}: cannot read 4D image ({' '.join(str(exc).split())[-200:]})"
        ) from None
    n = img4.GetSize()[3]
    if not 0 <= channel < n:
        raise InputError(f"case {case}: {path} has {n} channels; channel {channel} does not exist")
    img3 = sitk.Extract(img4, [*img4.GetSize()[:3], 0], [0, 0, 0, channel])
    array = sitk.GetArrayFromImage(img3)
    validate_image(array, f"{path} (channel {channel})", kind="volume")
    return ImageData(
        array=array, geometry=Geometry.from_sitk(img3), path=path, kind="volume", meta={"channel": channel}
    )


def _integer_labels(label: ImageData, case: str) -> ImageData:
    arr = label.array
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"case {case}: label map {label.path} holds NaN/Inf values")
        if not np.all(arr == np.round(arr)):
            raise InputError(
                f"case {case}: label map {label.path} holds non-integer values (dtype {arr.dtype})"
            )
        hi = float(arr.max()) if arr.size else 0.0
        arr = arr.astype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.int64)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind not in "iu":
        raise InputError(f"case {case}: label map {label.path} has dtype {arr.dtype}, not integer labels")
    if arr.size and arr.min() < 0:
        raise InputError(f"case {case}: label map {label.path} holds negative values ({int(arr.min())})")
    label.array = arr
    return label


def read_case(dataset: MsdDataset, entry: MsdEntry, *, channel: int = 0, with_label: bool = True) -> MsdCase:
    """Read one case's image channel and label map, checking that they share one grid."""
    case = entry.id
    if len(entry.images) > 1:
        if not 0 <= channel < len(entry.images):
            raise InputError(
                f"case {case}: has {len(entry.images)} channel files; channel {channel} does not exist"
            )
        image_path = entry.images[channel]
    else:
        image_path = entry.images[0]
    if not image_path.is_file():
        raise InputError(f"case {case}: image file {image_path} not found")
    image = _read_channel(image_path, channel if len(entry.images) == 1 else 0, case)
    if image.kind != "volume":
        raise InputError(
            f"case {case}: {image_path} is a 2D image of shape {image.array.shape}, expected a volume"
        )
    label = None
    if with_label and entry.label is not None:
        if not entry.label.is_file():
            raise InputError(f"case {case}: label file {entry.label} not found")
        try:
            label = read_image(entry.label)
        except InputError as exc:
            raise InputError(f"case {case}: {exc}") from None
        label = _integer_labels(label, case)
        if label.array.shape != image.array.shape:
            raise InputError(
                f"case {case}: label map shape {label.array.shape} differs from the image shape "
                f"{image.array.shape} (z, y, x)"
            )
        if not label.geometry.allclose(image.geometry, atol=GEOMETRY_ATOL):
            raise InputError(
                f"case {case}: label map geometry differs from the image (spacing {label.geometry.spacing} vs "
                f"{image.geometry.spacing}, origin {label.geometry.origin} vs {image.geometry.origin})"
            )
    modality = dataset.channels.get(channel, dataset.modality).lower()
    return MsdCase(
        id=case,
        image=image,
        label=label,
        labels=dict(dataset.labels),
        modality=modality,
        split=entry.split,
        channel=channel,
        image_path=image_path,
        label_path=entry.label,
    )


def iter_cases(
    dataset: MsdDataset | str | Path, split: str | None = None, *, channel: int = 0
) -> Iterator[MsdCase]:
    """Yield the cases (training, then test), reading each when it is reached."""
    if not isinstance(dataset, MsdDataset):
        dataset = read_dataset(dataset)
    if split is not None and split not in ("train", "test"):
        raise InputError(f"split must be 'train', 'test' or None, got {split!r}")
    for entry in dataset.entries:
        if split is None or entry.split == split:
            yield read_case(dataset, entry, channel=channel)


# ---------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------
def _write_volume(path: Path, image: ImageData) -> None:
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(np.ascontiguousarray(image.array))
    image.geometry.apply_to(itk)
    with atomic_output(path) as tmp:
        sitk.WriteImage(itk, str(tmp), True)


def write_nnunet_raw(
    root: str | Path,
    cases: Iterable[tuple[str, ImageData | np.ndarray, np.ndarray | ImageData | None]],
    labels: Mapping[int, str],
    modality: str | Mapping[int, str],
    *,
    name: str | None = None,
    description: str = "",
    test_cases: Iterable[tuple[str, ImageData | np.ndarray]] = (),
    style: str = "nnunet",
    file_ending: str = ".nii.gz",
) -> Path:
    """Write cases as an nnU-Net raw folder (``style="msd"``: MSD form); return ``dataset.json``'s path.

    ``cases`` yields ``(case_id, image, label)``: image an :class:`ImageData` volume (its geometry is kept)
    or a ``(z, y, x)`` array (unit geometry); label a ``(z, y, x)`` integer array (or ImageData) on the
    image grid, written with the image's geometry. ``labels`` maps values to names (background added).
    nnU-Net style: ``imagesTr/<case>_0000<ending>``, v2 ``labels`` ``{"background": 0, ...}`` and
    ``channel_names``; MSD style: ``imagesTr/<case><ending>``, ``labels`` ``{"0": "background"}``,
    ``modality`` and ``training``/``test`` lists. Every file is written atomically.
    """
    if style not in ("nnunet", "msd"):
        raise InputError(f"style must be 'nnunet' or 'msd', got {style!r}")
    root = Path(root)
    channels = {0: modality} if isinstance(modality, str) else {int(k): str(v) for k, v in modality.items()}
    lab = {int(k): str(v) for k, v in labels.items()}
    lab.setdefault(0, "background")
    suffix = "_0000" if style == "nnunet" else ""
    training, test = [], []

    def as_image(case: str, image: ImageData | np.ndarray) -> ImageData:
        if isinstance(image, ImageData):
            if image.kind != "volume":
                raise InputError(f"case {case}: image must be a 3D volume, got a 2D image")
            return image
        arr = np.asarray(image)
        validate_image(arr, f"case {case}", kind="volume")
        return ImageData(array=arr, geometry=Geometry.identity(3), kind="volume")

    for case, image, label in cases:
        img = as_image(case, image)
        _write_volume(root / "imagesTr" / f"{case}{suffix}{file_ending}", img)
        rel_label = f"./labelsTr/{case}{file_ending}"
        if label is not None:
            arr = label.array if isinstance(label, ImageData) else np.asarray(label)
            if arr.shape != img.array.shape:
                raise InputError(
                    f"case {case}: label shape {arr.shape} differs from the image {img.array.shape}"
                )
            write_label_map(root / rel_label, arr, geometry=img.geometry)
        training.append({"image": f"./imagesTr/{case}{file_ending}", "label": rel_label})
    for case, image in test_cases:
        img = as_image(case, image)
        _write_volume(root / "imagesTs" / f"{case}{suffix}{file_ending}", img)
        test.append(f"./imagesTs/{case}{file_ending}")
    meta: dict[str, Any] = {"name": name or root.name, "description": description}
    if style == "nnunet":
        meta["channel_names"] = {str(k): v for k, v in sorted(channels.items())}
        names = [lab[k] for k in sorted(lab)]
        if len(set(names)) != len(names):
            raise InputError("nnU-Net v2 dataset.json needs unique label names")
        meta["labels"] = {lab[k]: k for k in sorted(lab)}
        meta["numTraining"] = len(training)
        meta["file_ending"] = file_ending
    else:
        meta["modality"] = {str(k): v for k, v in sorted(channels.items())}
        meta["labels"] = {str(k): lab[k] for k in sorted(lab)}
        meta["numTraining"] = len(training)
        meta["numTest"] = len(test)
        meta["training"] = training
        meta["test"] = test
        meta["file_ending"] = file_ending
    path = root / "dataset.json"
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
