"""A benchmark run's inputs: the dataset split's images and masks, and the prompt file every model is
given (generated once per dataset, protocol and seed, or a user's file checked against the data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imis.bench.config import BenchConfig
from imis.errors import ImisError, InputError
from imis.prompts import dataset_fingerprint, generate_prompts, load_prompts, save_prompts


@dataclass
class BenchImage:
    image_id: str
    image_path: Path
    masks: dict[str, np.ndarray]  # target name -> bool (H, W), non-empty and empty alike
    spacing: tuple[float, float]


def _spacing(extra: dict, meta: dict) -> tuple[float, float]:
    sp = extra.get("spacing", meta.get("spacing"))
    try:
        if sp is not None and len(sp) >= 2:
            return float(sp[-2]), float(sp[-1])
    except (TypeError, ValueError):
        pass
    return 1.0, 1.0


def load_data(config: BenchConfig) -> tuple[str, list[BenchImage], list[dict[str, Any]]]:
    from imis.data.formats.imed import read_dataset, read_label, select_cases

    ds = read_dataset(config.data)
    entries = sorted(ds.split(config.split), key=lambda e: e.stem)
    if not entries:
        raise InputError(f"{config.data}: split {config.split!r} has no entries")
    entries = select_cases(entries, config.cases, (), f"{config.data}: split {config.split!r}")
    if config.limit_images is not None:
        entries = entries[: config.limit_images]
    images, bad = [], []
    for e in entries:
        try:
            label = read_label(e.label)
            if label.ndim != 3:
                raise InputError(f"{e.label}: expected a (C, H, W) label, got shape {label.shape}")
        except ImisError as exc:
            bad.append({"image": e.stem, "reason": str(exc)})
            continue
        names = ds.label_names(label.shape[0])
        masks = {names[c]: label[c] for c in range(label.shape[0])}
        images.append(BenchImage(e.stem, e.image, masks, _spacing(e.extra, ds.meta)))
    return ds.name, images, bad


_PROMPT_CLICKS = ("uniform", "centroid", "center")


def _user_prompts(path: Path, samples: list[tuple[str, str, np.ndarray]], fingerprint: str) -> dict[str, Any]:
    """A user's prompt file, checked against the data: the dataset fingerprint must match, or (for a
    subset of the data, e.g. ``--limit-images``) every (image, target) of the data must be in the file with
    the same mask checksum; the file then keeps only those targets. Each target must hold the prompts the
    protocols read. Raises InputError naming the file and the reason."""
    from imis.prompts import mask_checksum

    obj = load_prompts(path, None)
    if obj["dataset_fingerprint"] != fingerprint:
        have = {
            (r.get("image_id"), r.get("target")): r.get("mask_sha256")
            for r in obj["targets"]
            if isinstance(r, dict)
        }
        if not all(have.get((i, t)) == mask_checksum(m) for i, t, m in samples):
            raise InputError(
                f"{path}: prompt file was made for another dataset (fingerprint "
                f"{obj['dataset_fingerprint'][:12]}..., this data {fingerprint[:12]}...; its targets or "
                "masks differ); regenerate it for this data"
            )
        wanted = {(i, t) for i, t, _ in samples}
        obj = dict(obj, dataset_fingerprint=fingerprint)
        obj["targets"] = [
            r
            for r in obj["targets"]
            if isinstance(r, dict) and (r.get("image_id"), r.get("target")) in wanted
        ]
    for r in obj["targets"]:
        if not isinstance(r, dict):
            raise InputError(f"{path}: a target of the prompt file is not an object")
        if "skip_reason" in r:
            continue
        clicks, boxes = r.get("clicks"), r.get("boxes")
        ok = (
            isinstance(clicks, dict)
            and all(isinstance(clicks.get(c), list) and len(clicks[c]) == 2 for c in _PROMPT_CLICKS)
            and isinstance(boxes, dict)
            and isinstance(boxes.get("tight"), list)
            and len(boxes["tight"]) == 4
            and isinstance(r.get("text"), str)
            and bool(r["text"].strip())
        )
        if not ok:
            raise InputError(
                f"{path}: target {r.get('image_id')}/{r.get('target')} lacks its clicks "
                f"({', '.join(_PROMPT_CLICKS)}), its tight box or its text"
            )
    return obj


def run_prompts(
    config: BenchConfig, images: list[BenchImage], out_dir: Path, has_rows: bool
) -> dict[str, Any]:
    samples = [(im.image_id, t, m) for im in images for t, m in im.masks.items()]
    fingerprint = dataset_fingerprint(samples)
    path = out_dir / "prompts.json"
    if config.prompts_file is not None:
        obj = _user_prompts(Path(config.prompts_file), samples, fingerprint)
        if path.is_file() and has_rows:
            try:
                same = load_prompts(path, None) == obj
            except InputError:
                same = False
            if not same:
                raise InputError(
                    f"{config.prompts_file}: differs from {path}, whose predictions this run directory "
                    "holds: use a new -o"
                )
        save_prompts(path, obj)
        return obj
    if path.is_file():
        try:
            obj = load_prompts(path, fingerprint)
            if obj.get("seed") == config.seed and obj.get("protocol") == config.protocol:
                return obj
            reason = f"{path}: made for protocol {obj.get('protocol')!r} seed {obj.get('seed')!r}"
        except InputError as exc:
            reason = str(exc)
        if has_rows:
            raise InputError(f"{reason}; this run directory holds predictions of another run: use a new -o")
    obj = generate_prompts(samples, config.protocol, config.seed)
    save_prompts(path, obj)
    return obj
