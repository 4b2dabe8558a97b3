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
from imis.train.config import TrainConfig
from imis.train.data import Geometry, TrainImage, load_images, read_train_image
from imis.train.distributed import allreduce_grads, barrier, init_distributed
from imis.train.interaction import MaskState, run_interaction
from imis.train.logs import CsvLog, progress_bar, tensorboard
from imis.train.network import (
    base_model_name,
    build_network,
    encoder_split,
    export_model,
    text_features,
    train_mode,
)
from imis.train.state import STATE_FILE, config_key, save_state, trainable_state
from imis.train.validation import evaluate

__all__ = ["STATE_FILE", "TrainResult", "train"]

MODEL_FILE = "model.pt"


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
    device = _device(cfg.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    d = init_distributed(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    net, pre, load_report = build_network(cfg)
    net.to(device)
    lowres = 4 * int(net.prompt_encoder.image_embedding_size[0])
    freeze = cfg.model.freeze_image_encoder
    trunk, head = encoder_split(net, cfg.model.train_encoder_tail)

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
    feats = text_features(cfg, net, names, device)

    trainable_prefixes = ["prompt_encoder", "mask_decoder", "text_projection"]
    if not freeze:
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
    params = params + text_params

    store = None
    if freeze:
        from imis.train.embeddings import EmbeddingStore, encoder_id

        cache = Path(cfg.embedding_cache) if cfg.embedding_cache else out / "embeddings"
        enc_name = base_model_name(cfg.model.init) or cfg.model.arch
        frozen = net.image_encoder if trunk is None else trunk
        if trunk is not None:
            enc_name = f"{enc_name}-trunk{cfg.model.train_encoder_tail}"
        store = EmbeddingStore(cache, frozen.eval(), pre, encoder_id(frozen, pre, enc_name), device)
        unique = {im.key: im for im in train_images + val_images}
        todo = [im for i, (_, im) in enumerate(sorted(unique.items())) if i % d.world == d.rank]
        for im in progress_bar(todo, "encode images", progress and d.main):
            store.get(im.key, im.path, im.affine)
        barrier(d)

    steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(train_images) / cfg.batch_images))
    state_path = out / STATE_FILE
    epoch, step_in_epoch, global_step, skipped = 0, 0, 0, 0
    if resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("config_key") != config_key(cfg):
            raise InputError(
                f"{state_path}: this run folder holds a run with another configuration; "
                "use a new output folder (-o) or delete it"
            )
        net.load_state_dict(st["model"], strict=False)
        optimizer.load_state_dict(st["optimizer"])
        epoch, step_in_epoch = st["epoch"], st["step_in_epoch"]
        global_step, skipped = st["global_step"], st["skipped"]
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2, default=str) + "\n")

    step_log = CsvLog(
        out / "train_log.csv",
        [
            "epoch",
            "step",
            "lr",
            "loss",
            "focal",
            "dice",
            "iou",
            "dice@0",
            f"dice@{cfg.interactions}",
            "masks",
            "seconds",
            "skipped",
        ],
        d.main,
    )
    val_fields = ["epoch", "step", "click", "box", "text"]
    if cfg.val_interactions:
        val_fields.append(f"click@{cfg.val_interactions}")
    val_log = CsvLog(out / "val_log.csv", [*val_fields, "targets"], d.main)
    tb = tensorboard(out, d.main)
    amp_ctx = None
    scaler = None
    if cfg.amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if dtype == torch.float16:
            scaler = torch.amp.GradScaler("cuda")

        def amp_ctx():
            return torch.autocast("cuda", dtype=dtype)

    def checkpoint() -> None:
        if not d.main:
            return
        save_state(
            state_path,
            {
                "model": trainable_state(net, trainable_names),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "skipped": skipped,
                "config_key": config_key(cfg),
            },
        )

    done_this_call = 0
    out_of_time = False
    val: dict[str, float] = {}
    train_mode(net, freeze, head)
    while epoch < cfg.epochs:
        order = _rng(cfg.seed, epoch).permutation(len(train_images))
        bar = progress_bar(
            range(step_in_epoch, steps_per_epoch), f"epoch {epoch + 1}/{cfg.epochs}", progress and d.main
        )
        for step_in_epoch in bar:
            if stop_after is not None and done_this_call >= stop_after:
                checkpoint()
                return _result(out, global_step, skipped, t_start, val, None)
            if time_limit is not None and time.perf_counter() - t_start >= time_limit:
                out_of_time = True
                break
            t0 = time.perf_counter()
            start = step_in_epoch * cfg.batch_images
            batch = [int(order[(start + i) % len(order)]) for i in range(cfg.batch_images)]
            mine = list(range(d.rank, len(batch), d.world))
            states, embs = [], []
            for slot, pos in enumerate(mine):
                img = train_images[batch[pos]]
                rng = _rng(cfg.seed, epoch, step_in_epoch, pos)
                if store is not None:
                    embs.append(store.get(img.key, img.path, img.affine).to(device).float())
                else:
                    from imis.models.preprocess import prepare_image

                    x, _ = prepare_image(read_train_image(img.path, img.affine), pre, str(img.path))
                    embs.append(_augment(x, cfg, rng).to(device))
                for j, t in enumerate(_pick_targets(img, cfg, rng)):
                    states.append(
                        MaskState(
                            target=t,
                            image_index=slot,
                            rng=_rng(cfg.seed, epoch, step_in_epoch, pos, j, 7),
                            text_index=name_index.get(t.name) if t.name else None,
                        )
                    )
            if store is not None:
                embeddings = torch.stack(embs)
                if head is not None:
                    with amp_ctx() if amp_ctx else nullcontext():
                        embeddings = head(embeddings).float()
            else:
                with amp_ctx() if amp_ctx else nullcontext():
                    embeddings = net.image_encoder(torch.cat(embs)).float()
            brng = _rng(cfg.seed, epoch, step_in_epoch, 99)
            k = cfg.interactions
            if cfg.grad_steps is None or cfg.grad_steps > k:
                grad_at = set(range(k + 1))
            else:
                grad_at = {0} | {
                    int(s) for s in brng.choice(np.arange(1, k + 1), cfg.grad_steps - 1, replace=False)
                }
            t_star = int(brng.integers(1, k)) if k >= 2 else k
            for g in _lr_groups(optimizer):
                g["lr"] = _lr_at(cfg, global_step) * g.get("scale", 1.0)
            optimizer.zero_grad(set_to_none=False)
            stats = run_interaction(
                net, embeddings, states, cfg, feats, grad_at, t_star, pre.input_size, device, amp_ctx
            )
            allreduce_grads(params, d)
            finite = stats["nonfinite"] == 0.0 and all(
                torch.isfinite(p.grad).all() for p in params if p.grad is not None
            )
            if finite:
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            else:
                skipped += 1
                optimizer.zero_grad(set_to_none=False)
            global_step += 1
            done_this_call += 1
            row = {
                "epoch": epoch,
                "step": global_step,
                "lr": _lr_at(cfg, global_step - 1),
                "masks": len(states),
                "seconds": time.perf_counter() - t0,
                "skipped": int(not finite),
                **stats,
            }
            step_log.write(row)
            if tb is not None and finite:
                tb.add_scalar("train/loss", stats["loss"], global_step)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{stats['loss']:.3f}", dice=f"{stats.get(f'dice@{k}', 0):.3f}")
            if not finite and skipped > cfg.max_nan_steps:
                checkpoint()
                raise ImisError(
                    f"training stopped: {skipped} steps had a non-finite loss or gradient "
                    f"(max_nan_steps {cfg.max_nan_steps}); lower the learning rate or check the data"
                )
            if global_step % cfg.checkpoint_every == 0:
                step_in_epoch += 1
                checkpoint()
                step_in_epoch -= 1
        if out_of_time:
            checkpoint()
        else:
            epoch += 1
            step_in_epoch = 0
        if val_images and d.main:
            val = evaluate(net, val_images, store, feats, name_index, pre, cfg, device, head)
            val_log.write({"epoch": epoch, "step": global_step, **val})
            if tb is not None:
                for key, v in val.items():
                    tb.add_scalar(f"val/{key}", v, global_step)
            train_mode(net, freeze, head)
        if out_of_time:
            break
        checkpoint()
    model_path = None
    if d.main:
        model_path = export_model(net, cfg, pre, out / MODEL_FILE, load_report, val, global_step)
    result = _result(out, global_step, skipped, t_start, val, model_path)
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
