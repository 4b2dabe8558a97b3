"""The SA-Med2D-20M release layout: reader (yielding :class:`Sample`) and writer.

    ROOT/images/<modality>--<dataset>--<case>--<axis>_<slice:04d>.png
    ROOT/masks/<image stem>--<label id:04d>_<instance:03d>.png        binary (0/255 or 0/1)
    ROOT/SAMed2D_v1.json                      {"images/<image>.png": ["masks/<mask>.png", ...], ...}
    ROOT/SAMed2D_v1_class_mapping_id.json     {"<dataset>": {"<label name>": <label id>, ...}, ...}

Names as released, e.g. ``images/mr_t1--Brain_PTM--case0005--x_0052.png`` and
``masks/ct_00--AbdomenCT1K--Case_00011--x_0041--0000_001.png``. The reader also accepts ``_`` instead of
``--`` before the label id, the two JSON files under ``ROOT/annotations/`` (as some loaders move them), any
other single image->masks JSON, and no JSON at all (then ``images/`` and ``masks/`` are matched by name).
Modality tokens keep their sub-modality (``mr_t1``, ``x_ray``) but lose the ``_00`` filler (``ct_00`` ->
``ct``). Slices of 2D sources have no axis (``..--2d_none.png``-style last parts give ``axis=None``).
The axis letter is the source's (as SA-Med2D-20M named it), not necessarily imis' ``(z, y, x)`` order.

Label names come from the class mapping of the image's dataset; an id absent from it is named
``label_<id:04d>``. Instances of one label (connected components stored as separate masks) are merged into
one named mask unless ``merge_instances=False`` (then ``<name>_<instance:03d>``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imis.data.formats.imed import read_image, write_png
from imis.data.sample import Sample
from imis.errors import InputError
from imis.io.files import atomic_output

__all__ = [
    "CLASS_MAP_NAME",
    "INDEX_NAME",
    "SAMed2DDataset",
    "SAMed2DName",
    "format_image_stem",
    "format_mask_stem",
    "iter_samples",
    "parse_image_stem",
    "parse_mask_stem",
    "read_dataset",
    "read_sample",
    "write_dataset",
]

INDEX_NAME = "SAMed2D_v1.json"
CLASS_MAP_NAME = "SAMed2D_v1_class_mapping_id.json"
_MASK_RE = re.compile(r"^(?P<image>.+?)(?:--|_)(?P<label>\d{4})_(?P<instance>\d{3})$")
_LAST_RE = re.compile(r"^(?P<axis>[A-Za-z0-9]+)_(?P<slice>\d+|none)$")
_AXIS_OF_INT = {0: "z", 1: "y", 2: "x"}


@dataclass(frozen=True)
class SAMed2DName:
    """The parts of an SA-Med2D-20M image name."""

    modality_token: str  # as in the name: "ct_00", "mr_t1"
    dataset: str
    case: str
    axis: str | None  # "x", "y", "z" or None (2D source)
    slice: int | None

    @property
    def modality(self) -> str:
        """Modality without the ``_00`` filler: ``ct_00`` -> ``ct``, ``mr_t1`` -> ``mr_t1``."""
        return re.sub(r"_\d+$", "", self.modality_token)


def parse_image_stem(stem: str) -> SAMed2DName:
    """``"mr_t1--Brain_PTM--case0005--x_0052"`` -> its parts; :class:`InputError` if not of that form."""
    parts = stem.split("--")
    if len(parts) < 4 or not all(parts):
        raise InputError(
            f"{stem!r}: not an SA-Med2D-20M image name '<modality>--<dataset>--<case>--<axis>_<slice>'"
        )
    modality, dataset, case, last = parts[0], parts[1], "--".join(parts[2:-1]), parts[-1]
    m = _LAST_RE.match(last)
    axis: str | None = None
    index: int | None = None
    if m and m.group("axis").lower() in ("x", "y", "z"):
        axis = m.group("axis").lower()
        index = int(m.group("slice")) if m.group("slice") != "none" else None
    elif m and m.group("slice").isdigit():
        index = int(m.group("slice"))
    return SAMed2DName(modality, dataset, case, axis, index)


def format_image_stem(
    modality: str, dataset: str, case: str, axis: str | int | None, index: int | None
) -> str:
    """The image stem for these parts: ``ct`` becomes the released token ``ct_00``; no axis -> ``2d_none``."""
    token = modality if "_" in modality else f"{modality}_00"
    if isinstance(axis, int) and not isinstance(axis, bool):
        axis = _AXIS_OF_INT.get(axis)
    if axis is None:
        last = "2d_none" if index is None else f"2d_{int(index):04d}"
    else:
        if index is None:
            raise InputError(f"{dataset}/{case}: a slice along axis {axis!r} needs its index")
        last = f"{axis}_{int(index):04d}"
    for what, value in (("modality", token), ("dataset", dataset), ("case", case)):
        if not value or "--" in value or "/" in value or "\\" in value:
            raise InputError(
                f"SA-Med2D-20M name part {what}={value!r} must be non-empty without '--', '/', '\\'"
            )
    return f"{token}--{dataset}--{case}--{last}"


def parse_mask_stem(stem: str) -> tuple[str, int, int]:
    """``"<image stem>--0003_001"`` (or ``_0003_001``) -> ``(image stem, 3, 1)``."""
    m = _MASK_RE.match(stem)
    if not m:
        raise InputError(f"{stem!r}: not an SA-Med2D-20M mask name '<image>--<label:04d>_<instance:03d>'")
    return m.group("image"), int(m.group("label")), int(m.group("instance"))


def format_mask_stem(image_stem: str, label_id: int, instance: int) -> str:
    if not 0 <= label_id <= 9999 or not 0 <= instance <= 999:
        raise InputError(f"{image_stem}: label id {label_id} / instance {instance} exceed 4 / 3 digits")
    return f"{image_stem}--{label_id:04d}_{instance:03d}"


@dataclass(frozen=True)
class SAMed2DDataset:
    """An SA-Med2D-20M folder: ``index`` maps image paths to mask paths (both relative to ``root``)."""

    root: Path
    index: dict[str, tuple[str, ...]] = field(compare=False)
    class_map: dict[str, dict[int, str]] = field(compare=False)  # dataset -> {label id -> name}

    @property
    def images(self) -> list[str]:
        return list(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def label_name(self, dataset: str, label_id: int) -> str:
        return self.class_map.get(dataset, {}).get(label_id, f"label_{label_id:04d}")


def _load_json(path: Path) -> Any:
    from imis.io.files import read_json

    return read_json(path)


def _parse_class_map(data: Any, path: Path) -> dict[str, dict[int, str]]:
    if not isinstance(data, dict):
        raise InputError(f"{path}: class mapping must be {{dataset: {{label name: id}}}}")
    out: dict[str, dict[int, str]] = {}
    for dataset, mapping in data.items():
        if not isinstance(mapping, dict):
            raise InputError(
                f"{path}: class mapping of {dataset!r} must be an object, got {type(mapping).__name__}"
            )
        ids: dict[int, str] = {}
        for k, v in mapping.items():
            if isinstance(v, int) and not isinstance(v, bool):
                ids.setdefault(v, str(k))  # {name: id} as released
            elif isinstance(v, str) and str(k).isdigit():
                ids.setdefault(int(k), v)  # {id: name}
            else:
                raise InputError(f"{path}: class mapping entry {dataset!r}: {k!r} -> {v!r} is not name -> id")
        out[str(dataset)] = ids
    return out


def _find_json(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / "annotations" / name):
        if cand.is_file():
            return cand
    return None


def read_dataset(root: str | Path, *, index_file: str | Path | None = None) -> SAMed2DDataset:
    """See :func:`_read_dataset`; a file whose content has the wrong types is an InputError naming it."""
    from imis.io.files import content_errors

    with content_errors(Path(root)):
        return _read_dataset(root, index_file=index_file)


def _read_dataset(root: str | Path, *, index_file: str | Path | None = None) -> SAMed2DDataset:
    """Open an SA-Med2D-20M folder (reads the JSON index, or lists ``images/`` and ``masks/``)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    index_path = Path(index_file) if index_file is not None else _find_json(root, INDEX_NAME)
    if index_path is None:
        others = [p for p in sorted(root.glob("*.json")) if p.name != CLASS_MAP_NAME]
        index_path = others[0] if len(others) == 1 else None
    index: dict[str, tuple[str, ...]]
    if index_path is not None:
        data = _load_json(index_path)
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise InputError(f"{index_path}: expected an object image path -> list of mask paths")
        index = {str(k): tuple(str(m) for m in v) for k, v in data.items()}
    else:
        images_dir, masks_dir = root / "images", root / "masks"
        if not images_dir.is_dir():
            raise InputError(f"{root}: no {INDEX_NAME} and no images/ folder (not an SA-Med2D-20M folder)")
        by_image: dict[str, list[str]] = {}
        if masks_dir.is_dir():
            for p in sorted(masks_dir.glob("*.png")):
                try:
                    image_stem, _, _ = parse_mask_stem(p.stem)
                except InputError:
                    continue
                by_image.setdefault(image_stem, []).append(f"masks/{p.name}")
        index = {
            f"images/{p.name}": tuple(by_image.get(p.stem, ())) for p in sorted(images_dir.glob("*.png"))
        }
    map_path = _find_json(root, CLASS_MAP_NAME)
    class_map = _parse_class_map(_load_json(map_path), map_path) if map_path is not None else {}
    return SAMed2DDataset(root, index, class_map)


