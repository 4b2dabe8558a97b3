"""The benchmark runner: seeded prompts replayed identically for every model, one JSON line per prediction.

A run directory holds::

    config.json        the BenchConfig of the run
    prompts.json       first prompts, generated once per (dataset, protocol, seed) (see imis.prompts)
    predictions.jsonl  one row per prediction, skipped prompt kind, model error or unreadable entry

Rows (``status`` is ``ok``, ``skipped`` or ``error``)::

    {"model", "dataset", "image", "target", "group", "kind", "k", "status", "dice", "iou", "nsd", "hd95",
     "seconds", "encode_seconds", "click", "reason"}

``kind`` is a single-protocol prompt kind (``click``, ``box``, ``text``, ``click+box``, ``box+text``,
``click+text``), ``iterative`` (``k`` = interaction 1..N), ``paper:click`` / ``paper:box`` / ``paper:text``
(the imis-paper protocol, ``k`` = round 1..N after that first prompt; see :func:`paper_correction` and
``docs/protocols.md``), ``noc`` (the NoC@85/90 of one target:
``noc85``, ``noc90``, ``failed85``, ``failed90``), ``box+<px>`` (box-offset protocol: the prompt file's box
with each coordinate offset by up to <px> pixels) or ``click@<bin>`` (click-position protocol: the uniform
first click, binned by ``click_distance``, its distance to the mask centroid divided by the mask's
equivalent radius sqrt(area/pi); the row also holds ``click_bin``). ``hd95`` is ``null`` where it is infinite (one mask empty).
The file is append-only and flushed after each row; a rerun skips the ``(model, image, target, kind, k)``
rows already present (a torn last line is ignored). A model that raises is recorded as an ``error`` row
with the reason (never as a zero) and counts as done; delete those lines to retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imis.bench.metrics import dice, mask_metrics
from imis.errors import ImisError, InputError, PromptError
from imis.prompts import (
    Click,
    dataset_fingerprint,
    generate_prompts,
    largest_component_click,
    load_prompts,
    prompt_rng,
    ritm_click,
    save_prompts,
    uniform_error_click,
)

__all__ = [
    "CLICK_SIMULATORS",
    "PAPER_KINDS",
    "PROTOCOLS",
    "SINGLE_KINDS",
    "BenchConfig",
    "click_bin",
    "click_distance",
    "load_any_model",
    "paper_correction",
    "paper_dice_iou",
    "paper_mask",
    "read_rows",
    "row_key",
    "run_bench",
]

PROTOCOLS = ("single", "iterative", "box-offset", "click-position", "imis-paper")
CLICK_SIMULATORS = ("ritm", "uniform", "largest-component")
FIRST_CLICKS = ("center", "centroid", "uniform")
BASELINES = ("grabcut", "random-walker")
#: single-protocol prompt kinds and the model prompt types each needs
SINGLE_KINDS: dict[str, tuple[str, ...]] = {
    "click": ("point",),
    "box": ("box",),
    "text": ("text",),
    "click+box": ("point", "box"),
    "box+text": ("box", "text"),
    "click+text": ("point", "text"),
}
#: imis-paper: the reference test.py's first-prompt modes (--prompt_mode points | bboxes | text) and the
#: model prompt type each needs
PAPER_KINDS: dict[str, str] = {"paper:click": "point", "paper:box": "box", "paper:text": "text"}
NOC_THRESHOLDS = (0.85, 0.90)
BOX_OFFSETS = (0, 5, 10, 20)
#: click-position bin edges, in units of the mask's equivalent radius sqrt(area/pi)
CLICK_BIN_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)
CLICK_BINS = tuple(f"[{a:g},{b:g})" for a, b in zip(CLICK_BIN_EDGES[:-1], CLICK_BIN_EDGES[1:], strict=True))
CLICK_BINS += (f">={CLICK_BIN_EDGES[-1]:g}",)


def click_distance(xy: tuple[float, float] | list[float], mask: np.ndarray) -> float:
    """Distance of the click ``(x, y)`` to the centroid of ``mask`` (non-empty), divided by the mask's
    equivalent radius sqrt(area / pi)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError("click distance of an empty mask")
    d = float(np.hypot(float(xy[0]) - xs.mean(), float(xy[1]) - ys.mean()))
    return d / float(np.sqrt(ys.size / np.pi))


