"""`imis train`: the training loop, from one CPU process to many GPUs (``torchrun``).

One optimizer step = one global batch of ``batch_images`` images, split over the processes
(``RANK``/``WORLD_SIZE`` from ``torchrun``; NCCL on GPUs, gloo on CPUs). Each process averages its
masks' losses; gradients are averaged over processes with one all-reduce, which with equal mask counts
per process gives exactly the single-process update of the same global batch.

Everything random is derived from (seed, epoch, step, ...), and a checkpoint stores the trainable
weights, the optimizer state and the position: a resumed run takes the same next step as an
uninterrupted one. Checkpoints are written to a temporary file and renamed, so a crash or a full disk
while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imis.errors import ImisError, InputError
from imis.io.files import atomic_output
from imis.models.preprocess import Preprocess
from imis.train.config import TrainConfig
from imis.train.data import Geometry, TrainImage, load_images, train_input
from imis.train.distributed import Dist, allreduce_grads, barrier, init_distributed
from imis.train.interaction import MaskState, run_interaction
from imis.train.logs import CsvLog, progress_bar, tensorboard
from imis.train.network import (
    base_model_name,
    build_network,
    encoder_split,
    export_model,
    multimask_heads,
    text_features,
    train_mode,
)
from imis.train.state import STATE_FILE, config_key, save_state, trainable_state
from imis.train.validation import PAPER_FIRSTS, evaluate, paper_rounds, per_dataset_fields

__all__ = ["STATE_FILE", "TrainResult", "train"]

MODEL_FILE = "model.pt"
#: The model of the best validation by ``select_on``, and its record.
BEST_FILE = "best.pt"
BEST_RECORD = "best.json"


@dataclass
class TrainResult:
    out: Path
    steps: int
    skipped_steps: int
    wall_seconds: float
    peak_rss_mb: float
    val: dict[str, float]
    model_path: Path | None


# ---------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------
def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, 0.1 + 0.9 * step / cfg.warmup_steps)


def _pick_targets(img: TrainImage, cfg: TrainConfig, rng: np.random.Generator) -> list:
    """``masks_per_image`` ground-truth and ``imasks_per_image`` imask targets (with replacement when
    there are fewer); an image without one kind fills the count from the other, so every image gives the
    same number of masks."""
    n_gt, n_im = cfg.masks_per_image, cfg.imasks_per_image
    if not img.imask:
        n_gt, n_im = n_gt + n_im, 0
    elif not img.gt:
        n_gt, n_im = 0, n_gt + n_im

    def draw(pool: list, n: int) -> list:
        if n == 0:
            return []
        if len(pool) >= n:
            return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
        return [pool[i] for i in rng.integers(0, len(pool), size=n)]

    return draw(img.gt, n_gt) + draw(img.imask, n_im)


def _augment(x: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """The reference's intensity scale and shift (each with probability p, by up to the factor)."""
    if rng.random() < cfg.augment_prob:
        x = x * (1.0 + rng.uniform(-cfg.augment_factor, cfg.augment_factor))
    if rng.random() < cfg.augment_prob:
        x = x + rng.uniform(-cfg.augment_factor, cfg.augment_factor)
    return x


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: CUDA is not available on this machine")
    return torch.device(name)


