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

import csv
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
from imis.models.preprocess import Preprocess
from imis.train.config import TrainConfig
from imis.train.data import Geometry, TrainImage, load_images, read_train_image
from imis.train.interaction import MaskState, run_interaction

__all__ = ["TrainResult", "build_network", "evaluate", "train"]

STATE_FILE = "state.pt"
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
# model
# ---------------------------------------------------------------------------------------------------------
_ARCH_PREPROCESS = {
    "imis-lite": "litemedsam",
    "litemedsam": "litemedsam",
    "imis-net": "imis-net-b",
}


def build_network(cfg: TrainConfig) -> tuple[torch.nn.Module, Preprocess, dict[str, Any]]:
    """The network of ``cfg.model`` with its starting weights, its preprocessing and a load report."""
    from imis.models.build_litemedsam import build_imis_lite
    from imis.models.registry import ARCHITECTURES, get_spec, load_model

    arch = cfg.model.arch
    builder = build_imis_lite if arch == "imis-lite" else ARCHITECTURES[arch]
    net = builder(**cfg.model.arch_kwargs)
    spec = get_spec(_ARCH_PREPROCESS[arch])
    size = int(net.prompt_encoder.input_image_size[0])
    pre = Preprocess(**{**spec.preprocess.__dict__, "input_size": size})
    report: dict[str, Any] = {"init": cfg.model.init, "missing": [], "unexpected": []}
    if cfg.model.init:
        base = (
            load_model(checkpoint=cfg.model.init)
            if Path(cfg.model.init).is_file()
            else load_model(cfg.model.init)
        )
        own = net.state_dict()
        sd = {k: v for k, v in base.net.state_dict().items() if k in own and own[k].shape == v.shape}
        missing, unexpected = net.load_state_dict(sd, strict=False)
        report["missing"] = sorted(missing)
        report["unexpected"] = sorted(set(base.net.state_dict()) - set(sd))
        if not sd:
            raise InputError(f"model.init {cfg.model.init!r}: none of its weights fit architecture {arch!r}")
    return net, pre, report


def text_features(cfg: TrainConfig, net: torch.nn.Module, names: list[str], device) -> torch.Tensor | None:
    """(len(names), T) frozen text-tower features of the template filled with each name, or None."""
    if getattr(net, "text_projection", None) is None or not names:
        return None
    from imis.data.vocabulary import Vocabulary
    from imis.models.registry import prompt_name

    vocab = Vocabulary.builtin()
    texts = [cfg.text_template.format(prompt_name(n, vocab)) for n in names]
    with torch.no_grad():
        if cfg.model.arch == "imis-lite":
            from imis.models.minilm import load_minilm

            encoder, tokenizer = load_minilm()
            feats = encoder.embed_texts(texts) if hasattr(encoder, "embed_texts") else None
            if feats is None:
                raise ImisError("MiniLM encoder has no embed_texts")
        else:
            from imis.models.tokenizer import CLIPTokenizer

            tok = CLIPTokenizer()
            net.text_encoder.to(device)
            feats = torch.cat([net.text_encoder(torch.tensor([tok.encode(t)], device=device)) for t in texts])
    return feats.float().to(device)


# ---------------------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def _allreduce_grads(params: list[torch.nn.Parameter], d: Dist) -> None:
    if d.world <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------
def _trainable_state(net: torch.nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if k in names}


