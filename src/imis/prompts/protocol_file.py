"""Prompt files: first prompts generated once per (dataset, protocol, seed), saved as canonical JSON and
replayed identically for every model.

Layout of the object (all values JSON types; coordinates ``(x, y)`` in the mask's native frame)::

    {"format": "imis-prompts", "version": 2, "protocol": ..., "seed": ..., "dataset_fingerprint": ...,
     "box_offsets": [0, 5, 10, 20], "text_template": "A segmentation area of a {}.",
     "targets": [
        {"image_id": ..., "target": ..., "shape": [H, W], "mask_sha256": ..., "area": ...,
         "clicks": {"uniform": [x, y], "centroid": [x, y], "center": [x, y]},
         "boxes": {"tight": [x0, y0, x1, y1], "offset_0": [...], "offset_5": [...], ...},
         "text": "A segmentation area of a right kidney."},   # target "kidney_right"
        {"image_id": ..., "target": ..., ..., "skip_reason": "empty ground-truth mask"},   # no prompts
        ...]}

``text`` is exactly the sentence a model's text tower reads (:func:`imis.prompts.text.text_prompt`: the
template filled with the vocabulary's display name of the target), and the benchmark feeds it as it is:
a replayed file gives each model what it saw. Version 1 files recorded the template filled with the bare
target name while the models read the display name; they are read as version 2 with ``text`` rebuilt
from the target, which is what their runs fed.

Targets are sorted by ``(image_id, target)``. Each target draws from its own generators, derived from
``(seed, image_id, target, prompt kind)`` through :class:`numpy.random.SeedSequence` with a SHA-256 of the
names (Python's ``hash`` is salted per process), so a target's prompts depend neither on the iteration
order nor on the other targets, nor on the protocol name: two protocols with one seed share their first
prompts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imis.errors import InputError
from imis.io.files import atomic_output
from imis.prompts.boxes import offset_box, tight_box
from imis.prompts.clicks import center_click, centroid_click, uniform_click
from imis.prompts.text import DEFAULT_TEMPLATE, text_prompt

__all__ = [
    "FORMAT",
    "VERSION",
    "dataset_fingerprint",
    "dumps_prompts",
    "generate_prompts",
    "load_prompts",
    "mask_checksum",
    "prompt_rng",
    "save_prompts",
]

FORMAT = "imis-prompts"
VERSION = 2
#: versions read (older ones are upgraded on reading, see the module notes)
READABLE_VERSIONS = (1, 2)
DEFAULT_BOX_OFFSETS = (0, 5, 10, 20)


def mask_checksum(mask: np.ndarray) -> str:
    """SHA-256 (hex) of a mask's shape and its pixels read as booleans."""
    m = np.ascontiguousarray(np.asarray(mask).astype(bool, copy=False))
    h = hashlib.sha256(repr(tuple(m.shape)).encode())
    h.update(np.packbits(m, axis=None).tobytes())
    return h.hexdigest()


def _fingerprint_of(records: Iterable[tuple[str, str, str]]) -> str:
    h = hashlib.sha256()
    for image_id, target, checksum in sorted(records):
        h.update(f"{image_id}\0{target}\0{checksum}\n".encode())
    return h.hexdigest()


def dataset_fingerprint(samples: Iterable[tuple[str, str, np.ndarray]]) -> str:
    """SHA-256 (hex) of the sorted ``(image_id, target, mask checksum)`` triples of a dataset."""
    return _fingerprint_of((str(i), str(t), mask_checksum(m)) for i, t, m in samples)