def click_bin(distance: float) -> str:
    """The click-position bin (one of ``CLICK_BINS``) of a normalised distance."""
    for label, hi in zip(CLICK_BINS[:-1], CLICK_BIN_EDGES[1:], strict=True):
        if distance < hi:
            return label
    return CLICK_BINS[-1]


def paper_correction(
    pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator
) -> tuple[tuple[int, int], int]:
    """The IMIS-Bench reference's correction click (``get_points_from_interaction`` at test time, k = 1):
    ``((x, y), label)`` drawn uniformly over the error region ``pred XOR gt``, **with replacement** (an
    earlier click may be drawn again), label 1 on a false negative and 0 on a false positive.

    With no error left the reference feeds a padding point, label -1 ("not a point": the prompt encoder
    zeroes its position code, so only the previous logits steer the decoder); its coordinates are drawn
    uniformly in the image (the reference draws them in [0, 256), which does not change the result).
    """
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    ys, xs = np.nonzero(p ^ g)
    if ys.size:
        i = int(rng.integers(ys.size))
        x, y = int(xs[i]), int(ys[i])
        return (x, y), int(g[y, x])
    h, w = g.shape
    return (int(rng.integers(w)), int(rng.integers(h))), -1


def paper_mask(logits: np.ndarray) -> np.ndarray:
    """The reference's threshold: ``sigmoid(logits) > 0.5`` in float32 (logits in (0, ~3e-8) round to
    exactly 0.5 and stay background, unlike ``logits > 0``)."""
    import torch

    return (torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float32))) > 0.5).numpy()


def paper_dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The reference test.py's per-mask metrics: ``2|P∩G| / (|P| + |G| + 1e-8)`` and
    ``|P∩G| / (|P∪G| + 1e-8)`` (empty ground truth is never evaluated there)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    inter = float(np.count_nonzero(p & g))
    sp, sg = float(np.count_nonzero(p)), float(np.count_nonzero(g))
    return 2.0 * inter / (sp + sg + 1e-8), inter / (sp + sg - inter + 1e-8)


@contextmanager
def _best_iou(model: Any) -> Iterator[None]:
    """Decode with the reference's mask choice (multimask output, the highest predicted IoU) on models
    whose ``multimask`` policy says otherwise; restored afterwards."""
    old = getattr(model, "multimask", None)
    if old is None or old == "best_iou":
        yield
        return
    model.multimask = "best_iou"
    try:
        yield
    finally:
        model.multimask = old


@dataclass
class BenchConfig:
    """What to run. ``data``: an IMed-361M dataset folder; ``split``: its entry list (``test``/``train``);
    ``cases``: only the images of these cases (the case of ``ABD_035_120`` is ``ABD_035``), e.g. a
    validation split of training cases held out of a training run; ``limit_images``: only the first N
    images of the split (sorted by name), for quick runs;
    ``prompts_file``: a prompt file to replay instead of generating one (it must have been made for this
    data: see :func:`_user_prompts`)."""

    models: tuple[str, ...]
    data: Path
    split: str = "test"
    protocol: str = "single"
    seed: int = 0
    max_interactions: int = 9
    click_simulator: str = "ritm"
    first_click: str = "center"
    nsd_tolerance_mm: float = 2.0
    noc_cap: int = 20
    cases: tuple[str, ...] = ()
    limit_images: int | None = None
    device: str = "cpu"
    prompts_file: Path | None = None
    backend: str = "torch"
    precision: str = "fp32"
    model_loader: Callable[[str], Any] | None = field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        if not self.models:
            raise InputError("no model given: pass --models NAME[,NAME...]")
        if len(set(self.models)) != len(self.models):
            raise InputError(f"a model is named twice in {list(self.models)}")
        if self.protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.click_simulator not in CLICK_SIMULATORS:
            raise InputError(
                f"click simulator must be one of {', '.join(CLICK_SIMULATORS)}, not {self.click_simulator!r}"
            )
        if self.first_click not in FIRST_CLICKS:
            raise InputError(
                f"first click must be one of {', '.join(FIRST_CLICKS)}, not {self.first_click!r}"
            )
        if self.max_interactions < 1 or self.noc_cap < 1:
            raise InputError("max interactions and the NoC cap must be at least 1")
        if self.limit_images is not None and self.limit_images < 1:
            raise InputError(f"--limit-images must be at least 1, got {self.limit_images}")
        if self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model_loader")
        d["models"] = list(self.models)
        d["cases"] = list(self.cases)
        d["data"] = str(self.data)
        d["prompts_file"] = None if self.prompts_file is None else str(self.prompts_file)
        return d