def save_state(path: Path, obj: dict[str, Any]) -> None:
    """Write a checkpoint atomically; on any failure the previous file at ``path`` stays as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint was written"
        raise ImisError(f"{path}: could not write the checkpoint ({exc.strerror or exc}); {kept}") from None


_KEY_DEFAULTS = {
    "text_lr_scale": 1.0,
    "click_output": "multimask",
    "variant_rotate": 10.0,
    "variant_scale": 0.1,
    "variant_shift": 0.05,
}


def _config_key(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.to_json()
    # what only changes how a run is watched (not what it learns) never blocks a resume
    for k in (
        "epochs",
        "out",
        "num_threads",
        "device",
        "checkpoint_every",
        "max_nan_steps",
        "val_interactions",
    ):
        d.pop(k, None)
    # options added after a run started, left at their default, do not make it "another configuration"
    for k, v in _KEY_DEFAULTS.items():
        if d.get(k) == v:
            d.pop(k)
    if not d.get("model", {}).get("train_encoder_tail"):
        d.get("model", {}).pop("train_encoder_tail", None)
    for spec in d.get("datasets", []) + d.get("val_datasets", []):
        for k, default in (("variants", 0), ("cases", []), ("exclude_cases", [])):
            if spec.get(k) in (default, ()):
                spec.pop(k, None)
    return json.loads(json.dumps(d, default=str))


def base_model_name(init: str | None) -> str | None:
    """The registry model whose image encoder a run starts from: ``init`` itself, or the ``base`` named
    by one of our partial checkpoints."""
    if not init:
        return None
    if not Path(init).is_file():
        return init
    try:
        obj = torch.load(init, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a foreign or unreadable file names no base
        return None
    return obj.get("metadata", {}).get("base") if isinstance(obj, dict) else None


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


class _Logger:
    def __init__(self, path: Path, fields: list[str], enabled: bool) -> None:
        self.path, self.fields, self.enabled = path, fields, enabled
        if not enabled:
            return
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
        if header is not None and list(header) != fields:
            # A run resumed by a newer version that logs more columns: rewrite the old rows under the
            # new header (new columns left empty) rather than append misaligned rows.
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k)) for k in self.fields])


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - TensorBoard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


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
    d = _init_distributed(device)
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
        for im in _bar(todo, "encode images", progress and d.main):
            store.get(im.key, im.path, im.affine)
        _barrier(d)

    steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(train_images) / cfg.batch_images))
    state_path = out / STATE_FILE
    epoch, step_in_epoch, global_step, skipped = 0, 0, 0, 0
    if resume and state_path.is_file():
        from imis.models.formats.torchfile import load_torch_file

        st = load_torch_file(state_path, "training state")  # weights_only: a run folder is user input
        if st.get("config_key") != _config_key(cfg):
            raise InputError(
                f"{state_path}: this run folder holds a run with another configuration; "
                "use a new output folder (-o) or delete it"
            )
        net.load_state_dict(st["model"], strict=False)
        optimizer.load_state_dict(st["optimizer"])
        epoch, step_in_epoch = st["epoch"], st["step_in_epoch"]
        global_step, skipped = st["global_step"], st["skipped"]
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2, default=str) + "\n")

    step_log = _Logger(
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
    val_log = _Logger(out / "val_log.csv", [*val_fields, "targets"], d.main)
    tb = _tensorboard(out, d.main)
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
                "model": _trainable_state(net, trainable_names),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "skipped": skipped,
                "config_key": _config_key(cfg),
            },
        )

    done_this_call = 0
    out_of_time = False
    val: dict[str, float] = {}
    _train_mode(net, freeze, head)
    while epoch < cfg.epochs:
        order = _rng(cfg.seed, epoch).permutation(len(train_images))
        bar = _bar(
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
            _allreduce_grads(params, d)
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
            _train_mode(net, freeze, head)
        if out_of_time:
            break
        checkpoint()
    model_path = None
    if d.main:
        model_path = export_model(net, cfg, pre, out / MODEL_FILE, load_report, val, global_step)
    result = _result(out, global_step, skipped, t_start, val, model_path)
    if d.main:
        (out / "summary.json").write_text(json.dumps(result.__dict__, indent=2, default=str) + "\n")
    _barrier(d)
    return result


def encoder_split(net: torch.nn.Module, tail: int) -> tuple[Any, Any]:
    """(trunk, head) of ``net.image_encoder`` for ``model.train_encoder_tail`` = ``tail`` (None, None at 0)."""
    if not tail:
        return None, None
    enc = net.image_encoder
    if not hasattr(enc, "split"):
        raise InputError(f"model.train_encoder_tail: the image encoder {type(enc).__name__} cannot be split")
    try:
        return enc.split(tail)
    except ValueError as e:
        raise InputError(f"model.train_encoder_tail: {e}") from None


def _train_mode(net: torch.nn.Module, freeze: bool, head: Any) -> None:
    """Training mode, except the frozen encoder. A trained encoder top trains with its BatchNorm
    statistics kept: the few images of a CPU batch would make noisy ones (its affine weights learn)."""
    net.train()
    if freeze:
        net.image_encoder.eval()
    if head is not None:
        head.train()
        for m in head.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _lr_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return optimizer.param_groups


def _result(out: Path, steps: int, skipped: int, t0: float, val: dict, model_path) -> TrainResult:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    return TrainResult(out, steps, skipped, time.perf_counter() - t0, rss_mb, val, model_path)


def _bar(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False)


# ---------------------------------------------------------------------------------------------------------
# validation and export
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    images: list[TrainImage],
    store: Any,
    feats: torch.Tensor | None,
    name_index: dict[str, int],
    pre: Preprocess,
    cfg: TrainConfig,
    device: torch.device,
    head: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Mean Dice (the benchmark's metric, in the low-res frame) of one centre click, a tight box and the
    target's name as text, and (``cfg.val_interactions`` = N > 0) under ``click@N`` after the centre click
    and N-1 RITM corrections with the previous logits fed back, as the benchmark's iterative protocol
    does; over up to ``cfg.val_max_targets`` ground-truth targets. ``head``: the trained top of the
    encoder, applied to the store's cached trunk outputs."""
    from imis.bench.metrics import dice
    from imis.prompts import center_click, tight_box
    from imis.train.interaction import Prompt

    net.eval()
    multimask = cfg.click_output == "multimask"
    scores: dict[str, list[float]] = {"click": [], "box": [], "text": []}
    n = 0
    for img in images:
        if n >= cfg.val_max_targets:
            break
        if store is not None:
            emb = store.get(img.key, img.path, img.affine).to(device).float()[None]
            if head is not None:
                emb = head(emb).float()
        else:
            from imis.models.preprocess import prepare_image

            x, _ = prepare_image(read_train_image(img.path, img.affine), pre, str(img.path))
            emb = net.image_encoder(x.to(device)).float()
        for t in img.gt[: cfg.val_max_targets - n]:
            n += 1
            st = MaskState(target=t, image_index=0, rng=np.random.default_rng(0))
            prompts = {
                "click": Prompt([center_click(t.mask)], None, None, False, multimask=multimask),
                "box": Prompt([], tight_box(t.mask), None, False),
            }
            if feats is not None and t.name in name_index:
                prompts["text"] = Prompt([], None, name_index[t.name], False)
            scale = pre.input_size / t.mask.shape[0]
            for kind, p in prompts.items():
                logits = _decode_one(net, emb, st, p, feats, scale, device)
                scores[kind].append(dice(logits[0].cpu().numpy() > 0, t.mask))
            if cfg.val_interactions:
                key = f"click@{cfg.val_interactions}"
                scores.setdefault(key, []).append(_iterative_dice(net, emb, t, feats, scale, cfg, device))
    res = {k: float(np.mean(v)) for k, v in scores.items() if v}
    res["targets"] = float(n)
    return res