@dataclass
class _Position:
    """Where a run is: what a checkpoint stores and a resume restores."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    skipped: int = 0


@dataclass
class _Data:
    train: list[TrainImage]
    val: list[TrainImage]
    name_index: dict[str, int]  # target name -> row of feats
    feats: torch.Tensor | None  # frozen text-tower features of every target name


def _setup_device(cfg: TrainConfig) -> tuple[torch.device, Dist]:
    device = _device(cfg.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return device, init_distributed(device)


def _cache_dir(cfg: TrainConfig, out: Path) -> Path:
    """Where a run keeps its cached image embeddings and text features."""
    return Path(cfg.embedding_cache) if cfg.embedding_cache else out / "embeddings"


def _load_data(
    cfg: TrainConfig, net: torch.nn.Module, pre: Preprocess, device: torch.device, cache: Path
) -> _Data:
    lowres = 4 * int(net.prompt_encoder.image_embedding_size[0])
    geometry = Geometry(cfg.variant_rotate, cfg.variant_scale, cfg.variant_shift)
    train_images: list[TrainImage] = []
    for spec in cfg.datasets:
        imgs = load_images(spec, pre, lowres, cfg.clean_imask, geometry=geometry)
        train_images += imgs * spec.repeat
    val_images: list[TrainImage] = []
    for spec in cfg.val_datasets:
        val_images += load_images(spec, pre, lowres, cfg.clean_imask, with_imask=False)
    names = sorted({t.name for im in train_images + val_images for t in im.gt if t.name})
    name_index = {n: i for i, n in enumerate(names)}
    return _Data(train_images, val_images, name_index, text_features(cfg, net, names, device, cache))


def _optimizer(
    cfg: TrainConfig, net: torch.nn.Module, head: torch.nn.Module | None
) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter], set[str]]:
    """Adam over the trained parts (the text layers in their own group), the trained parameters and the
    names of every trained tensor (what a checkpoint stores)."""
    if cfg.model.decoder_parts != "all":
        return _multimask_heads_optimizer(cfg, net)
    trainable_prefixes = ["prompt_encoder", "mask_decoder", "text_projection"]
    if not cfg.model.freeze_image_encoder:
        trainable_prefixes.append("image_encoder")
    params, text_params, trainable_names = [], [], set()
    for n, p in net.named_parameters():
        keep = n.split(".", 1)[0] in trainable_prefixes
        p.requires_grad_(keep)
        if keep:
            # the new text layers start at zero: they may learn faster than the pretrained decoder
            is_text = n.startswith(("text_projection.", "mask_decoder.text_output."))
            (text_params if is_text else params).append(p)
            trainable_names.add(n)
    trainable_names |= {n for n, _ in net.named_buffers() if n.split(".", 1)[0] in trainable_prefixes}
    if head is not None:
        # the encoder's top (shared modules) trains; its buffers are checkpointed with its weights
        head_ids = {id(t) for t in [*head.parameters(), *head.buffers()]}
        for n, p in net.named_parameters():
            if id(p) in head_ids:
                p.requires_grad_(True)
                params.append(p)
                trainable_names.add(n)
        trainable_names |= {n for n, b in net.named_buffers() if id(b) in head_ids}
    groups = [{"params": params, "scale": 1.0}]
    if text_params:
        groups.append({"params": text_params, "scale": cfg.text_lr_scale})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, params + text_params, trainable_names


def _multimask_heads_optimizer(
    cfg: TrainConfig, net: torch.nn.Module
) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter], set[str]]:
    """Adam over the multimask outputs' own parameters (``model.decoder_parts`` multimask-heads or
    multimask-tokens, :func:`multimask_heads`); the single output's rows get a zero gradient, so Adam
    (no weight decay: the configuration refuses it) never moves them."""
    for p in net.parameters():
        p.requires_grad_(False)
    params, names = [], set()
    for name, p, rows in multimask_heads(net, tokens=cfg.model.decoder_parts == "multimask-tokens"):
        p.requires_grad_(True)
        if rows is not None:
            p.register_hook(lambda g, rows=rows: g * rows)
        params.append(p)
        names.add(name)
    optimizer = torch.optim.Adam([{"params": params, "scale": 1.0}], lr=cfg.lr, weight_decay=0.0)
    return optimizer, params, names


def _embedding_store(cfg, net, trunk, pre, data: _Data, device, d: Dist, out: Path, progress: bool):
    """The cache of the frozen encoder's (or trunk's) outputs, filled for every image (split over the
    processes) before the first step."""
    from imis.train.embeddings import EmbeddingStore, encoder_id

    cache = _cache_dir(cfg, out)
    enc_name = base_model_name(cfg.model.init) or cfg.model.arch
    frozen = net.image_encoder if trunk is None else trunk
    if trunk is not None:
        enc_name = f"{enc_name}-trunk{cfg.model.train_encoder_tail}"
    store = EmbeddingStore(cache, frozen.eval(), pre, encoder_id(frozen, pre, enc_name), device)
    unique = {im.key: im for im in data.train + data.val}
    todo = [im for i, (_, im) in enumerate(sorted(unique.items())) if i % d.world == d.rank]
    for im in progress_bar(todo, "encode images", progress and d.main):
        store.get(im)
    barrier(d)
    return store


def _resume(cfg: TrainConfig, state_path: Path, net, optimizer, resume: bool) -> _Position:
    if not (resume and state_path.is_file()):
        return _Position()
    from imis.models.formats.torchfile import load_torch_file

    st = load_torch_file(state_path, "training state")  # weights_only: a run folder is user input
    if st.get("config_key") != config_key(cfg):
        raise InputError(
            f"{state_path}: this run folder holds a run with another configuration; "
            "use a new output folder (-o) or delete it"
        )
    net.load_state_dict(st["model"], strict=False)
    optimizer.load_state_dict(st["optimizer"])
    return _Position(st["epoch"], st["step_in_epoch"], st["global_step"], st["skipped"])


def _logs(cfg: TrainConfig, out: Path, d: Dist, val_images: list[TrainImage]) -> tuple[CsvLog, CsvLog]:
    step_fields = [
        "epoch",
        "step",
        "lr",
        "loss",
        "focal",
        "dice",
        "iou",
        "dice@0",
        f"dice@{cfg.interactions}",
    ]
    step_log = CsvLog(out / "train_log.csv", [*step_fields, "masks", "seconds", "skipped"], d.main)
    val_fields = ["epoch", "step", "click", "box", "text"]
    if cfg.val_interactions:
        val_fields.append(f"click@{cfg.val_interactions}")
    if "paper" in cfg.schedule_weights():
        last = paper_rounds(cfg)
        val_fields += [f"paper:{k}@{n}" for k in PAPER_FIRSTS for n in (1, last)]
    per_dataset = per_dataset_fields(val_images, val_fields[2:])
    return step_log, CsvLog(out / "val_log.csv", [*val_fields, "targets", *per_dataset], d.main)


def _amp(cfg: TrainConfig, device: torch.device):
    """(autocast context factory or None, gradient scaler or None): bfloat16 where the GPU has it,
    float16 with loss scaling elsewhere on a GPU, float32 on a CPU."""
    if not (cfg.amp and device.type == "cuda"):
        return None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def amp_ctx():
        return torch.autocast("cuda", dtype=dtype)

    return amp_ctx, scaler


@dataclass
class _Loop:
    """A run's state while it trains: one optimizer step at a time, checkpoints, validation."""

    cfg: TrainConfig
    net: torch.nn.Module
    pre: Preprocess
    head: torch.nn.Module | None
    store: Any
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    trainable_names: set[str]
    data: _Data
    device: torch.device
    d: Dist
    pos: _Position
    state_path: Path
    step_log: CsvLog
    tb: Any
    amp_ctx: Any
    scaler: Any

    def checkpoint(self) -> None:
        if not self.d.main:
            return
        p = self.pos
        save_state(
            self.state_path,
            {
                "model": trainable_state(self.net, self.trainable_names),
                "optimizer": self.optimizer.state_dict(),
                "epoch": p.epoch,
                "step_in_epoch": p.step_in_epoch,
                "global_step": p.global_step,
                "skipped": p.skipped,
                "config_key": config_key(self.cfg),
            },
        )

    def _autocast(self):
        return self.amp_ctx() if self.amp_ctx else nullcontext()

    def _batch(self, order: np.ndarray) -> tuple[torch.Tensor, list[MaskState]]:
        """This process's share of the step's images: their embeddings and their drawn targets."""
        cfg, p, d = self.cfg, self.pos, self.d
        start = p.step_in_epoch * cfg.batch_images
        batch = [int(order[(start + i) % len(order)]) for i in range(cfg.batch_images)]
        states, embs = [], []
        for slot, at in enumerate(range(d.rank, len(batch), d.world)):
            img = self.data.train[batch[at]]
            rng = _rng(cfg.seed, p.epoch, p.step_in_epoch, at)
            if self.store is not None:
                embs.append(self.store.get(img).to(self.device).float())
            else:
                x = train_input(img, self.pre)
                embs.append(_augment(x, cfg, rng).to(self.device))
            for j, t in enumerate(_pick_targets(img, cfg, rng)):
                states.append(
                    MaskState(
                        target=t,
                        image_index=slot,
                        rng=_rng(cfg.seed, p.epoch, p.step_in_epoch, at, j, 7),
                        text_index=self.data.name_index.get(t.name) if t.name else None,
                    )
                )
        if self.store is None:
            with self._autocast():
                return self.net.image_encoder(torch.cat(embs)).float(), states
        embeddings = torch.stack(embs)
        if self.head is not None:
            with self._autocast():
                embeddings = self.head(embeddings).float()
        return embeddings, states

    def _grad_steps(self) -> tuple[set[int], int]:
        """The interaction steps that take gradients, and the step t* of the reference's schedule."""
        cfg, p = self.cfg, self.pos
        brng = _rng(cfg.seed, p.epoch, p.step_in_epoch, 99)
        k = cfg.interactions
        if cfg.grad_steps is None or cfg.grad_steps > k:
            grad_at = set(range(k + 1))
        else:
            grad_at = {0} | {
                int(s) for s in brng.choice(np.arange(1, k + 1), cfg.grad_steps - 1, replace=False)
            }
        return grad_at, int(brng.integers(1, k)) if k >= 2 else k

    def step(self, order: np.ndarray, bar: Any) -> None:
        """One optimizer step (skipped, and counted, when a loss or gradient is not finite)."""
        cfg, p = self.cfg, self.pos
        t0 = time.perf_counter()
        embeddings, states = self._batch(order)
        grad_at, t_star = self._grad_steps()
        for g in _lr_groups(self.optimizer):
            g["lr"] = _lr_at(cfg, p.global_step) * g.get("scale", 1.0)
        self.optimizer.zero_grad(set_to_none=False)
        stats = run_interaction(
            self.net,
            embeddings,
            states,
            cfg,
            self.data.feats,
            grad_at,
            t_star,
            self.pre.input_size,
            self.device,
            self.amp_ctx,
        )
        allreduce_grads(self.params, self.d)
        finite = stats["nonfinite"] == 0.0 and all(
            torch.isfinite(q.grad).all() for q in self.params if q.grad is not None
        )
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        else:
            p.skipped += 1
            self.optimizer.zero_grad(set_to_none=False)
        p.global_step += 1
        self._log_step(stats, finite, len(states), time.perf_counter() - t0, bar)
        if not finite and p.skipped > cfg.max_nan_steps:
            self.checkpoint()
            raise ImisError(
                f"training stopped: {p.skipped} steps had a non-finite loss or gradient "
                f"(max_nan_steps {cfg.max_nan_steps}); lower the learning rate or check the data"
            )
        if p.global_step % cfg.checkpoint_every == 0:
            p.step_in_epoch += 1  # the checkpoint resumes at the next step
            self.checkpoint()
            p.step_in_epoch -= 1

    def _log_step(self, stats: dict[str, float], finite: bool, masks: int, seconds: float, bar: Any) -> None:
        p = self.pos
        row = {
            "epoch": p.epoch,
            "step": p.global_step,
            "lr": _lr_at(self.cfg, p.global_step - 1),
            "masks": masks,
            "seconds": seconds,
            "skipped": int(not finite),
            **stats,
        }
        self.step_log.write(row)
        if self.tb is not None and finite:
            self.tb.add_scalar("train/loss", stats["loss"], p.global_step)
        if hasattr(bar, "set_postfix"):
            k = self.cfg.interactions
            bar.set_postfix(loss=f"{stats['loss']:.3f}", dice=f"{stats.get(f'dice@{k}', 0):.3f}")

    def validate(self, val_log: CsvLog) -> dict[str, float]:
        cfg = self.cfg
        val = evaluate(
            self.net,
            self.data.val,
            self.store,
            self.data.feats,
            self.data.name_index,
            self.pre,
            cfg,
            self.device,
            self.head,
        )
        val_log.write({"epoch": self.pos.epoch, "step": self.pos.global_step, **val})
        if self.tb is not None:
            for key, v in val.items():
                self.tb.add_scalar(f"val/{key}", v, self.pos.global_step)
        if cfg.select_on:
            self.keep_if_best(val)
        train_mode(self.net, cfg.model.freeze_image_encoder, self.head)
        return val

    def keep_if_best(self, val: dict[str, float]) -> None:
        """Export the model (fp16) to ``best.pt`` when the mean of ``select_on``'s metrics is the best of
        the run (``best.json`` holds the step, the score and the metrics; read back on resume)."""
        out = Path(self.cfg.out)
        missing = [k for k in self.cfg.select_on if k not in val]
        if missing:
            print(
                f"select_on: {missing} not in this validation ({sorted(val)}); best.pt not updated",
                file=sys.stderr,
            )
            return
        score = float(np.mean([val[k] for k in self.cfg.select_on]))
        record = out / BEST_RECORD
        if record.is_file():
            best = json.loads(record.read_text(encoding="utf-8"))
            if best.get("select_on") == list(self.cfg.select_on) and best["score"] >= score:
                return
        # export from a copy (export_model moves the network to the CPU), in fp16 as imis-lite ships
        net = copy.deepcopy(self.net)
        export_model(net, self.cfg, self.pre, out / BEST_FILE, {}, val, self.pos.global_step, half=True)
        entry = {
            "step": self.pos.global_step,
            "score": score,
            "select_on": list(self.cfg.select_on),
            "val": val,
        }
        with atomic_output(record) as tmp:
            tmp.write_text(json.dumps(entry, indent=1) + "\n", encoding="utf-8")


