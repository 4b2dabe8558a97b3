"""Our SAM ViT with adapters reproduces SAM-Med2D's official modules (fixtures/sam_med2d_small.pt.gz, made
by scripts/make_sam2_fixtures.py on a small random configuration with adapters on): image embedding, and
prompt embeddings, masks and IoU for click, box, click+box and click+box+mask, multimask and single."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
import torch

from imis.models.build import build_sam_vit
from imis.models.formats import load_strict, sam_med2d

TOL = 1e-4
FIXTURE = Path(__file__).parent / "fixtures" / "sam_med2d_small.pt.gz"
CASES = ["click", "box", "click_box", "click_box_mask"]


def load_fixture() -> dict:
    return torch.load(io.BytesIO(gzip.decompress(FIXTURE.read_bytes())), weights_only=False)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture()


@pytest.fixture(scope="module")
def net(fixture):
    c, dec = fixture["config"], fixture["config"]["decoder"]
    model = build_sam_vit(
        encoder_embed_dim=c["embed_dim"],
        encoder_depth=c["depth"],
        encoder_num_heads=c["num_heads"],
        encoder_global_attn_indexes=tuple(c["global_attn_indexes"]),
        img_size=c["img_size"],
        prompt_dim=c["prompt_dim"],
        patch_size=c["patch_size"],
        window_size=c["window_size"],
        mask_in_chans=c["mask_in_chans"],
        decoder_depth=dec["depth"],
        decoder_mlp_dim=dec["mlp_dim"],
        decoder_num_heads=dec["num_heads"],
        iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        encoder_adapter=True,
    ).eval()
    sd = {k: v.float() for k, v in fixture["state_dict"].items()}
    load_strict(model, sam_med2d.to_internal(sam_med2d.unwrap({"model": sd})), "sam-med2d")
    return model


@pytest.fixture(scope="module")
def inputs(fixture):
    return {k: v.float() if v.is_floating_point() else v for k, v in fixture["inputs"].items()}


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach() - b.detach()).abs().max())


def test_image_encoder_with_adapters_matches(net, fixture, inputs):
    with torch.no_grad():
        emb = net.encode_image(inputs["image"])
    assert maxdiff(emb, fixture["image_embeddings"]) <= TOL


def test_adapters_change_the_embedding(net, fixture, inputs):
    # The adapters matter: without them the encoder gives another embedding.
    adapters = [blk.adapter for blk in net.image_encoder.blocks]
    try:
        for blk in net.image_encoder.blocks:
            blk.adapter = None
        with torch.no_grad():
            emb = net.encode_image(inputs["image"])
    finally:
        for blk, a in zip(net.image_encoder.blocks, adapters, strict=True):
            blk.adapter = a
    assert maxdiff(emb, fixture["image_embeddings"]) > 1e-2


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_prompts_and_decoder_match(net, fixture, inputs, case, multimask):
    ref, emb_ref = fixture["outputs"][f"{case}/multimask={multimask}"], fixture["outputs"][case]
    with torch.no_grad():
        out = net.decode(
            fixture["image_embeddings"],
            points=(inputs["point_coords"], inputs["point_labels"]) if "click" in case else None,
            boxes=inputs["box"] if "box" in case else None,
            masks=inputs["mask_input"] if "mask" in case else None,
            multimask_output=multimask,
        )
    assert maxdiff(out["sparse"], emb_ref["sparse"]) <= TOL
    assert maxdiff(out["dense"], emb_ref["dense"]) <= TOL
    assert maxdiff(out["low_res_masks"], ref["low_res_masks"]) <= TOL
    assert maxdiff(out["iou_pred"], ref["iou"]) <= TOL


def test_round_trip_of_the_adapter_names(fixture):
    sd = fixture["state_dict"]
    internal = sam_med2d.to_internal(sd)
    assert "image_encoder.blocks.0.adapter.spatial_up.weight" in internal
    assert not any(".Adapter." in k for k in internal)
    assert sam_med2d.to_foreign(internal).keys() == sd.keys()
