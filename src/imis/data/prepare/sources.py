"""What `imis prepare` reads: the cases of a source collection, listed cheaply, loaded one at a time.

Two kinds of SOURCE:

* an **MSD / nnU-Net raw folder** (``dataset.json``, ``imagesTr/<case>_0000.nii.gz``,
  ``labelsTr/<case>.nii.gz``), listed with :mod:`imis.data.formats.msd`;
* a **case list** (``.yaml``/``.yml``/``.json`` file) for any other collection, with paths relative to
  the file and images in any format :func:`imis.io.read_image` reads (NIfTI, NRRD, MHA, DICOM series
  folders, PNG, .npy, ...)::

      name: my_collection          # optional
      modality: ct                 # or {0: ct, 1: mr} per input channel
      labels: {1: liver, 2: liver tumour}
      cases:
        - {case: p001, image: p001/ct.nii.gz, label: p001/seg.nii.gz}
        - {case: p002, image: [p002/t1.nrrd, p002/t2.nrrd], label: p002/seg.nrrd}
        - {case: p003, image: p003/dicom/, label: p003/seg.nii.gz}

A :class:`CaseSource` only holds paths (it travels to worker processes and Ray tasks); the worker reads
the files with :func:`load_case`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imis.errors import InputError
from imis.io import ImageData, read_image

__all__ = ["CaseSource", "SourceInfo", "list_source", "load_case"]


@dataclass(frozen=True)
class CaseSource:
    """One case: its id and the paths of its image channels and label map."""

    case: str
    images: tuple[str, ...]  # one path per input channel (file or DICOM series folder)
    label: str | None
    root: str  # the source root: provenance records paths relative to it
    msd: Any = None  # (MsdDataset, MsdEntry) for MSD/nnU-Net sources: read with imis.data.formats.msd

    def rel(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


@dataclass
class SourceInfo:
    """A listed source: its name, per-channel modality, label names and cases."""

    root: Path
    kind: str  # "msd" or "list"
    name: str
    modality: dict[int, str]
    labels: dict[int, str]
    cases: list[CaseSource] = field(default_factory=list)


def list_source(source: str | os.PathLike) -> SourceInfo:
    """List the cases of SOURCE (an MSD/nnU-Net raw folder or a case-list file) without reading images."""
    p = Path(source)
    if not p.exists():
        raise InputError(f"{source}: no such file or folder")
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml", ".json"):
        return _list_case_file(p)
    if p.is_dir():
        return _list_msd(p)
    raise InputError(
        f"{source}: not a source imis prepare reads; give an MSD/nnU-Net raw folder (dataset.json, "
        "imagesTr/, labelsTr/) or a case list (.yaml/.json with 'cases')"
    )


def _list_msd(root: Path) -> SourceInfo:
    from imis.data.formats import msd

    ds = msd.read_dataset(root)
    cases = []
    seen: set[str] = set()
    for e in ds.entries:
        if e.label is None:  # unlabelled test images (imagesTs/ without labelsTs/) cannot be prepared
            continue
        if e.id in seen:
            raise InputError(f"{root}: case id {e.id!r} appears in both imagesTr/ and imagesTs/")
        seen.add(e.id)
        cases.append(
            CaseSource(
                case=e.id,
                images=tuple(str(x) for x in e.images),
                label=str(e.label),
                root=str(root),
                msd=(ds, e),
            )
        )
    return SourceInfo(
        root=root,
        kind="msd",
        name=ds.name,
        modality=dict(ds.channels),
        labels=dict(ds.labels),
        cases=cases,
    )


def _list_case_file(path: Path) -> SourceInfo:
    import yaml

    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{src}: cannot read the case list ({exc})") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{src}: not a valid case list ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise InputError(f"{src}: a case list needs a 'cases' list of {{case, image, label}} entries")
    unknown = set(data) - {"name", "modality", "labels", "cases", "description"}
    if unknown:
        raise InputError(
            f"{src}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            "valid: name, description, modality, labels, cases"
        )
    modality = data.get("modality", "unknown")
    if isinstance(modality, str):
        modality = {0: modality}
    elif isinstance(modality, dict):
        modality = {int(k): str(v) for k, v in modality.items()}
    else:
        raise InputError(f"{src}: 'modality' must be a name or a mapping channel -> name")
    labels_in = data.get("labels") or {}
    if not isinstance(labels_in, dict):
        raise InputError(f"{src}: 'labels' must be a mapping of label value -> name")
    try:
        labels = {int(k): str(v) for k, v in labels_in.items() if int(k) != 0}
    except (TypeError, ValueError):
        raise InputError(f"{src}: 'labels' keys must be integer label values") from None
    base = path.parent
    cases: list[CaseSource] = []
    seen: set[str] = set()
    for i, item in enumerate(data["cases"]):
        if not isinstance(item, dict) or "image" not in item or "case" not in item:
            raise InputError(f"{src}: cases[{i}] must have 'case' and 'image' (and usually 'label')")
        case = str(item["case"])
        if case in seen:
            raise InputError(f"{src}: case id {case!r} appears twice")
        seen.add(case)
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        label = item.get("label")
        cases.append(
            CaseSource(
                case=case,
                images=tuple(str(base / str(x)) for x in images),
                label=str(base / str(label)) if label is not None else None,
                root=str(base),
            )
        )
    return SourceInfo(
        root=base,
        kind="list",
        name=str(data.get("name") or path.stem),
        modality=modality,
        labels=labels,
        cases=cases,
    )


def load_case(case: CaseSource, channels: tuple[int, ...]) -> tuple[list[ImageData], ImageData | None]:
    """Read the chosen image channels and the label map of a case (errors name the case, file and cause)."""
    if case.msd is not None:
        from imis.data.formats import msd

        ds, entry = case.msd
        images, label = [], None
        for i, ch in enumerate(channels):
            c = msd.read_case(ds, entry, channel=ch, with_label=(i == 0))
            images.append(c.image)
            if i == 0:
                label = c.label
        return images, label
    images = []
    for ch in channels:
        if ch >= len(case.images):
            raise InputError(
                f"case {case.case}: has {len(case.images)} input channel(s); channel {ch} was asked for "
                "(see 'channels' in the configuration)"
            )
        try:
            images.append(read_image(case.images[ch]))
        except InputError as exc:
            raise InputError(f"case {case.case}: {exc}") from None
    label = None
    if case.label is not None:
        try:
            label = read_image(case.label)
        except InputError as exc:
            raise InputError(f"case {case.case}: {exc}") from None
    return images, label


def label_values(label: ImageData, src: str) -> np.ndarray:
    """The label map as a non-negative integer array; integral floats are accepted, others rejected."""
    a = label.array
    if label.is_rgb:
        raise InputError(f"{src}: label map is a colour image; it must hold one integer label per pixel")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError(f"{src}: label map holds NaN or Inf values")
        frac = a != np.round(a)
        if frac.any():
            example = float(a[frac].flat[0])
            raise InputError(
                f"{src}: label map holds non-integer values (e.g. {example:g}) in {int(frac.sum())} voxels; "
                "labels must be whole numbers (was it resampled with linear interpolation?)"
            )
        a = a.astype(np.int64)
    elif a.dtype.kind == "b":
        a = a.astype(np.uint8)
    elif a.dtype.kind not in "iu":
        raise InputError(f"{src}: label map has unsupported dtype {a.dtype}")
    if a.size and int(a.min()) < 0:
        raise InputError(f"{src}: label map holds negative values (min {int(a.min())})")
    return a
