"""The benchmark runner: seeded prompts replayed identically for every model, one JSON line per prediction.

A run directory holds::

    config.json        the BenchConfig of the run as requested, and what each model's --backend / --precision
                       resolved to (``resolved_runtime``: auto becomes torch|onnx, fp32|bf16|int8)
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

import inspect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imis.bench.config import BenchConfig
from imis.bench.inputs import BenchImage, load_data, run_prompts
from imis.bench.metrics import dice, mask_metrics
from imis.bench.protocols import (
    BOX_OFFSETS,
    NOC_THRESHOLDS,
    PAPER_KINDS,
    SINGLE_KINDS,
    click_bin,
    click_distance,
    paper_correction,
    paper_dice_iou,
    paper_mask,
)
from imis.bench.records import RowWriter, read_rows, row_key
from imis.errors import ImisError, InputError, PromptError
from imis.models.interactive import MultimaskPolicy, Prediction, PromptableModel, PromptSpec
from imis.prompts import (
    Click,
    largest_component_click,
    prompt_rng,
    ritm_click,
    uniform_error_click,
)

__all__ = ["BASELINES", "BenchConfig", "load_any_model", "run_bench", "runtime_of"]

BASELINES = ("grabcut", "random-walker")


def load_any_model(
    name: str,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    zoom: bool | int = False,
) -> PromptableModel:
    """A registry model (``load_model`` with ``checkpoint`` for one without embedded weights, on
    ``backend`` at ``precision``, see ``imis.models.onnx.backend.resolve_runtime``; with zoom-in
    refinement if ``zoom``: True or K, zoomed from interaction K on, see ``imis.models.zoom``) or a
    weight-free baseline (``grabcut``, ``random-walker``; ``zoom`` does not apply to them)."""
    if name in BASELINES:
        try:
            from imis.bench.baselines import load_baseline
        except ImportError as exc:
            raise InputError(f"baseline {name!r} is not available ({exc})") from None
        return load_baseline(name)
    from imis.models.onnx.backend import resolve_runtime
    from imis.models.registry import load_model

    backend, dtype = resolve_runtime(backend, precision, device, name)
    model = load_model(name, checkpoint=checkpoint, device=device, dtype=dtype, backend=backend)
    if zoom:
        from imis.models.zoom import ZoomConfig, ZoomModel

        return ZoomModel(model, ZoomConfig(start=int(zoom)))
    return model


def runtime_of(model: PromptableModel) -> dict[str, str] | None:
    """The backend and precision a loaded model runs at: what ``--backend auto`` / ``--precision auto``
    resolved to (ONNX models say so; a torch model's autocast dtype is its precision). None for a model
    without a runtime (the baselines)."""
    model = getattr(model, "model", model)  # a ZoomModel runs its wrapped model
    if getattr(model, "backend", None) == "onnx":
        return {"backend": "onnx", "precision": model.precision}
    if not hasattr(model, "dtype"):
        return None
    import torch

    return {"backend": "torch", "precision": "bf16" if model.dtype == torch.bfloat16 else "fp32"}


def _write_config(path: Path, config: BenchConfig, resolved: dict[str, dict[str, str] | None]) -> None:
    """config.json: the run as requested (``backend``/``precision`` may be ``auto``) and, per model loaded
    so far, what it resolved to (``resolved_runtime``), so that a run's numbers can be told apart by the
    runtime that made them."""
    record = {**config.to_json(), "resolved_runtime": resolved}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


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


def _single_jobs(rec: dict[str, Any], config: BenchConfig) -> list[tuple[str, PromptSpec]]:
    click = np.array([rec["clicks"][config.first_click]], dtype=np.float64)
    pos = np.array([1])
    box = np.array(rec["boxes"]["tight"], dtype=np.float64)
    text = rec["text"]  # the sentence the prompt file records is what the model reads
    specs = {
        "click": PromptSpec(points=click, labels=pos),
        "box": PromptSpec(box=box),
        "text": PromptSpec(text=text),
        "click+box": PromptSpec(points=click, labels=pos, box=box),
        "box+text": PromptSpec(box=box, text=text),
        "click+text": PromptSpec(points=click, labels=pos, text=text),
    }
    return list(specs.items())


def _unsupported(model: PromptableModel, spec: PromptSpec) -> str | None:
    """The model's own reason for refusing a prompt combination (``check_supported``), if any."""
    check = getattr(model, "check_supported", None)
    if check is None:
        return None
    try:
        check(spec)
    except PromptError as exc:
        return str(exc)
    return None


def _takes_multimask(model: PromptableModel) -> bool:
    try:
        return "multimask" in inspect.signature(model.decode).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


@dataclass
class _Target:
    """One target of one image, for one model: what every protocol's loop needs."""

    model_name: str
    model: PromptableModel
    embedding: Any
    image: BenchImage
    rec: dict[str, Any]  # the target's record in the prompt file
    gt: np.ndarray
    encode_seconds: float

    @property
    def name(self) -> str:
        return self.rec["target"]


class _Run:
    def __init__(self, config: BenchConfig, dataset: str, writer: RowWriter) -> None:
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

    def expected(self, model: str, image: BenchImage, recs: list[dict[str, Any]]) -> list[tuple]:
        return [
            (model, image.image_id, r["target"], kind, k)
            for r in recs
            for kind, k in self._kinds(r, image.masks[r["target"]])
        ]

    def run_image(
        self, name: str, model: PromptableModel, image: BenchImage, recs: list[dict[str, Any]]
    ) -> None:
        if all(key in self.writer.done for key in self.expected(name, image, recs)):
            return
        if (name, image.image_id, None, "error", 0) in self.writer.done:
            return
        t0 = time.perf_counter()
        try:
            emb = model.encode(self.pixels(image))
        except Exception as exc:  # noqa: BLE001 - any model failure is reported, the run goes on
            row = self.base(name, image.image_id, None, "error", 0)
            row.update(status="error", reason=f"encode failed: {type(exc).__name__}: {exc}")
            self.writer.write(row)
            return
        enc = time.perf_counter() - t0
        protocol = {
            "single": self._single,
            "box-offset": self._variants,
            "click-position": self._variants,
            "imis-paper": self._paper,
            "iterative": self._iterative,
        }[self.config.protocol]
        for rec in recs:
            protocol(_Target(name, model, emb, image, rec, image.masks[rec["target"]], enc))

    def pixels(self, image: BenchImage) -> np.ndarray:
        """The pixels the models see: the image file, remapped by ``--perturb`` when given."""
        from imis.data.formats.imed import read_image
        from imis.data.perturb import perturb_image

        pixels = read_image(image.image_path)
        return perturb_image(pixels, self.config.perturb, self.config.seed, image.image_id)

    def row(self, t: _Target, kind: str, k: int) -> dict[str, Any]:
        return self.base(t.model_name, t.image.image_id, t.name, kind, k)

    def _decode(
        self, t: _Target, spec: PromptSpec, multimask: MultimaskPolicy | None = None
    ) -> tuple[Prediction, float]:
        t0 = time.perf_counter()
        if multimask is None or not _takes_multimask(t.model):
            # the model's own policy; a model written before the switch keeps it (one output anyway)
            pred = t.model.decode(t.embedding, spec)
        else:
            pred = t.model.decode(t.embedding, spec, multimask=multimask)
        return pred, time.perf_counter() - t0

    def _error(self, row: dict[str, Any], exc: BaseException) -> None:
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        self.writer.write(row)

    def _skip(self, t: _Target, keys: list[tuple[str, int]], reason: str) -> None:
        for kind, k in keys:
            row = self.row(t, kind, k)
            row.update(status="skipped", reason=reason)
            self.writer.write(row)

    def _single(self, t: _Target) -> None:
        supported = set(t.model.prompt_types)
        for kind, spec in _single_jobs(t.rec, self.config):
            row = self.row(t, kind, 1)
            if row_key(row) in self.writer.done:
                continue
            if "click" in kind:
                row["click"] = self.config.first_click
            missing = [p for p in SINGLE_KINDS[kind] if p not in supported]
            reason = (
                f"model does not take {' or '.join(missing)} prompts"
                if missing
                else _unsupported(t.model, spec)
            )
            self._score(t, row, reason, spec)

    def _score(self, t: _Target, row: dict[str, Any], reason: str | None, spec: PromptSpec) -> None:
        """Write one single-shot row: skipped with its reason, an error with its cause, or the metrics."""
        if reason:
            row.update(status="skipped", reason=reason)
            self.writer.write(row)
            return
        try:
            pred, secs = self._decode(t, spec)
            row.update(_metrics(pred.mask, t.gt, t.image.spacing, self.config.nsd_tolerance_mm))
        except Exception as exc:  # noqa: BLE001
            self._error(row, exc)
            return
        row.update(status="ok", seconds=secs, encode_seconds=t.encode_seconds)
        self.writer.write(row)

    def _variants(self, t: _Target) -> None:
        """box-offset (one box per offset) and click-position (the uniform first click) predictions."""
        rec = t.rec
        if self.config.protocol == "box-offset":
            need = "box"
            jobs = [
                (f"box+{off}", {}, PromptSpec(box=np.array(rec["boxes"][f"offset_{off}"], dtype=np.float64)))
                for off in self.box_offsets
            ]
        else:
            need = "point"
            xy = rec["clicks"]["uniform"]
            dist = click_distance(xy, t.gt)
            spec = PromptSpec(points=np.array([xy], dtype=np.float64), labels=np.array([1]))
            extra = {"click": "uniform", "click_distance": dist, "click_bin": click_bin(dist)}
            jobs = [(f"click@{extra['click_bin']}", extra, spec)]
        for kind, extra, spec in jobs:
            row = self.row(t, kind, 1)
            if row_key(row) in self.writer.done:
                continue
            row.update(extra)
            reason = (
                f"model does not take {need} prompts"
                if need not in set(t.model.prompt_types)
                else _unsupported(t.model, spec)
            )
            self._score(t, row, reason, spec)

    def _iterative(self, t: _Target) -> None:
        """The first click, then simulated correction clicks (accumulated, the previous logits fed back):
        one row per interaction 1..N, then the target's NoC row."""
        cfg = self.config
        clicks = [Click(*t.rec["clicks"][cfg.first_click], True)]
        first = PromptSpec(points=np.array([clicks[0].xy], dtype=np.float64), labels=np.array([1]))
        reason = "model does not take point prompts" if "point" not in t.model.prompt_types else None
        reason = reason or _unsupported(t.model, first)
        if reason:
            keys = [("iterative", k) for k in range(1, cfg.max_interactions + 1)] + [("noc", 0)]
            self._skip(t, keys, reason)
            return
        dices = self._interactions(t, clicks)
        if dices is not None:
            self._noc_row(t, dices)

    def _interactions(self, t: _Target, clicks: list[Click]) -> list[float] | None:
        """Decode interaction 1, 2, ... until the N-th and every NoC threshold is reached (or the NoC
        cap); returns the Dice after each, or None when the model failed (the error row is written)."""
        cfg = self.config
        feed_logits = "mask" in t.model.prompt_types
        simulate = _simulator(cfg, t.image.image_id, t.name)
        logits = pred = last = None
        dices: list[float] = []
        for k in range(1, max(cfg.max_interactions, cfg.noc_cap) + 1):
            if k > cfg.max_interactions and all(any(d >= th for d in dices) for th in NOC_THRESHOLDS):
                break
            row = self.row(t, "iterative", k)
            row.update(click=cfg.first_click if k == 1 else cfg.click_simulator)
            if k > 1:
                nxt = simulate(pred.mask, t.gt, clicks)
                if nxt is None:  # no error pixel left to click: the prediction stands
                    dices.append(dices[-1])
                    if k <= cfg.max_interactions and last is not None:
                        row.update({m: last[m] for m in ("dice", "iou", "nsd", "hd95")})
                        row.update(status="ok", seconds=0.0, encode_seconds=t.encode_seconds)
                        row.update(reason="no error left")
                        self.writer.write(row)
                    continue
                clicks.append(nxt)
            spec = PromptSpec(
                points=np.array([c.xy for c in clicks], dtype=np.float64),
                labels=np.array([int(c.positive) for c in clicks]),
                mask_logits=logits if feed_logits else None,
            )
            try:
                pred, secs = self._decode(t, spec)
                if k <= cfg.max_interactions:
                    last = _metrics(pred.mask, t.gt, t.image.spacing, cfg.nsd_tolerance_mm)
                    dices.append(last["dice"])
                else:
                    dices.append(dice(pred.mask, t.gt))
            except Exception as exc:  # noqa: BLE001
                self._error(row, exc)
                return None
            logits = pred.low_res_logits
            if k <= cfg.max_interactions:
                row.update(last, status="ok", seconds=secs, encode_seconds=t.encode_seconds)
                self.writer.write(row)
        return dices

    def _noc_row(self, t: _Target, dices: list[float]) -> None:
        cfg = self.config
        row = self.row(t, "noc", 0)
        row["status"] = "ok"
        for th in NOC_THRESHOLDS:
            hit = next((i + 1 for i, d in enumerate(dices) if d >= th), None)
            row[f"noc{round(th * 100)}"] = hit if hit is not None else cfg.noc_cap
            row[f"failed{round(th * 100)}"] = hit is None
        row["dice"] = dices[min(len(dices), cfg.max_interactions) - 1]
        self.writer.write(row)

    def _paper_first(
        self, kind: str, rec: dict[str, Any], gt: np.ndarray, rng: np.random.Generator
    ) -> tuple[PromptSpec, dict[str, Any]]:
        """Round 1 of the imis-paper protocol: the click among the 50% of foreground pixels nearest the
        centroid (the prompt file's ``centroid`` click), the tight box, or the target's text prompt."""
        if kind == "paper:box":
            return PromptSpec(box=np.array(rec["boxes"]["tight"], dtype=np.float64)), {}
        if kind == "paper:text":
            return PromptSpec(text=rec["text"]), {}
        xy, label = rec["clicks"]["centroid"], 1
        if int(rec.get("area", 2)) == 1:
            # the reference's fallback: int(0.5 * 1) == 0 candidates -> a random background pixel, label 0
            ys, xs = np.nonzero(~np.asarray(gt, bool))
            i = int(rng.integers(ys.size))
            xy, label = [int(xs[i]), int(ys[i])], 0
        spec = PromptSpec(points=np.array([xy], dtype=np.float64), labels=np.array([label]))
        return spec, {"click": "centroid", "label": label}

    def _paper_reason(self, t: _Target, need: str, first: PromptSpec) -> str | None:
        types = set(t.model.prompt_types)
        if need not in types:
            return f"model does not take {need} prompts"
        if self.config.max_interactions > 1 and "mask" not in types:
            return "imis-paper feeds the previous logits back as a mask prompt; model takes no mask prompts"
        return _unsupported(t.model, first)

    def _paper(self, t: _Target) -> None:
        """The imis-paper protocol (IMIS-Bench test.py): per first-prompt mode, round 1 decodes that prompt
        alone; each later round decodes only the newest correction click (:func:`paper_correction`) plus
        the previous round's low-res logits as the mask prompt (no click history, no box, no text); the
        mask is the best of the multimask outputs by predicted IoU, thresholded at sigmoid > 0.5
        (:func:`paper_mask`) at native resolution; every round 1..N is decoded and scored (no early
        stop, no NoC)."""
        cfg = self.config
        for kind, need in PAPER_KINDS.items():
            keys = [(kind, k) for k in range(1, cfg.max_interactions + 1)]
            if all(row_key(self.row(t, *key)) in self.writer.done for key in keys):
                continue
            rng = prompt_rng(cfg.seed, t.image.image_id, t.name, f"imis-paper/{kind}")
            first, extra = self._paper_first(kind, t.rec, t.gt, rng)
            reason = self._paper_reason(t, need, first)
            if reason:
                self._skip(t, keys, reason)
                continue
            self._paper_rounds(t, kind, first, extra, rng)

    def _paper_rounds(
        self, t: _Target, kind: str, first: PromptSpec, extra: dict[str, Any], rng: np.random.Generator
    ) -> None:
        cfg = self.config
        pred = mask = None
        for k in range(1, cfg.max_interactions + 1):
            row = self.row(t, kind, k)
            if k == 1:
                spec = first
                row.update(extra)
            else:
                xy, label = paper_correction(mask, t.gt, rng)
                spec = PromptSpec(
                    points=np.array([xy], dtype=np.float64),
                    labels=np.array([label]),
                    mask_logits=pred.low_res_logits,
                )
                row.update(click="uniform-error", label=label)
            try:
                # the reference's mask choice: the best multimask output by predicted IoU, whatever the
                # model's own policy
                pred, secs = self._decode(t, spec, multimask="best_iou")
                mask = paper_mask(pred.logits)
                m = _metrics(mask, t.gt, t.image.spacing, cfg.nsd_tolerance_mm)
                m["dice"], m["iou"] = paper_dice_iou(mask, t.gt)
            except Exception as exc:  # noqa: BLE001
                self._error(row, exc)
                break
            row.update(m, status="ok", seconds=secs, encode_seconds=t.encode_seconds)
            self.writer.write(row)


def _progress(iterable, total: int, desc: str, enabled: bool) -> Iterator:
    if not enabled:
        return iter(iterable)
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit="img", leave=False))