def read_sample(dataset: SAMed2DDataset, image_rel: str, *, merge_instances: bool = True) -> Sample:
    """One image of the index as a :class:`Sample` (see the module documentation for names)."""
    root = dataset.root
    masks_rel = dataset.index.get(image_rel)
    if masks_rel is None:
        raise InputError(f"{root}: {image_rel!r} is not in the dataset index")
    stem = Path(image_rel).stem
    where = f"{root / image_rel} (listed in the dataset index {INDEX_NAME})"
    try:
        name = parse_image_stem(stem)
        parsed_masks = [parse_mask_stem(Path(rel).stem) + (rel,) for rel in masks_rel]
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    image = read_image(root / image_rel)
    h, w = image.shape[:2]
    masks: dict[str, np.ndarray] = {}
    instances: dict[str, list[int]] = {}
    parsed = []
    for image_stem, label_id, instance, rel in parsed_masks:
        if image_stem != stem:
            raise InputError(f"{root / rel}: mask name does not belong to image {stem!r}")
        parsed.append((label_id, instance, rel))
    for label_id, instance, rel in sorted(parsed):
        m = read_image(root / rel)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != (h, w):
            raise InputError(f"{root / rel}: mask of shape {m.shape} does not match its image ({h}, {w})")
        label = dataset.label_name(name.dataset, label_id)
        key = label if merge_instances else f"{label}_{instance:03d}"
        masks[key] = (masks[key] | (m > 0)) if key in masks else (m > 0)
        instances.setdefault(label, []).append(instance)
    provenance = {
        "format": "samed2d",
        "root": str(root),
        "image": image_rel,
        "masks": list(masks_rel),
        "modality_token": name.modality_token,
        "case": name.case,
        "axis": name.axis,
        "slice": name.slice,
        "instances": instances,
    }
    return Sample(
        id=stem,
        image=image,
        masks=masks,
        imask=None,
        provenance=provenance,
        split=None,
        dataset=name.dataset,
        modality=name.modality,
    )


