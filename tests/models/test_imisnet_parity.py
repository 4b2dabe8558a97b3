"""Our IMIS-Net reproduces the IMIS-Bench modules (fixtures/parity/imisnet_small.pt): timm samvit trunk +
IMIS neck, prompt encoder with a text token, decoder with semantic tokens and the text-to-mask path,
CLIP text tower and its projection; loaded from the released key layout."""

from __future__ import annotations

import pytest
import torch
from model_helpers import maxdiff, small_imis_kwargs

from imis.errors import PromptError
from imis.models.build import build_imis_net
from imis.models.formats import imis, load_strict

TOL = 1e-4
CASES = ["points", "box", "text", "points_text_mask", "box_text"]


def build_from_config(c: dict):
    return build_imis_net(**small_imis_kwargs(c)).eval()


@pytest.fixture(scope="module")
def fixture(parity_dir):
    return torch.load(parity_dir / "imisnet_small.pt", weights_only=False)


@pytest.fixture(scope="module")
def net(fixture):
    model = build_from_config(fixture["config"])
    load_strict(model, imis.to_internal(fixture["state_dict"]), "imis-net")
    return model


def test_image_encoder_matches(net, fixture):
    with torch.no_grad():
        emb = net.encode_image(fixture["inputs"]["image"])
    assert maxdiff(emb, fixture["image_embeddings"]) <= TOL


@pytest.mark.parametrize("case", CASES)
def test_prompt_encoder_and_decoder_match(net, fixture, case):
    inp = fixture["inputs"]
    ref = fixture["outputs"][case]
    with torch.no_grad():
        out = net.decode(
            fixture["image_embeddings"],
            points=(inp["point_coords"], inp["point_labels"]) if "points" in case else None,
            boxes=inp["box"] if "box" in case else None,
            masks=inp["mask_input"] if "mask" in case else None,
            text_embedding=fixture["text_embedding"] if "text" in case else None,
            multimask_output=True,
        )
    for key in ("sparse", "dense", "low_res_masks", "iou_pred", "semantic_pred"):
        assert maxdiff(out[key], ref[key]) <= TOL, key
    assert out["semantic_pred"].shape == (1, 3, fixture["config"]["semantic_out_dim"])


def test_single_mask_output_is_token_zero(net, fixture):
    inp = fixture["inputs"]
    with torch.no_grad():
        args = (fixture["image_embeddings"], None, inp["box"], None, fixture["text_embedding"])
        multi = net.decode(*args, multimask_output=True)
        single = net.decode(*args, multimask_output=False)
        full = net.mask_decoder.predict_masks(
            fixture["image_embeddings"],
            net.prompt_encoder.get_dense_pe(),
            single["sparse"],
            single["dense"],
            fixture["text_embedding"],
        )
    assert single["low_res_masks"].shape == (1, 1, 64, 64)
    assert maxdiff(single["low_res_masks"], full[0][:, :1]) <= 1e-6
    assert maxdiff(multi["low_res_masks"], full[0][:, 1:]) <= 1e-6
    assert maxdiff(single["semantic_pred"], full[2][:, :1]) <= 1e-6


def test_text_tower_matches(net, fixture):
    ids = fixture["inputs"]["text_input_ids"]
    with torch.no_grad():
        assert maxdiff(net.text_encoder(ids), fixture["text_pooled"]) <= TOL
        assert maxdiff(net.encode_text(ids), fixture["text_embedding"]) <= TOL


def test_prompt_types(net):
    assert net.prompt_types == {"point", "box", "mask", "text"}
    plain = build_imis_net(
        img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), neck_out=16, prompt_dim=16,
        semantic_out_dim=8, decoder_mlp_dim=32, decoder_num_heads=2, iou_head_hidden_dim=16, with_text=False,
    )  # fmt: skip
    assert plain.prompt_types == {"point", "box", "mask"}
    with pytest.raises(PromptError):
        plain.encode_text(torch.tensor([[49406, 49407]]))
    with pytest.raises(PromptError):
        plain.decode(
            torch.zeros(1, 16, 4, 4),
            boxes=torch.tensor([[0.0, 0, 10, 10]]),
            text_embedding=torch.zeros(1, 16),
        )
