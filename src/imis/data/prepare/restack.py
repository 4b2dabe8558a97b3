"""`imis restack`: a prepared dataset's 2D masks (or predictions for its images) back into a 3D label map.

The provenance that `imis prepare` keeps for each image (``cases/<case>.json``, also in
``manifest.jsonl``) holds the source volume's shape and geometry, and for each image the axis and index
of its slice. Restacking places every kept slice of one case along one axis back at its index
(``np.take``'s inverse: nothing was flipped on the way out) and writes the volume with the source's
spacing, origin and direction, so it overlays the source image in any viewer.

Values: each channel is painted with the source label value it came from (the smallest one where
synonyms were merged; ``values="dataset"`` paints the dataset label id ``channel + 1`` instead); where
masks overlap (predictions), the higher channel wins. Slices that were excluded (aspect ratio, no mask
left) and masks that were excluded (below the minimum foreground) are background in the result.

Predictions: a folder with one file per image, named by the image's stem: ``<stem>.png`` or ``<stem>.npy``
(an integer label map of dataset label ids, 0 = background) or ``x___<stem>.(C, H, W, 1).npz``
(IMed CSR one-hot, like the dataset's own ``label/`` files). Images without a prediction
file are left empty and counted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imis.data.prepare.layout import Layout
from imis.errors import InputError
from imis.io import AXES, Geometry, write_label_map

__all__ = ["RestackResult", "restack", "restack_to_file"]


@dataclass
class RestackResult:
    labels: np.ndarray  # (z, y, x) in the source's voxel order
    geometry: Geometry
    slices: int  # slices placed
    missing: int  # slices without a prediction file (predictions only)
    case: str
    axis: str


def _case_record(root: Path, case: str) -> dict:
    path = root / "cases" / f"{case}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable case record ({exc})") from None
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise InputError(
            f"{root}: not a dataset made by `imis prepare` (no cases/ records or manifest.jsonl)"
        )
    slices = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec.get("case") == case:
                    slices.append(rec)
    if not slices:
        raise InputError(f"{root}: no image of case {case!r} in {manifest.name}")
    first = slices[0]
    return {
        "case": case,
        "kind": "volume",
        "slices": slices,
        **{k: first[k] for k in ("shape", "spacing", "origin", "direction")},
    }


def _known_cases(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "cases").glob("*.json")) if (root / "cases").is_dir() else []


def _read_prediction(folder: Path, stem: str, n_channels: int, hw: tuple[int, int]) -> np.ndarray | None:
    """A prediction as an int label map of dataset ids (H, W), or None when there is no file."""
    from imis.data.formats import imed

    h, w = hw
    for name in (f"{stem}.png", f"{stem}.npy"):
        p = folder / name
        if p.is_file():
            if p.suffix == ".png":
                from imis.io import binary_png_values

                arr = binary_png_values(imed.read_image(p))  # a single-mask PNG may hold 0/255
            else:
                from imis.io.arrays import load_npy

                arr = load_npy(p)  # header checked before numpy allocates what it claims
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[..., 0]
            if arr.shape != (h, w) or arr.dtype.kind not in "biu":
                raise InputError(
                    f"{p}: a prediction must be an integer label map of shape ({h}, {w}), "
                    f"got {arr.dtype} {arr.shape}"
                )
            if arr.size and (int(arr.max()) > n_channels or int(arr.min()) < 0):
                raise InputError(f"{p}: label ids must be in 0..{n_channels} (the dataset's labels)")
            return arr.astype(np.int64)
    for p in sorted(folder.glob(f"x___{stem}.(*).npz")):
        masks = imed.read_label(p)
        if masks.shape[1:] != (h, w):
            raise InputError(f"{p}: masks of size {masks.shape[1:]} do not match the image ({h}, {w})")
        return _paint(masks, np.arange(1, masks.shape[0] + 1))
    return None


def _paint(masks: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(masks.shape[1:], dtype=np.int64)
    for c in range(masks.shape[0]):  # higher channels win where masks overlap
        out[masks[c]] = values[c]
    return out


def restack(
    dataset: str | os.PathLike,
    case: str,
    axis: str = "z",
    *,
    predictions: str | os.PathLike | None = None,
    values: str = "source",
) -> RestackResult:
    """Restack one case's masks (or ``predictions``) along ``axis`` into its source volume's grid."""
    from imis.data.formats import imed

    root = Path(dataset)
    if not (root / "dataset.json").is_file():
        raise InputError(f"{root}: not a dataset folder (no dataset.json)")
    axis = str(axis).lower()
    if axis not in AXES:
        raise InputError(f"--axis must be z, y or x, got {axis!r}")
    if values not in ("source", "dataset"):
        raise InputError(f"values must be 'source' or 'dataset', got {values!r}")
    known = _known_cases(root)
    if known and case not in known:
        more = ", ..." if len(known) > 8 else ""
        raise InputError(f"{root}: no case {case!r}; cases: {', '.join(known[:8])}{more}")
    rec = _case_record(root, case)
    if rec.get("kind") == "2d":
        raise InputError(f"case {case}: was a 2D image; there is no volume to restack")
    if rec.get("status") == "skipped":
        raise InputError(f"case {case}: was skipped by prepare ({rec.get('reason', '')})")
    settings_path = root / "prepare.json"
    try:
        layout = Layout.from_json(json.loads(settings_path.read_text())["layout"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{settings_path}: missing or unreadable ({exc}); cannot map channels to labels"
        ) from None
    n = len(layout.channels)
    paint_values = layout.restack_values() if values == "source" else np.arange(1, n + 1)
    shape = tuple(int(s) for s in rec["shape"])
    geometry = Geometry(spacing=rec["spacing"], origin=rec["origin"], direction=rec["direction"])
    vmax = int(paint_values.max()) if n else 0
    out = np.zeros(shape, dtype=np.uint8 if vmax < 256 else np.uint16 if vmax < 65536 else np.uint32)
    ax = AXES[axis]
    placed = missing = 0
    seen: set[int] = set()
    pred_dir = Path(predictions) if predictions is not None else None
    if pred_dir is not None and not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: predictions folder not found")
    slices = [s for s in rec["slices"] if s["axis"] == axis]
    if not slices:
        axes = sorted({s["axis"] for s in rec["slices"]})
        raise InputError(
            f"case {case}: no kept slice along axis {axis}; the dataset has slices along: {', '.join(axes) or 'none'}"
        )
    for s in slices:
        index = int(s["index"])
        if index in seen:  # several input channels: the masks are the same for each
            continue
        seen.add(index)
        h, w = (int(v) for v in s["size"])
        if pred_dir is None:
            masks = imed.read_label(root / s["label"])
            if masks.shape != (n, h, w):
                raise InputError(f"{root / s['label']}: holds {masks.shape}, expected ({n}, {h}, {w})")
            plane = _paint(masks, paint_values)
        else:
            ids = _read_prediction(pred_dir, s["id"], n, (h, w))
            if ids is None:
                missing += 1
                continue
            lut = np.concatenate([[0], paint_values]).astype(np.int64)
            plane = lut[ids]
        region = [slice(None)] * 3
        region[ax] = index
        out[tuple(region)] = plane
        placed += 1
    return RestackResult(out, geometry, placed, missing, case, axis)


def restack_to_file(
    dataset: str | os.PathLike,
    case: str,
    out: str | os.PathLike,
    axis: str = "z",
    *,
    predictions: str | os.PathLike | None = None,
    values: str = "source",
) -> RestackResult:
    """:func:`restack` and write the label map (NIfTI/NRRD/MHA keep the source geometry)."""
    res = restack(dataset, case, axis, predictions=predictions, values=values)
    write_label_map(out, res.labels, geometry=res.geometry)
    return res
