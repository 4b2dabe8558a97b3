"""The network a training run trains: built from the configuration's architecture with its starting
weights, its frozen text features, the split of its image encoder, and its export as one of our
checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from imis.errors import InputError
from imis.models.preprocess import Preprocess
from imis.train.config import TrainConfig


def build_network(cfg: TrainConfig) -> tuple[torch.nn.Module, Preprocess, dict[str, Any]]:
    """The network of ``cfg.model`` with its starting weights, its preprocessing (its architecture's
    recipe model's, at the network's input size) and a load report."""
    from imis.models.registry import load_model, spec_for_architecture
    from imis.models.spec import get_architecture

    arch = cfg.model.arch
    net = get_architecture(arch).build(**cfg.model.arch_kwargs)
    recipe = spec_for_architecture(arch)
    size = int(net.prompt_encoder.input_image_size[0])
    pre = dataclasses.replace(recipe.preprocess, input_size=size)
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


def multimask_heads(
    net: torch.nn.Module, tokens: bool = False
) -> list[tuple[str, torch.nn.Parameter, torch.Tensor | None]]:
    """The parameters that only the multimask outputs read, as (name, parameter, row mask): the
    hypernetwork MLPs of mask tokens 1.. and the IoU head's last layer, whose row 0 (the single output's
    IoU) must keep its value: its row mask is 0 there and 1 elsewhere (None: the whole tensor trains).
    Training these alone leaves the single output, its IoU and everything they read bit-identical.

    ``tokens``: the mask tokens 1.. as well (rows of ``mask_tokens``): they let the multimask outputs ask
    the transformer for their own information; the single output then moves a little, through the
    tokens' self-attention."""
    dec = net.mask_decoder
    out = []
    for i in range(1, dec.num_mask_tokens):
        for n, p in dec.output_hypernetworks_mlps[i].named_parameters():
            out.append((f"mask_decoder.output_hypernetworks_mlps.{i}.{n}", p, None))
    last = len(dec.iou_prediction_head.layers) - 1
    named = [
        (f"mask_decoder.iou_prediction_head.layers.{last}.{n}", p)
        for n, p in dec.iou_prediction_head.layers[last].named_parameters()
    ]
    if tokens:
        named.append(("mask_decoder.mask_tokens.weight", dec.mask_tokens.weight))
    for name, p in named:
        rows = torch.ones(p.shape[0], *([1] * (p.dim() - 1)), dtype=p.dtype, device=p.device)
        rows[0] = 0
        out.append((name, p, rows))
    return out


def trained_spec(cfg: TrainConfig, net: torch.nn.Module, pre: Preprocess):
    """The registry spec of the model a run trains: its architecture's recipe with this run's name,
    sizes, preprocessing, mask choice and text template."""
    from imis.models.registry import spec_for_architecture

    text = getattr(net, "text_projection", None) is not None
    return dataclasses.replace(
        spec_for_architecture(cfg.model.arch),
        name=cfg.name,
        description=f"trained by imis train ({cfg.out})",
        arch=cfg.model.arch,
        arch_kwargs=dict(cfg.model.arch_kwargs),
        preprocess=pre,
        multimask="auto" if cfg.click_output == "multimask" else "single",
        prompt_types=frozenset({"point", "box", "mask"} | ({"text"} if text else set())),
        license="Apache-2.0",
        embedded_weights=None,
        text_template=cfg.text_template,
        text_encoder=None,
    )