def load_any_model(name: str, device: str = "cpu", backend: str = "torch", precision: str = "fp32") -> Any:
    """A registry model (``load_model`` on ``backend`` at ``precision``, see
    ``imis.models.onnx.backend.resolve_runtime``) or a weight-free baseline (``grabcut``, ``random-walker``)."""
    if name in BASELINES:
        try:
            from imis.bench.baselines import load_baseline
        except ImportError as exc:
            raise InputError(f"baseline {name!r} is not available ({exc})") from None
        return load_baseline(name)
    from imis.models.onnx.backend import resolve_runtime
    from imis.models.registry import load_model

    backend, dtype = resolve_runtime(backend, precision, device, name)
    return load_model(name, device=device, dtype=dtype, backend=backend)


# ---------------------------------------------------------------------------------------------------------
# predictions file
# ---------------------------------------------------------------------------------------------------------
def row_key(row: dict[str, Any]) -> tuple:
    return (row.get("model"), row.get("image"), row.get("target"), row.get("kind"), row.get("k"))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a predictions.jsonl; a torn or malformed line is ignored, a repeated key keeps the first."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        key = row_key(row)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


class _Writer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = {row_key(r) for r in read_rows(path)}
        # a torn last line (no final newline) is cut so that the next row starts on its own line
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                path.write_bytes(data[: data.rfind(b"\n") + 1])
        self.fh = path.open("a", encoding="utf-8")
        self.written = 0

    def write(self, row: dict[str, Any]) -> None:
        key = row_key(row)
        if key in self.done:
            return
        self.fh.write(json.dumps(row, sort_keys=True, allow_nan=False) + "\n")
        self.fh.flush()
        self.done.add(key)
        self.written += 1

    def close(self) -> None:
        self.fh.close()


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Image:
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


def _load_data(config: BenchConfig) -> tuple[str, list[_Image], list[dict[str, Any]]]:
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
        images.append(_Image(e.stem, e.image, masks, _spacing(e.extra, ds.meta)))
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
        )
        if not ok:
            raise InputError(
                f"{path}: target {r.get('image_id')}/{r.get('target')} lacks its clicks "
                f"({', '.join(_PROMPT_CLICKS)}) or its tight box"
            )
    return obj


def _prompts(config: BenchConfig, images: list[_Image], out_dir: Path, has_rows: bool) -> dict[str, Any]:
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


def _group_of(target: str) -> str:
    from imis.data.vocabulary import Vocabulary

    try:
        return Vocabulary.builtin().resolve(target, unknown="unknown").group
    except ImisError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------------------
def _metrics(pred: np.ndarray, gt: np.ndarray, spacing, tol: float) -> dict[str, Any]:
    m = mask_metrics(pred, gt, spacing, tol)
    return {
        "dice": m.dice,
        "iou": m.iou,
        "nsd": m.nsd,
        "hd95": m.hd95 if np.isfinite(m.hd95) else None,
    }