def _decode_one(
    net: torch.nn.Module,
    emb: torch.Tensor,
    st: MaskState,
    prompt: Any,
    feats: torch.Tensor | None,
    scale: float,
    device: torch.device,
) -> torch.Tensor:
    """One target's (1, L, L) logits: the single output, or the IoU head's pick of several."""
    from imis.train.interaction import _decode_group

    low, iou = _decode_group(net, emb, [st], [prompt], feats, scale, device)
    best = int(iou[0].argmax()) if low.shape[1] > 1 else 0
    return low[0, best : best + 1].detach().float()


def _iterative_dice(
    net: torch.nn.Module,
    emb: torch.Tensor,
    target: Any,
    feats: torch.Tensor | None,
    scale: float,
    cfg: TrainConfig,
    device: torch.device,
) -> float:
    """Dice after a centre click and ``cfg.val_interactions - 1`` RITM corrections (deterministic)."""
    from imis.bench.metrics import dice
    from imis.prompts import center_click, ritm_click
    from imis.train.interaction import Prompt

    st = MaskState(target=target, image_index=0, rng=np.random.default_rng(0))
    st.clicks = [center_click(target.mask)]
    for k in range(cfg.val_interactions):
        if k:
            new = ritm_click(st.pred, target.mask, st.clicks)
            if new is None:  # nothing left to correct: the prediction stands
                break
            st.clicks.append(new)
        lone = k == 0 and cfg.click_output == "multimask"
        p = Prompt(list(st.clicks), None, None, st.logits is not None, multimask=lone)
        st.logits = _decode_one(net, emb, st, p, feats, scale, device)
        st.pred = (st.logits[0] > 0).cpu().numpy()
    return dice(st.pred, target.mask)


def export_model(
    net: torch.nn.Module,
    cfg: TrainConfig,
    pre: Preprocess,
    path: Path,
    load_report: dict[str, Any],
    val: dict[str, float],
    steps: int,
) -> Path:
    """Write the trained model as one of our checkpoints: only the trained parts, in fp16, when the
    image encoder was frozen (the base model named in the metadata supplies it)."""
    from imis.models.interactive import InteractiveModel
    from imis.models.registry import save_checkpoint

    # only a wholly frozen encoder can come from the base model; a trained top makes it this model's own
    freeze = cfg.model.freeze_image_encoder and not cfg.model.train_encoder_tail
    base = base_model_name(cfg.model.init) if freeze else None
    partial = base is not None
    text = getattr(net, "text_projection", None) is not None
    prompt_types = frozenset({"point", "box", "mask"} | ({"text"} if text else set()))
    policy = "auto" if cfg.click_output == "multimask" else "single"
    model = InteractiveModel(cfg.name, net.cpu().eval(), pre, policy, prompt_types, "Apache-2.0")
    metadata: dict[str, Any] = {
        "text_template": cfg.text_template,
        "text_encoder": "minilm" if cfg.model.arch == "imis-lite" else ("clip" if text else None),
        "train_config": json.loads(json.dumps(cfg.to_json(), default=str)),
        "steps": steps,
        "val": val,
        "init_report": {k: (v[:20] if isinstance(v, list) else v) for k, v in load_report.items()},
    }
    if partial:
        metadata["base"] = base
    only = ("prompt_encoder", "mask_decoder", "text_projection") if partial else None
    save_checkpoint(
        path, model, cfg.model.arch, cfg.model.arch_kwargs, metadata, half=bool(partial), only=only
    )
    return path
