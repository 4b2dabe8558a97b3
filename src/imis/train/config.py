"""The settings of `imis train`, read from a YAML file (``imis train --config train.yaml``).

Every key has a default except ``datasets``; an unknown key, a wrong type or an out-of-range value is an
:class:`imis.errors.InputError` naming the file, the key and what is allowed. Paths in the file are
relative to the file. The defaults follow the paper's recipe (§4.1-4.2: K=8 interactions, Adam at
2e-5, loss 20*focal + dice + IoU MSE, intensity scale/shift p=0.2 factor 0.2)::

    name: imis-lite            # name of the trained model (and of its exported checkpoint)
    out: runs/train/imis-lite  # run folder (``-o`` overrides)
    model:
      arch: imis-lite          # imis-lite | litemedsam | imis-net
      init: litemedsam         # registry model or checkpoint whose weights start the run (null: random)
      arch_kwargs: {}          # builder arguments (e.g. a tiny imis-net for tests)
      freeze_image_encoder: true
      train_encoder_tail: 0    # N > 0 (with the encoder frozen): its last N stages (TinyViT) or blocks
                               # (ViT) and its neck train too, over cached outputs of the frozen rest
      decoder_parts: all       # all: prompt encoder, mask decoder and text layers train; multimask-heads:
                               # only the multimask outputs' hypernetworks and their rows of the IoU head
                               # (the single output and everything it reads stay bit-identical);
                               # multimask-tokens: those and the mask tokens 1.. (rows of mask_tokens)
    datasets:                  # IMed-361M-format folders (btcv-demo, `imis prepare` outputs)
      - {path: ../shared/data/btcv-demo, split: train, repeat: 2, imask: true}
      - {kind: synthetic, path: runs/synthetic, btcv: ../shared/data/btcv-demo, count: 200, seed: 0}
                               # images generated from label maps and shapes (see DatasetSpec)
    val_datasets: []           # same form; scored every epoch with the benchmark's Dice
    epochs: 10
    steps_per_epoch: null      # null: one pass over the (repeated) training images
    batch_images: 2            # images per optimizer step (global, split over DDP ranks)
    masks_per_image: 4         # ground-truth targets drawn per image (with replacement when fewer)
    imasks_per_image: 2        # targets drawn from the image's interactive-mask map
    interactions: 8            # K correction steps after the first prompt
    grad_steps: all            # all | N: steps that get gradients (step 0 + N-1 random); the rest
                               # are simulated without gradients (cheaper, RITM-style)
    schedule: plain            # plain: clicks accumulate, first box/text kept, previous logits fed
                               # reference: IMIS-Net's (latest click + logits; text + logits at one
                               # random step and the last)
                               # paper: `imis bench --protocol imis-paper`'s loop (its first prompts,
                               # then the newest uniform error click + logits only), best of the
                               # multimask outputs; a mapping mixes them per mask: {plain: 1, paper: 1}
    first_prompts: {click: 0.3, box: 0.3, text: 0.15, click+box: 0.1, box+text: 0.05, click+text: 0.1}
    first_clicks: {centroid: 0.5, center: 0.25, uniform: 0.25}
    corrections: {uniform: 0.4, ritm: 0.4, largest-component: 0.2}
    box_jitter: 5
    click_output: multimask    # multimask: SAM's rule, a lone click trains the best of three outputs and
                               # the IoU head picks one; single: one output for every prompt (exported
                               # with the "single" policy)
    text_template: "A segmentation area of a {}."
    clean_imask: true          # the reference's imask cleaning (drop < 0.05 %, opening/closing)
    lr: 2.0e-5
    text_lr_scale: 1.0         # learning-rate factor of the new text layers (projection, text-to-mask)
    weight_decay: 0.0
    warmup_steps: 100
    focal_weight: 20.0
    dice_weight: 1.0
    iou_weight: 1.0
    augment_prob: 0.2          # intensity scale and shift, each with this probability ...
    augment_factor: 0.2        # ... by up to this factor (only where the image encoder runs)
    variant_rotate: 10.0       # bounds of the geometric variants a dataset asks for (``variants: N``):
    variant_scale: 0.1         #   rotation +-degrees, zoom +-fraction, shift +-fraction of the side
    variant_shift: 0.05
    embedding_cache: null      # folder for fp16 image embeddings (frozen encoder) and the MiniLM text
                               # features (text/minilm.pt); null: <out>/embeddings
    amp: true                  # autocast on CUDA (bf16 where supported, else fp16 with a grad scaler)
    device: auto               # auto | cpu | cuda | cuda:N
    seed: 0
    checkpoint_every: 200      # steps between resumable checkpoints (also at every epoch end)
    max_nan_steps: 20          # steps with a non-finite loss are skipped; stop after this many
    val_max_targets: 200       # targets scored per validation
    val_interactions: 5        # validation also scores a centre click + N-1 RITM corrections (the
                               # benchmark's iterative protocol); 0: only click, box and text
    select_on: []              # val_log columns (e.g. [BTCV:click@5, ood-val:click]): after each
                               # validation whose mean of them is the best so far, the model is also
                               # exported (fp16) to <out>/best.pt (best.json: step, score, metrics)
    num_threads: null          # torch CPU threads (null: torch's default)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imis.data.perturb import PERTURBATIONS
from imis.errors import InputError
from imis.prompts.text import DEFAULT_TEMPLATE

__all__ = [
    "FIRST_CLICKS",
    "FIRST_PROMPTS",
    "CORRECTIONS",
    "DatasetSpec",
    "ModelConfig",
    "TrainConfig",
    "load_train_config",
]

FIRST_PROMPTS = ("click", "box", "text", "click+box", "box+text", "click+text")
FIRST_CLICKS = ("centroid", "center", "uniform")
CORRECTIONS = ("uniform", "ritm", "largest-component")
SCHEDULES = ("plain", "reference", "paper")
DECODER_PARTS = ("all", "multimask-heads", "multimask-tokens")
CLICK_OUTPUTS = ("multimask", "single")


def _unknown(keys: set[str], known: list[str], where: str) -> None:
    for key in sorted(keys - set(known)):
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(known)}")


def _check_type(value: Any, kind: type | tuple[type, ...], where: str, key: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise InputError(f"{where}: {key} must be a number, not {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"{where}: {key} must be {names}, not {type(value).__name__} {value!r}")
    return value


def _probs(value: Any, allowed: tuple[str, ...], where: str, key: str) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise InputError(f"{where}: {key} must be a non-empty mapping of {', '.join(allowed)} to weights")
    out = {}
    for k, v in value.items():
        if k not in allowed:
            raise InputError(f"{where}: {key} has unknown entry {k!r}; allowed: {', '.join(allowed)}")
        v = _check_type(v, (int, float), where, f"{key}.{k}")
        if not math.isfinite(v) or v < 0:
            raise InputError(f"{where}: {key}.{k} must be a finite weight >= 0, not {v!r}")
        out[k] = float(v)
    if sum(out.values()) <= 0:
        raise InputError(f"{where}: {key} weights sum to zero")
    return out


@dataclass(frozen=True)
class DatasetSpec:
    """One training/validation source: an IMed-361M-format folder.

    split: train | test | all; repeat: times each image appears per epoch; imask: also draw targets
    from the interactive-mask maps; exclude_targets: label names never trained on (held-out
    structures); max_images: only the first N images (sorted), for quick runs; every: keep every Nth
    image of the sorted list (a lighter share of a large dataset, all slicing axes kept); cases /
    exclude_cases: keep only / leave out the images of these cases (the case of ``ABD_035_120`` is
    ``ABD_035``): a validation split of whole held-out cases, not slices of training cases; variants:
    N fixed random rotations/zooms/shifts of each image (targets warped alike) that train beside it.
    With a frozen encoder the intensity augmentation cannot act (embeddings are cached), so these
    variants are what augments: each one is encoded once and cached like an image. zoom_variants: N
    crops around one small target each, as the zoom-in refinement sees an object at inference
    (``imis.train.data.zoom_window``), also encoded once and cached. intensity_variants: N copies of
    each image under a random intensity remap each (inversion, gamma, non-monotone maps;
    ``imis.data.perturb.random_remap``), encoded once and cached, the frozen encoder's substitute for
    intensity augmentation. perturb: one of ``imis bench --perturb``'s remaps applied to every image,
    for a validation set that measures robustness (its per-dataset columns read ``<name>+<perturb>:``).
    kind ``synthetic``: ``count`` generated images (``seed``, ``sources``, ``btcv``; imis.data.synthetic), ``exclude_cases`` kept out of
    its labels and backgrounds, ``label_cache`` an ``.npz`` of the brain label maps
    (imis.data.synthetic.write_brain_cache) read instead of the template volumes.
    """

    path: str
    split: str = "train"
    repeat: int = 1
    imask: bool = True
    exclude_targets: tuple[str, ...] = ()
    max_images: int | None = None
    every: int = 1
    variants: int = 0
    cases: tuple[str, ...] = ()
    exclude_cases: tuple[str, ...] = ()
    kind: str = "imed"
    count: int = 200
    seed: int = 0
    sources: tuple[str, ...] = ()
    btcv: str | None = None
    zoom_variants: int = 0
    label_cache: str | None = None
    intensity_variants: int = 0
    perturb: str | None = None

    @classmethod
    def from_mapping(cls, data: Any, where: str, base: Path) -> DatasetSpec:
        if isinstance(data, str):
            data = {"path": data}
        if not isinstance(data, dict) or "path" not in data:
            raise InputError(f"{where}: a dataset entry needs at least a 'path', got {data!r}")
        _unknown(set(data), [f.name for f in fields(cls)], where)
        path = str(data["path"])
        if not Path(path).is_absolute():
            path = str((base / path).resolve())
        if data.get("kind", "imed") == "synthetic":
            return cls._synthetic(data, where, base, path)
        if data.get("kind", "imed") != "imed":
            raise InputError(f"{where}: kind must be imed or synthetic, not {data.get('kind')!r}")
        extra = {"count", "seed", "sources", "btcv"} & set(data)
        if extra:
            raise InputError(f"{where}: {sorted(extra)} are keys of kind: synthetic only")
        split = data.get("split", "train")
        if split not in ("train", "test", "all"):
            raise InputError(f"{where}: split must be train, test or all, not {split!r}")
        repeat = _check_type(data.get("repeat", 1), int, where, "repeat")
        if repeat < 1:
            raise InputError(f"{where}: repeat must be >= 1, not {repeat}")
        imask = _check_type(data.get("imask", True), bool, where, "imask")
        exclude = _strings(data.get("exclude_targets", ()), where, "exclude_targets", "label names")
        max_images = data.get("max_images")
        if max_images is not None and (_check_type(max_images, int, where, "max_images") < 1):
            raise InputError(f"{where}: max_images must be >= 1")
        every = _check_type(data.get("every", 1), int, where, "every")
        if every < 1:
            raise InputError(f"{where}: every must be >= 1, not {every}")
        variants = _check_type(data.get("variants", 0), int, where, "variants")
        if variants < 0:
            raise InputError(f"{where}: variants must be >= 0, not {variants}")
        zoom_variants = _check_type(data.get("zoom_variants", 0), int, where, "zoom_variants")
        if zoom_variants < 0:
            raise InputError(f"{where}: zoom_variants must be >= 0, not {zoom_variants}")
        intensity_variants = _check_type(data.get("intensity_variants", 0), int, where, "intensity_variants")
        if intensity_variants < 0:
            raise InputError(f"{where}: intensity_variants must be >= 0, not {intensity_variants}")
        perturb = data.get("perturb")
        if perturb is not None and perturb not in PERTURBATIONS:
            raise InputError(f"{where}: perturb must be one of {', '.join(PERTURBATIONS)}, not {perturb!r}")
        cases = _strings(data.get("cases", ()), where, "cases", "case ids (e.g. [ABD_035])")
        exclude_cases = _strings(
            data.get("exclude_cases", ()), where, "exclude_cases", "case ids (e.g. [ABD_035])"
        )
        if set(cases) & set(exclude_cases):
            raise InputError(
                f"{where}: cases {sorted(set(cases) & set(exclude_cases))} are both kept and left out"
            )
        return cls(
            path,
            split,
            repeat,
            imask,
            tuple(exclude),
            max_images,
            every,
            variants,
            cases,
            exclude_cases,
            zoom_variants=zoom_variants,
            intensity_variants=intensity_variants,
            perturb=perturb,
        )

    @classmethod
    def _synthetic(cls, data: dict, where: str, base: Path, path: str) -> DatasetSpec:
        from imis.data.synthetic import SOURCES

        allowed = {
            "path",
            "kind",
            "count",
            "seed",
            "sources",
            "btcv",
            "repeat",
            "exclude_cases",
            "label_cache",
        }
        if set(data) - allowed:
            raise InputError(
                f"{where}: kind synthetic takes {sorted(allowed)}, not {sorted(set(data) - allowed)}"
            )
        count = _check_type(data.get("count", 200), int, where, "count")
        seed = _check_type(data.get("seed", 0), int, where, "seed")
        repeat = _check_type(data.get("repeat", 1), int, where, "repeat")
        if count < 1 or seed < 0 or repeat < 1:
            raise InputError(f"{where}: count and repeat must be >= 1 and seed >= 0")
        sources = _strings(data.get("sources", list(SOURCES)), where, "sources", ", ".join(SOURCES))
        bad = [x for x in sources if x not in SOURCES]
        if bad or not sources:
            raise InputError(f"{where}: sources must be a non-empty list of {', '.join(SOURCES)}, not {bad}")
        if "btcv" not in data:
            raise InputError(f"{where}: kind synthetic needs 'btcv': the btcv-demo folder")
        btcv = str(data["btcv"])
        btcv = btcv if Path(btcv).is_absolute() else str((base / btcv).resolve())
        cache = data.get("label_cache")
        if cache is not None:
            cache = str(cache) if Path(str(cache)).is_absolute() else str((base / str(cache)).resolve())
        exclude_cases = _strings(data.get("exclude_cases", ()), where, "exclude_cases", "case ids")
        return cls(
            path,
            "train",
            repeat,
            exclude_cases=exclude_cases,
            kind="synthetic",
            count=count,
            seed=seed,
            sources=sources,
            btcv=btcv,
            label_cache=cache,
        )


def _strings(value: Any, where: str, key: str, what: str) -> tuple[str, ...]:
    value = value or ()
    if isinstance(value, str) or not all(isinstance(x, str) for x in value):
        raise InputError(f"{where}: {key} must be a list of {what}, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ModelConfig:
    """Which network is trained and from which weights."""

    arch: str = "imis-lite"
    init: str | None = "litemedsam"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_image_encoder: bool = True
    # the top of a frozen encoder trains over cached trunk outputs: a CPU-sized encoder fine-tune
    train_encoder_tail: int = 0
    # "multimask-heads" / "multimask-tokens": a stage that teaches the multimask outputs without moving
    # (or barely moving) the single output
    decoder_parts: str = "all"

    @classmethod
    def from_mapping(cls, data: Any, where: str, base: Path) -> ModelConfig:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InputError(f"{where}: model must be a mapping, got {data!r}")
        _unknown(set(data), [f.name for f in fields(cls)], where)
        arch = data.get("arch", "imis-lite")
        from imis.models.spec import ARCHITECTURES  # what the registry can build is what can train

        trainable = [a for a, spec in ARCHITECTURES.items() if spec.recipe is not None]
        if arch not in trainable:
            raise InputError(f"{where}: model.arch must be one of {', '.join(trainable)}, not {arch!r}")
        init = data.get("init", "litemedsam")
        if init is not None:
            init = str(init)
            p = Path(init)
            if p.suffix in (".pt", ".pth", ".ckpt") and not p.is_absolute():
                init = str((base / p).resolve())
        kwargs = data.get("arch_kwargs", {}) or {}
        if not isinstance(kwargs, dict):
            raise InputError(f"{where}: model.arch_kwargs must be a mapping")
        freeze = _check_type(data.get("freeze_image_encoder", True), bool, where, "freeze_image_encoder")
        tail = _check_type(data.get("train_encoder_tail", 0), int, where, "train_encoder_tail")
        if tail < 0:
            raise InputError(f"{where}: model.train_encoder_tail must be >= 0, got {tail}")
        if tail and not freeze:
            raise InputError(
                f"{where}: model.train_encoder_tail needs freeze_image_encoder: true "
                "(with it false the whole encoder trains already)"
            )
        parts = data.get("decoder_parts", "all")
        if parts not in DECODER_PARTS:
            raise InputError(
                f"{where}: model.decoder_parts must be one of {', '.join(DECODER_PARTS)}, not {parts!r}"
            )
        if parts != "all" and (not freeze or tail):
            raise InputError(
                f"{where}: model.decoder_parts {parts} trains only decoder heads: it needs "
                "freeze_image_encoder: true and train_encoder_tail: 0"
            )
        return cls(arch, init, dict(kwargs), freeze, tail, parts)


_DEFAULT_FIRST = {
    "click": 0.3,
    "box": 0.3,
    "text": 0.15,
    "click+box": 0.1,
    "box+text": 0.05,
    "click+text": 0.1,
}


@dataclass(frozen=True)
class TrainConfig:
    """Validated settings of one `imis train` run (see the module docstring for each key)."""

    datasets: tuple[DatasetSpec, ...]
    name: str = "imis-lite"
    out: str = "runs/train/imis-lite"
    model: ModelConfig = field(default_factory=ModelConfig)
    val_datasets: tuple[DatasetSpec, ...] = ()
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_images: int = 2
    masks_per_image: int = 4
    imasks_per_image: int = 2
    interactions: int = 8
    grad_steps: int | None = None  # None: all
    schedule: str | dict[str, float] = "plain"
    first_prompts: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_FIRST))
    first_clicks: dict[str, float] = field(
        default_factory=lambda: {"centroid": 0.5, "center": 0.25, "uniform": 0.25}
    )
    corrections: dict[str, float] = field(
        default_factory=lambda: {"uniform": 0.4, "ritm": 0.4, "largest-component": 0.2}
    )
    box_jitter: int = 5
    click_output: str = "multimask"
    text_template: str = DEFAULT_TEMPLATE  # the one template (imis.prompts.text)
    clean_imask: bool = True
    lr: float = 2e-5
    text_lr_scale: float = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 100
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    augment_prob: float = 0.2
    augment_factor: float = 0.2
    variant_rotate: float = 10.0
    variant_scale: float = 0.1
    variant_shift: float = 0.05
    embedding_cache: str | None = None
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 200
    max_nan_steps: int = 20
    val_max_targets: int = 200
    val_interactions: int = 5
    num_threads: int | None = None
    select_on: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Any, source: str, base: Path | None = None) -> TrainConfig:
        base = base or Path.cwd()
        if not isinstance(data, dict):
            raise InputError(f"{source}: the configuration must be a mapping of keys to values")
        known = [f.name for f in fields(cls)]
        _unknown(set(data), known, source)
        if "datasets" not in data or not data["datasets"]:
            raise InputError(f"{source}: 'datasets' is required (a list of IMed-format dataset folders)")
        kw: dict[str, Any] = {}
        for key in ("datasets", "val_datasets"):
            items = data.get(key) or []
            if not isinstance(items, list):
                raise InputError(f"{source}: {key} must be a list")
            kw[key] = tuple(
                DatasetSpec.from_mapping(d, f"{source}: {key}[{i}]", base) for i, d in enumerate(items)
            )
        kw["model"] = ModelConfig.from_mapping(data.get("model"), f"{source}: model", base)
        ints = {
            "epochs": 1,
            "batch_images": 1,
            "masks_per_image": 0,
            "imasks_per_image": 0,
            "interactions": 0,
            "box_jitter": 0,
            "warmup_steps": 0,
            "seed": 0,
            "checkpoint_every": 1,
            "max_nan_steps": 0,
            "val_max_targets": 1,
            "val_interactions": 0,
        }
        for key, lo in ints.items():
            if key in data:
                v = _check_type(data[key], int, source, key)
                if v < lo:
                    raise InputError(f"{source}: {key} must be >= {lo}, not {v}")
                kw[key] = v
        kw["select_on"] = _strings(data.get("select_on", ()), source, "select_on", "val_log column names")
        for key in ("steps_per_epoch", "num_threads"):
            if data.get(key) is not None:
                v = _check_type(data[key], int, source, key)
                if v < 1:
                    raise InputError(f"{source}: {key} must be >= 1 or null, not {v}")
                kw[key] = v
        if "grad_steps" in data and data["grad_steps"] != "all":
            v = _check_type(data["grad_steps"], int, source, "grad_steps")
            if v < 1:
                raise InputError(f"{source}: grad_steps must be 'all' or >= 1, not {v}")
            kw["grad_steps"] = v
        floats = ("lr", "text_lr_scale", "weight_decay", "focal_weight", "dice_weight", "iou_weight")
        for key in floats:
            if key in data:
                v = _check_type(data[key], float, source, key)
                if not math.isfinite(v) or v < 0:
                    raise InputError(f"{source}: {key} must be a finite number >= 0, not {v}")
                kw[key] = v
        for key, hi in (
            ("augment_prob", 1.0),
            ("augment_factor", 1.0),
            ("variant_rotate", 180.0),
            ("variant_scale", 0.5),
            ("variant_shift", 0.5),
        ):
            if key in data:
                v = _check_type(data[key], float, source, key)
                if not 0.0 <= v <= hi:
                    raise InputError(f"{source}: {key} must be in [0, {hi:g}], not {v}")
                kw[key] = v
        for key in ("clean_imask", "amp"):
            if key in data:
                kw[key] = _check_type(data[key], bool, source, key)
        for key in ("name", "out", "text_template", "device"):
            if key in data:
                kw[key] = str(_check_type(data[key], str, source, key))
        if "{}" not in kw.get("text_template", "{}"):
            raise InputError(f"{source}: text_template must contain '{{}}' where the target name goes")
        if "out" in kw and not Path(kw["out"]).is_absolute():
            kw["out"] = str((base / kw["out"]).resolve())
        if data.get("embedding_cache") is not None:
            p = Path(str(data["embedding_cache"]))
            kw["embedding_cache"] = str(p if p.is_absolute() else (base / p).resolve())
        if "schedule" in data:
            if isinstance(data["schedule"], dict):
                kw["schedule"] = _probs(data["schedule"], SCHEDULES, source, "schedule")
            elif data["schedule"] not in SCHEDULES:
                raise InputError(
                    f"{source}: schedule must be one of {', '.join(SCHEDULES)}, or a mapping of them to weights"
                )
            else:
                kw["schedule"] = data["schedule"]
        if "click_output" in data:
            if data["click_output"] not in CLICK_OUTPUTS:
                raise InputError(f"{source}: click_output must be one of {', '.join(CLICK_OUTPUTS)}")
            kw["click_output"] = data["click_output"]
        if "first_prompts" in data:
            kw["first_prompts"] = _probs(data["first_prompts"], FIRST_PROMPTS, source, "first_prompts")
        if "first_clicks" in data:
            kw["first_clicks"] = _probs(data["first_clicks"], FIRST_CLICKS, source, "first_clicks")
        if "corrections" in data:
            kw["corrections"] = _probs(data["corrections"], CORRECTIONS, source, "corrections")
        cfg = cls(**kw)
        if cfg.model.decoder_parts != "all" and cfg.weight_decay:
            raise InputError(
                f"{source}: model.decoder_parts {cfg.model.decoder_parts} needs weight_decay 0 (decay would move the "
                "single output's IoU row, which must stay as it is)"
            )
        if cfg.masks_per_image + cfg.imasks_per_image < 1:
            raise InputError(f"{source}: masks_per_image + imasks_per_image must be at least 1")
        return cfg

    def schedule_weights(self) -> dict[str, float]:
        """The schedules a mask may be given, with their weights (one name: that one alone)."""
        if isinstance(self.schedule, str):
            return {self.schedule: 1.0}
        return {k: v for k, v in self.schedule.items() if v > 0}

    def with_overrides(self, **changes: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def load_train_config(path: str | Path) -> TrainConfig:
    """The configuration in a YAML (or JSON) file."""
    from imis.io.files import read_yaml

    p = Path(path)
    data = read_yaml(p)
    return TrainConfig.from_mapping(data, str(path), p.resolve().parent)