def _simulator(config: BenchConfig, image_id: str, target: str) -> Callable:
    if config.click_simulator == "ritm":
        return ritm_click
    if config.click_simulator == "largest-component":
        return largest_component_click
    rng = prompt_rng(config.seed, image_id, target, "iterative/uniform")
    return lambda pred, gt, clicked: uniform_error_click(pred, gt, rng, clicked)


def _single_jobs(rec: dict[str, Any], config: BenchConfig) -> list[tuple[str, dict[str, Any]]]:
    from imis.models.interactive import PromptSpec

    click = np.array([rec["clicks"][config.first_click]], dtype=np.float64)
    pos = np.array([1])
    box = np.array(rec["boxes"]["tight"], dtype=np.float64)
    text = rec["target"]
    specs = {
        "click": PromptSpec(points=click, labels=pos),
        "box": PromptSpec(box=box),
        "text": PromptSpec(text=text),
        "click+box": PromptSpec(points=click, labels=pos, box=box),
        "box+text": PromptSpec(box=box, text=text),
        "click+text": PromptSpec(points=click, labels=pos, text=text),
    }
    return list(specs.items())


def _unsupported(model: Any, spec: Any) -> str | None:
    """The model's own reason for refusing a prompt combination (``check_supported``), if any."""
    check = getattr(model, "check_supported", None)
    if check is None:
        return None
    try:
        check(spec)
    except PromptError as exc:
        return str(exc)
    return None