def train(
    cfg: TrainConfig,
    progress: bool = True,
    stop_after: int | None = None,
    resume: bool = True,
    time_limit: float | None = None,
) -> TrainResult:
    """Run (or resume) training into ``cfg.out``; ``stop_after``: leave after this many steps of this call.

    ``time_limit``: seconds of wall time for this call (a lent GPU, a job slot); the step that starts after
    it has passed is not taken: the run checkpoints, validates and exports what it has, and the same
    command later resumes it from that step.
    """
    t_start = time.perf_counter()
    loop, val_log, load_report = _start(cfg, progress, resume)
    d, p, out = loop.d, loop.pos, Path(cfg.out)
    steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(loop.data.train) / cfg.batch_images))
    done_this_call = 0
    out_of_time = False
    val: dict[str, float] = {}
    train_mode(loop.net, cfg.model.freeze_image_encoder, loop.head)
    while p.epoch < cfg.epochs:
        order = _rng(cfg.seed, p.epoch).permutation(len(loop.data.train))
        bar = progress_bar(
            range(p.step_in_epoch, steps_per_epoch), f"epoch {p.epoch + 1}/{cfg.epochs}", progress and d.main
        )
        for step_in_epoch in bar:
            p.step_in_epoch = step_in_epoch
            if stop_after is not None and done_this_call >= stop_after:
                loop.checkpoint()
                return _result(out, p.global_step, p.skipped, t_start, val, None)
            if time_limit is not None and time.perf_counter() - t_start >= time_limit:
                out_of_time = True
                break
            loop.step(order, bar)
            done_this_call += 1
        if out_of_time:
            loop.checkpoint()
        else:
            p.epoch += 1
            p.step_in_epoch = 0
        if loop.data.val and d.main:
            val = loop.validate(val_log)
        if out_of_time:
            break
        loop.checkpoint()
    return _finish(loop, load_report, val, t_start)