def _check_perturb(path: Path, perturb: str | None, has_rows: bool) -> None:
    """Refuse to resume a run directory whose predictions were made on differently perturbed images."""
    if not (has_rows and path.is_file()):
        return
    try:
        before = json.loads(path.read_text()).get("perturb")
    except (OSError, ValueError, AttributeError):
        return
    if before != perturb:
        raise InputError(
            f"{path}: this run directory holds predictions made with --perturb {before}, not {perturb}: "
            "use a new -o"
        )


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
    dataset, images, bad = load_data(config)
    if not images:
        raise InputError(f"{config.data}: no readable entry in split {config.split!r}")
    pred_path = out / "predictions.jsonl"
    has_rows = bool(read_rows(pred_path))
    _check_perturb(out / "config.json", config.perturb, has_rows)
    prompts = run_prompts(config, images, out, has_rows)
    resolved: dict[str, dict[str, str] | None] = {}
    _write_config(out / "config.json", config, resolved)
    by_image: dict[str, list[dict[str, Any]]] = {}
    for rec in prompts["targets"]:
        if "skip_reason" not in rec:
            by_image.setdefault(rec["image_id"], []).append(rec)
    if config.protocol == "box-offset" and not set(BOX_OFFSETS) <= set(prompts.get("box_offsets", [])):
        src = config.prompts_file or out / "prompts.json"
        raise InputError(f"{src}: prompt file lacks the box offsets {list(BOX_OFFSETS)}")
    writer = RowWriter(pred_path)
    run = _Run(config, dataset, writer)
    try:
        for b in bad:
            row = run.base("*", b["image"], None, "label", 0)
            row.update(status="skipped", reason=b["reason"])
            writer.write(row)
        loader = config.model_loader or (
            lambda n: load_any_model(
                n, config.device, config.checkpoints.get(n), config.backend, config.precision, config.zoom
            )
        )
        for name in config.models:
            model = loader(name)
            resolved[name] = runtime_of(model)
            _write_config(out / "config.json", config, resolved)
            it = _progress(images, len(images), name, progress)
            for image in it:
                run.run_image(name, model, image, by_image.get(image.image_id, []))
    finally:
        writer.close()
    return write_report(out) if report else aggregate(read_rows(pred_path))