class _Run:
    def __init__(self, config: BenchConfig, dataset: str, writer: _Writer) -> None:
        self.config = config
        self.dataset = dataset
        self.writer = writer
        self.box_offsets = BOX_OFFSETS

    def base(self, model: str, image: str, target: str | None, kind: str, k: int) -> dict[str, Any]:
        return {
            "model": model,
            "dataset": self.dataset,
            "image": image,
            "target": target,
            "group": _group_of(target) if target else None,
            "kind": kind,
            "k": k,
        }

    def _kinds(self, rec: dict[str, Any], gt: np.ndarray) -> list[tuple[str, int]]:
        protocol = self.config.protocol
        if protocol == "single":
            return [(kind, 1) for kind in SINGLE_KINDS]
        if protocol == "box-offset":
            return [(f"box+{off}", 1) for off in self.box_offsets]
        if protocol == "click-position":
            return [(f"click@{click_bin(click_distance(rec['clicks']['uniform'], gt))}", 1)]
        if protocol == "imis-paper":
            return [(kind, k) for kind in PAPER_KINDS for k in range(1, self.config.max_interactions + 1)]
        return [("iterative", k) for k in range(1, self.config.max_interactions + 1)] + [("noc", 0)]

    def expected(self, model: str, image: _Image, recs: list[dict[str, Any]]) -> list[tuple]:
        return [
            (model, image.image_id, r["target"], kind, k)
            for r in recs
            for kind, k in self._kinds(r, image.masks[r["target"]])
        ]

    def run_image(self, name: str, model: Any, image: _Image, recs: list[dict[str, Any]]) -> None:
        from imis.data.formats.imed import read_image

        if all(key in self.writer.done for key in self.expected(name, image, recs)):
            return
        if (name, image.image_id, None, "error", 0) in self.writer.done:
            return
        t0 = time.perf_counter()
        try:
            emb = model.encode(read_image(image.image_path))
        except Exception as exc:  # noqa: BLE001 - any model failure is reported, the run goes on
            row = self.base(name, image.image_id, None, "error", 0)
            row.update(status="error", reason=f"encode failed: {type(exc).__name__}: {exc}")
            self.writer.write(row)
            return
        enc = time.perf_counter() - t0
        for rec in recs:
            gt = image.masks[rec["target"]]
            if self.config.protocol == "single":
                self._single(name, model, emb, image, rec, gt, enc)
            elif self.config.protocol in ("box-offset", "click-position"):
                self._variants(name, model, emb, image, rec, gt, enc)
            elif self.config.protocol == "imis-paper":
                with _best_iou(model):
                    self._paper(name, model, emb, image, rec, gt, enc)
            else:
                self._iterative(name, model, emb, image, rec, gt, enc)

    def _decode(self, model: Any, emb: Any, spec: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        pred = model.decode(emb, spec)
        return pred, time.perf_counter() - t0

    def _error(self, row: dict[str, Any], exc: BaseException) -> None:
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        self.writer.write(row)

    def _single(self, name, model, emb, image, rec, gt, enc) -> None:
        supported = set(model.prompt_types)
        for kind, spec in _single_jobs(rec, self.config):
            row = self.base(name, image.image_id, rec["target"], kind, 1)
            if row_key(row) in self.writer.done:
                continue
            if "click" in kind:
                row["click"] = self.config.first_click
            missing = [p for p in SINGLE_KINDS[kind] if p not in supported]
            reason = (
                f"model does not take {' or '.join(missing)} prompts"
                if missing
                else _unsupported(model, spec)
            )
            self._score(row, reason, model, emb, spec, gt, image, enc)

    def _score(self, row, reason, model, emb, spec, gt, image, enc) -> None:
        """Write one single-shot row: skipped with its reason, an error with its cause, or the metrics."""
        if reason:
            row.update(status="skipped", reason=reason)
            self.writer.write(row)
            return
        try:
            pred, secs = self._decode(model, emb, spec)
            row.update(_metrics(pred.mask, gt, image.spacing, self.config.nsd_tolerance_mm))
        except Exception as exc:  # noqa: BLE001
            self._error(row, exc)
            return
        row.update(status="ok", seconds=secs, encode_seconds=enc)
        self.writer.write(row)

    def _variants(self, name, model, emb, image, rec, gt, enc) -> None:
        """box-offset (one box per offset) and click-position (the uniform first click) predictions."""
        from imis.models.interactive import PromptSpec

        if self.config.protocol == "box-offset":
            need = "box"
            jobs = [
                (f"box+{off}", {}, PromptSpec(box=np.array(rec["boxes"][f"offset_{off}"], dtype=np.float64)))
                for off in self.box_offsets
            ]
        else:
            need = "point"
            xy = rec["clicks"]["uniform"]
            dist = click_distance(xy, gt)
            spec = PromptSpec(points=np.array([xy], dtype=np.float64), labels=np.array([1]))
            extra = {"click": "uniform", "click_distance": dist, "click_bin": click_bin(dist)}
            jobs = [(f"click@{extra['click_bin']}", extra, spec)]
        for kind, extra, spec in jobs:
            row = self.base(name, image.image_id, rec["target"], kind, 1)
            if row_key(row) in self.writer.done:
                continue
            row.update(extra)
            reason = (
                f"model does not take {need} prompts"
                if need not in set(model.prompt_types)
                else _unsupported(model, spec)
            )
            self._score(row, reason, model, emb, spec, gt, image, enc)

    def _iterative(self, name, model, emb, image, rec, gt, enc) -> None:
        from imis.models.interactive import PromptSpec

        cfg = self.config
        target = rec["target"]
        clicks = [Click(*rec["clicks"][cfg.first_click], True)]
        first = PromptSpec(points=np.array([clicks[0].xy], dtype=np.float64), labels=np.array([1]))
        reason = "model does not take point prompts" if "point" not in model.prompt_types else None
        reason = reason or _unsupported(model, first)
        if reason:
            for k in range(1, cfg.max_interactions + 1):
                row = self.base(name, image.image_id, target, "iterative", k)
                row.update(status="skipped", reason=reason)
                self.writer.write(row)
            row = self.base(name, image.image_id, target, "noc", 0)
            row.update(status="skipped", reason=reason)
            self.writer.write(row)
            return
        feed_logits = "mask" in model.prompt_types
        simulate = _simulator(cfg, image.image_id, target)
        logits = None
        pred = None
        dices: list[float] = []
        last: dict[str, Any] | None = None
        n_steps = max(cfg.max_interactions, cfg.noc_cap)
        for k in range(1, n_steps + 1):
            if k > cfg.max_interactions and all(any(d >= t for d in dices) for t in NOC_THRESHOLDS):
                break
            row = self.base(name, image.image_id, target, "iterative", k)
            row.update(click=cfg.first_click if k == 1 else cfg.click_simulator)
            if k > 1:
                nxt = simulate(pred.mask, gt, clicks)
                if nxt is None:  # no error pixel left to click: the prediction stands
                    dices.append(dices[-1])
                    if k <= cfg.max_interactions and last is not None:
                        row.update({m: last[m] for m in ("dice", "iou", "nsd", "hd95")})
                        row.update(status="ok", seconds=0.0, encode_seconds=enc, reason="no error left")
                        self.writer.write(row)
                    continue
                clicks.append(nxt)
            spec = PromptSpec(
                points=np.array([c.xy for c in clicks], dtype=np.float64),
                labels=np.array([int(c.positive) for c in clicks]),
                mask_logits=logits if feed_logits else None,
            )
            try:
                pred, secs = self._decode(model, emb, spec)
                if k <= cfg.max_interactions:
                    last = _metrics(pred.mask, gt, image.spacing, cfg.nsd_tolerance_mm)
                    dices.append(last["dice"])
                else:
                    dices.append(dice(pred.mask, gt))
            except Exception as exc:  # noqa: BLE001
                self._error(row, exc)
                return
            logits = pred.low_res_logits
            if k <= cfg.max_interactions:
                row.update(last, status="ok", seconds=secs, encode_seconds=enc)
                self.writer.write(row)
        row = self.base(name, image.image_id, target, "noc", 0)
        row["status"] = "ok"
        for t in NOC_THRESHOLDS:
            hit = next((i + 1 for i, d in enumerate(dices) if d >= t), None)
            row[f"noc{round(t * 100)}"] = hit if hit is not None else cfg.noc_cap
            row[f"failed{round(t * 100)}"] = hit is None
        row["dice"] = dices[min(len(dices), cfg.max_interactions) - 1]
        self.writer.write(row)

    def _paper_first(self, kind: str, rec: dict[str, Any], gt: np.ndarray, rng: np.random.Generator):
        """Round 1 of the imis-paper protocol: the click among the 50% of foreground pixels nearest the
        centroid (the prompt file's ``centroid`` click), the tight box, or the target's text."""
        from imis.models.interactive import PromptSpec

        if kind == "paper:box":
            return PromptSpec(box=np.array(rec["boxes"]["tight"], dtype=np.float64)), {}
        if kind == "paper:text":
            return PromptSpec(text=rec["target"]), {}
        xy, label = rec["clicks"]["centroid"], 1
        if int(rec.get("area", 2)) == 1:
            # the reference's fallback: int(0.5 * 1) == 0 candidates -> a random background pixel, label 0
            ys, xs = np.nonzero(~np.asarray(gt, bool))
            i = int(rng.integers(ys.size))
            xy, label = [int(xs[i]), int(ys[i])], 0
        spec = PromptSpec(points=np.array([xy], dtype=np.float64), labels=np.array([label]))
        return spec, {"click": "centroid", "label": label}

    def _paper(self, name, model, emb, image, rec, gt, enc) -> None:
        """The imis-paper protocol (IMIS-Bench test.py): per first-prompt mode, round 1 decodes that prompt
        alone; each later round decodes only the newest correction click (:func:`paper_correction`) plus
        the previous round's low-res logits as the mask prompt (no click history, no box, no text); the
        mask is the best of the multimask outputs by predicted IoU, thresholded at sigmoid > 0.5
        (:func:`paper_mask`) at native resolution; every round 1..N is decoded and scored (no early
        stop, no NoC)."""
        from imis.models.interactive import PromptSpec

        cfg = self.config
        target = rec["target"]
        types = set(model.prompt_types)
        for kind, need in PAPER_KINDS.items():
            keys = [(name, image.image_id, target, kind, k) for k in range(1, cfg.max_interactions + 1)]
            if all(key in self.writer.done for key in keys):
                continue
            rng = prompt_rng(cfg.seed, image.image_id, target, f"imis-paper/{kind}")
            first, extra = self._paper_first(kind, rec, gt, rng)
            if need not in types:
                reason = f"model does not take {need} prompts"
            elif cfg.max_interactions > 1 and "mask" not in types:
                reason = (
                    "imis-paper feeds the previous logits back as a mask prompt; model takes no mask prompts"
                )
            else:
                reason = _unsupported(model, first)
            if reason:
                for k in range(1, cfg.max_interactions + 1):
                    row = self.base(name, image.image_id, target, kind, k)
                    row.update(status="skipped", reason=reason)
                    self.writer.write(row)
                continue
            pred = mask = None
            for k in range(1, cfg.max_interactions + 1):
                row = self.base(name, image.image_id, target, kind, k)
                if k == 1:
                    spec = first
                    row.update(extra)
                else:
                    xy, label = paper_correction(mask, gt, rng)
                    spec = PromptSpec(
                        points=np.array([xy], dtype=np.float64),
                        labels=np.array([label]),
                        mask_logits=pred.low_res_logits,
                    )
                    row.update(click="uniform-error", label=label)
                try:
                    pred, secs = self._decode(model, emb, spec)
                    mask = paper_mask(pred.logits)
                    m = _metrics(mask, gt, image.spacing, cfg.nsd_tolerance_mm)
                    m["dice"], m["iou"] = paper_dice_iou(mask, gt)
                except Exception as exc:  # noqa: BLE001
                    self._error(row, exc)
                    break
                row.update(m, status="ok", seconds=secs, encode_seconds=enc)
                self.writer.write(row)


def _progress(iterable, total: int, desc: str, enabled: bool) -> Iterator:
    if not enabled:
        return iter(iterable)
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit="img", leave=False))