def text_features(
    cfg: TrainConfig, net: torch.nn.Module, names: list[str], device, cache: Path | None = None
) -> torch.Tensor | None:
    """(len(names), T) frozen text-tower features of each name's text prompt (the same sentence and tower
    as at inference: :mod:`imis.models.text.towers`), or None.

    ``cache``: a folder where the features of a tower with fixed weights of its own (MiniLM) are kept
    per sentence (``text/minilm.pt``); a run whose sentences are all there never loads the tower, so a
    machine without its weights (a lent GPU, where 88 MB of MiniLM do not travel) can train with text
    from the few kilobytes of that file. A CLIP tower is part of the network, so it is never cached."""
    from imis.models.spec import get_architecture
    from imis.models.text.towers import tower_features
    from imis.prompts.text import text_prompt

    tower = get_architecture(cfg.model.arch).text_tower
    if getattr(net, "text_projection", None) is None or not names or tower is None:
        return None
    sentences = [text_prompt(n, cfg.text_template) for n in names]
    with torch.no_grad():
        if tower == "minilm" and cache is not None:
            feats = _cached_tower_features(tower, net, sentences, cache / "text" / f"{tower}.pt")
        else:
            feats = tower_features(tower, net, sentences)
    return feats.float().to(device)


def _cached_tower_features(
    tower: str, net: torch.nn.Module, sentences: list[str], path: Path
) -> torch.Tensor:
    """The tower's features of ``sentences`` from ``path`` (a {sentence: (T,) tensor} file), computing
    and adding (atomically) only the missing ones."""
    from imis.errors import CheckpointError
    from imis.io.files import atomic_output
    from imis.models.formats.torchfile import load_torch_file
    from imis.models.text.towers import tower_features

    known: dict[str, torch.Tensor] = {}
    if path.is_file():
        try:
            obj = load_torch_file(path)
        except CheckpointError as e:
            raise InputError(f"{path}: not a text feature cache ({e}); delete it to rebuild") from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise InputError(
                f"{path}: not a text feature cache (a mapping of sentences to tensors); delete it"
            )
        known = obj
    missing = [s for s in dict.fromkeys(sentences) if s not in known]
    if missing:
        new = tower_features(tower, net, missing).float().cpu()
        known.update({s: new[i].clone() for i, s in enumerate(missing)})
        with atomic_output(path) as tmp:
            torch.save(known, tmp)
    return torch.stack([known[s] for s in sentences])


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


def train_mode(net: torch.nn.Module, freeze: bool, head: Any) -> None:
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


def base_model_name(init: str | None) -> str | None:
    """The registry model whose image encoder a run starts from: ``init`` itself, or the ``base`` named
    by one of our partial checkpoints."""
    if not init:
        return None
    if not Path(init).is_file():
        return init
    from imis.errors import CheckpointError
    from imis.models.formats.torchfile import load_torch_file

    try:
        obj = load_torch_file(init)  # weights_only, bounded reads: a user's file
    except CheckpointError:  # a foreign or unreadable file names no base
        return None
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    base = meta.get("base") if isinstance(meta, dict) else None
    return base if isinstance(base, str) else None


def export_model(
    net: torch.nn.Module,
    cfg: TrainConfig,
    pre: Preprocess,
    path: Path,
    load_report: dict[str, Any],
    val: dict[str, float],
    steps: int,
    half: bool | None = None,
) -> Path:
    """Write the trained model as one of our checkpoints: only the trained parts, in fp16, when the
    image encoder was frozen (the base model named in the metadata supplies it). ``half``: fp16 weights
    for a whole network too (True), or never (False); None: only for the trained parts."""
    from imis.models.registry import model_from_spec, save_checkpoint

    # only a wholly frozen encoder can come from the base model; a trained top makes it this model's own
    freeze = cfg.model.freeze_image_encoder and not cfg.model.train_encoder_tail
    base = base_model_name(cfg.model.init) if freeze else None
    partial = base is not None
    spec = trained_spec(cfg, net, pre)
    model = model_from_spec(spec, net.cpu().eval())
    metadata: dict[str, Any] = {
        "text_template": spec.text_template,
        "text_encoder": spec.text_tower,
        "train_config": json.loads(json.dumps(cfg.to_json(), default=str)),
        "steps": steps,
        "val": val,
        "init_report": {k: (v[:20] if isinstance(v, list) else v) for k, v in load_report.items()},
    }
    if partial:
        metadata["base"] = base
    only = ("prompt_encoder", "mask_decoder", "text_projection") if partial else None
    save_checkpoint(path, model, metadata=metadata, half=bool(partial) if half is None else half, only=only)
    return path