def prompt_rng(seed: int, image_id: str, target: str, kind: str) -> np.random.Generator:
    """The generator of one prompt kind of one target: independent of every other (target, kind) pair and of
    the order in which targets are visited."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    digest = hashlib.sha256(f"{image_id}\0{target}\0{kind}".encode()).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def _target_prompts(
    image_id: str, target: str, mask: np.ndarray, seed: int, box_offsets: Sequence[int], template: str
) -> dict[str, Any]:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"{image_id}/{target}: mask must be 2D (H, W), got shape {m.shape}")
    m = m.astype(bool, copy=False)
    rec: dict[str, Any] = {
        "image_id": image_id,
        "target": target,
        "shape": [int(s) for s in m.shape],
        "mask_sha256": mask_checksum(m),
        "area": int(m.sum()),
    }
    if rec["area"] == 0:
        rec["skip_reason"] = "empty ground-truth mask"
        return rec

    def rng(kind: str) -> np.random.Generator:
        return prompt_rng(seed, image_id, target, kind)

    clicks = {
        "uniform": uniform_click(m, rng("click/uniform")),
        "centroid": centroid_click(m, rng("click/centroid")),
        "center": center_click(m),
    }
    rec["clicks"] = {k: [c.x, c.y] for k, c in clicks.items()}
    boxes = {"tight": list(tight_box(m))}
    for off in box_offsets:
        boxes[f"offset_{off}"] = list(offset_box(m, int(off), rng(f"box/offset_{off}")))
    rec["boxes"] = boxes
    rec["text"] = text_prompt(target, template)
    return rec


def generate_prompts(
    samples: Iterable[tuple[str, str, np.ndarray]],
    protocol: str,
    seed: int,
    *,
    box_offsets: Sequence[int] = DEFAULT_BOX_OFFSETS,
    text_template: str = DEFAULT_TEMPLATE,
) -> dict[str, Any]:
    """The prompt object (see the module notes) for ``samples``: ``(image_id, target_name, gt mask)``
    triples, each mask 2D. Raises InputError for a repeated ``(image_id, target)`` pair or a non-2D mask;
    an empty mask is kept with a ``skip_reason`` so that the benchmark reports it instead of scoring zero.
    """
    if not isinstance(protocol, str) or not protocol:
        raise ValueError(f"protocol must be a non-empty string, got {protocol!r}")
    prompt_rng(seed, "", "", "")  # validates the seed before any work
    offsets = [int(o) for o in box_offsets]
    if any(o < 0 for o in offsets) or len(set(offsets)) != len(offsets):
        raise ValueError(f"box_offsets must be distinct non-negative integers, got {list(box_offsets)}")
    targets: dict[tuple[str, str], dict[str, Any]] = {}
    for image_id, target, mask in samples:
        key = (str(image_id), str(target))
        if key in targets:
            raise InputError(f"{key[0]}/{key[1]}: the same (image, target) pair appears twice")
        targets[key] = _target_prompts(key[0], key[1], mask, int(seed), offsets, text_template)
    fingerprint = _fingerprint_of((i, t, r["mask_sha256"]) for (i, t), r in targets.items())
    return {
        "format": FORMAT,
        "version": VERSION,
        "protocol": protocol,
        "seed": int(seed),
        "dataset_fingerprint": fingerprint,
        "box_offsets": offsets,
        "text_template": text_template,
        "targets": [targets[k] for k in sorted(targets)],
    }


def dumps_prompts(obj: dict[str, Any]) -> str:
    """Canonical JSON text: sorted keys, ``(",", ":")`` separators, ASCII only, one final newline; a
    non-finite number raises ValueError."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text + "\n"


def save_prompts(path: str | Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as canonical JSON (see :func:`dumps_prompts`) atomically; the same object always gives
    the same bytes. Returns the path."""
    data = dumps_prompts(obj).encode("ascii")
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def load_prompts(path: str | Path, dataset_fingerprint: str | None) -> dict[str, Any]:
    """Read a prompt file and check that it belongs to the dataset whose fingerprint is given (``None``
    skips that check). Raises InputError, naming the file and the cause, for a missing or malformed file
    or one made for another dataset."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        raise InputError(f"{path}: prompt file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a valid prompt file ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InputError(f"{path}: not an imis prompt file (expected format '{FORMAT}')")
    if obj.get("version") not in READABLE_VERSIONS:
        raise InputError(
            f"{path}: prompt file version {obj.get('version')!r} unsupported (expected one of "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    if not isinstance(obj.get("targets"), list) or not isinstance(obj.get("dataset_fingerprint"), str):
        raise InputError(f"{path}: prompt file lacks 'targets' or 'dataset_fingerprint'")
    if obj["version"] == 1:
        obj = _upgrade_v1(path, obj)
    if dataset_fingerprint is not None and obj["dataset_fingerprint"] != dataset_fingerprint:
        raise InputError(
            f"{path}: prompt file was generated for another dataset (fingerprint "
            f"{obj['dataset_fingerprint'][:12]}..., this dataset {dataset_fingerprint[:12]}...); "
            "regenerate it for this dataset"
        )
    return obj


def _upgrade_v1(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    """A version 1 object as version 2: each target's ``text`` becomes the sentence its run fed (the
    template filled with the target's display name)."""
    template = obj.get("text_template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InputError(f"{path}: prompt file's text_template {template!r} lacks its one '{{}}' field")
    targets = []
    for rec in obj["targets"]:
        if isinstance(rec, dict) and "skip_reason" not in rec and isinstance(rec.get("target"), str):
            rec = {**rec, "text": text_prompt(rec["target"], template)}
        targets.append(rec)
    return {**obj, "version": VERSION, "targets": targets}