def run_bench(
    config: BenchConfig, out_dir: str | Path, progress: bool = True, report: bool = True
) -> dict[str, Any]:
    """Run ``config`` into ``out_dir`` (created; resumed when it holds an earlier run of the same data,
    protocol and seed), then write the reports (``report=False``: only aggregate, for runs whose rows are
    merged elsewhere). Returns the summary (see :mod:`imis.bench.report`)."""
    from imis.bench.report import aggregate, write_report

    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset, images, bad = _load_data(config)
    if not images:
        raise InputError(f"{config.data}: no readable entry in split {config.split!r}")
    pred_path = out / "predictions.jsonl"
    prompts = _prompts(config, images, out, bool(read_rows(pred_path)))
    (out / "config.json").write_text(json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n")
    by_image: dict[str, list[dict[str, Any]]] = {}
    for rec in prompts["targets"]:
        if "skip_reason" not in rec:
            by_image.setdefault(rec["image_id"], []).append(rec)
    if config.protocol == "box-offset" and not set(BOX_OFFSETS) <= set(prompts.get("box_offsets", [])):
        src = config.prompts_file or out / "prompts.json"
        raise InputError(f"{src}: prompt file lacks the box offsets {list(BOX_OFFSETS)}")
    writer = _Writer(pred_path)
    run = _Run(config, dataset, writer)
    try:
        for b in bad:
            row = run.base("*", b["image"], None, "label", 0)
            row.update(status="skipped", reason=b["reason"])
            writer.write(row)
        loader = config.model_loader or (
            lambda n: load_any_model(n, config.device, config.backend, config.precision)
        )
        for name in config.models:
            model = loader(name)
            it = _progress(images, len(images), name, progress)
            for image in it:
                run.run_image(name, model, image, by_image.get(image.image_id, []))
    finally:
        writer.close()
    return write_report(out) if report else aggregate(read_rows(pred_path))
