"""Registry and our own checkpoint format: save, reload, partial checkpoints, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import small_imis_kwargs

from imis.data.formats import imed
from imis.errors import CheckpointError, ModelNotAvailableError
from imis.models import load_model, registry_rows, save_checkpoint
from imis.models.interactive import PromptSpec


@pytest.fixture(scope="module")
def liver(btcv_dir, litemedsam):
    image = imed.read_image(btcv_dir / "image" / "ABD_001_100.png")
    return litemedsam.encode(image), PromptSpec(box=np.array([62, 193, 313, 385], np.float32))


def test_own_format_round_trip(tmp_path, litemedsam, liver):
    emb, prompt = liver
    path = tmp_path / "mine.pt"
    save_checkpoint(path, litemedsam, "litemedsam", {}, metadata={"note": "copy"})
    again = load_model(checkpoint=path)
    assert again.name == "litemedsam" and again.prompt_types == litemedsam.prompt_types
    assert again.preprocess == litemedsam.preprocess
    a, b = litemedsam.decode(emb, prompt), again.decode(emb, prompt)
    assert np.array_equal(a.mask, b.mask) and a.quality == b.quality
    obj = torch.load(path, weights_only=True)
    assert obj["metadata"] == {"note": "copy"} and obj["arch"] == "litemedsam"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_partial_half_checkpoint_fills_from_base(tmp_path, litemedsam, liver):
    emb, prompt = liver
    path = tmp_path / "decoder.pt"
    save_checkpoint(
        path,
        litemedsam,
        "litemedsam",
        {},
        metadata={"base": "litemedsam"},
        half=True,
        only=("prompt_encoder", "mask_decoder"),
    )
    obj = torch.load(path, weights_only=True)
    assert all(k.split(".")[0] in ("prompt_encoder", "mask_decoder") for k in obj["state_dict"])
    assert all(v.dtype == torch.float16 for v in obj["state_dict"].values() if v.is_floating_point())
    again = load_model(checkpoint=path)
    from imis.bench.metrics import dice

    assert dice(again.decode(emb, prompt).mask, litemedsam.decode(emb, prompt).mask) > 0.99


def test_unknown_model_and_missing_weights():
    with pytest.raises(ModelNotAvailableError, match="known models"):
        load_model("no-such-model")
    with pytest.raises(ModelNotAvailableError, match="--checkpoint"):
        load_model("imis-net-b")


def test_bad_own_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": "imis-checkpoint", "version": 1, "arch": "nope", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_model(checkpoint=path)


def test_registry_rows_list_every_model(litemedsam):
    rows = {r["name"]: r for r in registry_rows()}
    assert set(rows) >= {"litemedsam", "sam-vit-b", "medsam-vit-b", "imis-net-b"}
    assert rows["litemedsam"]["weights"].endswith("lite_medsam.pth")
    assert "text" in rows["imis-net-b"]["prompts"] and "text" not in rows["litemedsam"]["prompts"]


def test_text_prompt_end_to_end_with_small_imis_net(tmp_path, parity_dir):
    """A text prompt typed by a user reaches the decoder exactly as IMIS-Net's reference encodes it."""
    from imis.models.build import build_imis_net
    from imis.models.formats import imis as imis_format
    from imis.models.formats import load_strict
    from imis.models.interactive import Embedding, InteractiveModel
    from imis.models.preprocess import Preprocess, frame_for
    from imis.prompts.text import prompt_name

    fx = torch.load(parity_dir / "imisnet_small.pt", weights_only=False)
    kwargs = small_imis_kwargs(fx["config"])
    net = build_imis_net(**kwargs)
    load_strict(net, imis_format.to_internal(fx["state_dict"]), "imis-net")
    pre = Preprocess(256, "square", "nearest", "imagenet", False)
    tmp = InteractiveModel(
        "imis-small", net, pre, "best_iou", frozenset({"point", "box", "mask", "text"}), "test"
    )
    path = tmp_path / "imis_small.pt"
    save_checkpoint(path, tmp, "imis-net", kwargs)
    model = load_model(checkpoint=path)
    emb = Embedding(fx["image_embeddings"], frame_for((256, 256), pre))
    pred = model.decode(emb, PromptSpec(text="Liver"))
    ref = fx["outputs"]["text"]
    best = int(torch.argmax(ref["iou_pred"][0]))
    assert float((pred.low_res_logits[0, 0] - ref["low_res_masks"][0, best]).abs().max()) < 1e-4
    assert abs(pred.quality - float(ref["iou_pred"][0, best])) < 1e-4
    assert prompt_name("kidney_right") == "kidney right"
    from imis.data.vocabulary import Vocabulary

    assert prompt_name("kidney_right", Vocabulary.builtin()) == "right kidney"
    assert prompt_name("a Brand-new lesion", Vocabulary.builtin()) == "a brand new lesion"


def test_bf16_path_agrees_with_fp32(litemedsam, btcv_dir):
    """The bfloat16 autocast encoder path gives (nearly) the same mask as float32."""
    from imis.bench.metrics import iou
    from imis.models.interactive import resolve_precision

    assert resolve_precision("fp32", "cpu") is None and resolve_precision("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")
    bf16 = load_model("litemedsam", dtype=torch.bfloat16)
    image = imed.read_image(btcv_dir / "image" / "ABD_001_100.png")
    prompt = PromptSpec(box=np.array([62, 193, 313, 385], np.float32))
    a = litemedsam.decode(litemedsam.encode(image), prompt).mask
    b = bf16.decode(bf16.encode(image), prompt).mask
    # measured 0.944 for LiteMedSAM (its TinyViT is more sensitive than ViT-B, 0.998 in benchmarks/encoder.py)
    assert iou(a, b) >= 0.9