def _start(cfg: TrainConfig, progress: bool, resume: bool) -> tuple[_Loop, CsvLog, dict[str, Any]]:
    """Everything before the first step: device and processes, the network and its data, the optimizer,
    the embedding cache, the resumed position, the logs."""
    device, d = _setup_device(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net, pre, load_report = build_network(cfg)
    net.to(device)
    trunk, head = encoder_split(net, cfg.model.train_encoder_tail)
    data = _load_data(cfg, net, pre, device, _cache_dir(cfg, out))
    optimizer, params, trainable_names = _optimizer(cfg, net, head)
    store = None
    if cfg.model.freeze_image_encoder:
        store = _embedding_store(cfg, net, trunk, pre, data, device, d, out, progress)
    state_path = out / STATE_FILE
    pos = _resume(cfg, state_path, net, optimizer, resume)
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2, default=str) + "\n")
    step_log, val_log = _logs(cfg, out, d, data.val)
    tb = tensorboard(out, d.main)
    amp_ctx, scaler = _amp(cfg, device)
    loop = _Loop(
        cfg, net, pre, head, store, optimizer, params, trainable_names, data, device, d, pos, state_path,
        step_log, tb, amp_ctx, scaler,
    )  # fmt: skip
    return loop, val_log, load_report


def _finish(loop: _Loop, load_report: dict[str, Any], val: dict[str, float], t_start: float) -> TrainResult:
    """Export the model and the run's summary (the main process), once every process is done."""
    out, d = Path(loop.cfg.out), loop.d
    model_path = None
    if d.main:
        model_path = export_model(
            loop.net, loop.cfg, loop.pre, out / MODEL_FILE, load_report, val, loop.pos.global_step
        )
    result = _result(out, loop.pos.global_step, loop.pos.skipped, t_start, val, model_path)
    if d.main:
        (out / "summary.json").write_text(json.dumps(result.__dict__, indent=2, default=str) + "\n")
    barrier(d)
    return result


def _lr_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return optimizer.param_groups


def _result(out: Path, steps: int, skipped: int, t0: float, val: dict, model_path) -> TrainResult:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    return TrainResult(out, steps, skipped, time.perf_counter() - t0, rss_mb, val, model_path)