def iter_samples(
    dataset: SAMed2DDataset | str | Path,
    *,
    merge_instances: bool = True,
    datasets: Iterable[str] | None = None,
    modalities: Iterable[str] | None = None,
) -> Iterator[Sample]:
    """Yield the folder's images as :class:`Sample`, in index order, optionally only some source datasets
    (``datasets``) or modalities (``modalities``, tokens with or without ``_00``)."""
    if not isinstance(dataset, SAMed2DDataset):
        dataset = read_dataset(dataset)
    want_ds = set(datasets) if datasets is not None else None
    want_mod = {re.sub(r"_\d+$", "", m) for m in modalities} if modalities is not None else None
    for image_rel in dataset.index:
        if want_ds is not None or want_mod is not None:
            name = parse_image_stem(Path(image_rel).stem)
            if want_ds is not None and name.dataset not in want_ds:
                continue
            if want_mod is not None and name.modality not in want_mod:
                continue
        yield read_sample(dataset, image_rel, merge_instances=merge_instances)


def _write_json(path: Path, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_dataset(
    root: str | Path,
    samples: Iterable[Sample],
    *,
    label_ids: Mapping[str, int] | None = None,
    split_instances: bool = False,
    default_axis: str | None = None,
) -> SAMed2DDataset:
    """Write samples as an SA-Med2D-20M folder; return it as read back (index and class mapping).

    Each sample's name comes from ``sample.modality`` (``ct`` -> ``ct_00``), ``sample.dataset``,
    ``provenance["case"]`` (default: the sample id), ``provenance["axis"]`` (``"x"|"y"|"z"`` or the array
    axis 0/1/2; ``default_axis`` when absent) and ``provenance["slice"]``. Images are written as stored
    (uint8 grey or RGB PNG), masks as 0/255 PNGs, one file per label (``split_instances=False``, instance
    000) or per 8-connected component. ``label_ids`` maps mask names to ids (default: 1, 2, ... in order
    of first appearance). Empty masks are skipped. Every file is written atomically.
    """
    from scipy import ndimage

    root = Path(root)
    ids: dict[str, int] = dict(label_ids or {})
    next_id = max(ids.values(), default=0) + 1
    index: dict[str, list[str]] = {}
    class_map: dict[str, dict[str, int]] = {}
    for s in samples:
        prov = s.provenance or {}
        axis = prov.get("axis", default_axis)
        if axis is None and prov.get("slice") is not None:
            axis = default_axis
        stem = format_image_stem(
            s.modality or "unknown",
            s.dataset or "unknown",
            str(prov.get("case") or s.id),
            axis,
            prov.get("slice"),
        )
        image_rel = f"images/{stem}.png"
        if image_rel in index:
            raise InputError(f"{root}: two samples share the SA-Med2D-20M name {stem!r}")
        img = np.asarray(s.image)
        if img.dtype != np.uint8:
            raise InputError(f"{s.id}: image must be uint8 to be written as PNG, got {img.dtype}")
        write_png(root / image_rel, img)
        rels: list[str] = []
        for name, mask in s.masks.items():
            mask = np.asarray(mask, dtype=bool)
            if not mask.any():
                continue
            if name not in ids:
                ids[name] = next_id
                next_id += 1
            class_map.setdefault(s.dataset or "unknown", {})[name] = ids[name]
            if split_instances:
                lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
                parts = [lab == i for i in range(1, n + 1)]
            else:
                parts = [mask]
            for inst, part in enumerate(parts):
                rel = f"masks/{format_mask_stem(stem, ids[name], inst)}.png"
                write_png(root / rel, part.astype(np.uint8) * 255)
                rels.append(rel)
        index[image_rel] = rels
    _write_json(root / INDEX_NAME, index)
    _write_json(
        root / CLASS_MAP_NAME,
        {d: dict(sorted(m.items(), key=lambda kv: kv[1])) for d, m in class_map.items()},
    )
    return read_dataset(root)
