"""The network a training run trains: built from the configuration's architecture with its starting
weights, its frozen text features, the split of its image encoder, and its export as one of our
checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from imis.errors import ImisError, InputError
from imis.models.preprocess import Preprocess
from imis.train.config import TrainConfig

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
            from imis.models.text.minilm import load_minilm

            encoder, tokenizer = load_minilm()
            feats = encoder.embed_texts(texts) if hasattr(encoder, "embed_texts") else None
            if feats is None:
                raise ImisError("MiniLM encoder has no embed_texts")
        else:
            from imis.models.text.tokenizer import CLIPTokenizer

            tok = CLIPTokenizer()
            net.text_encoder.to(device)
            feats = torch.cat([net.text_encoder(torch.tensor([tok.encode(t)], device=device)) for t in texts])
    return feats.float().to(device)


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
    try:
        obj = torch.load(init, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a foreign or unreadable file names no base
        return None
    return obj.get("metadata", {}).get("base") if isinstance(obj, dict) else None


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
