"""Our SAM ViT with adapters reproduces SAM-Med2D's official modules (fixtures/sam_med2d_small.pt.gz, made
by scripts/make_sam2_fixtures.py on a small random configuration with adapters on): image embedding, and
prompt embeddings, masks and IoU for click, box, click+box and click+box+mask, multimask and single."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_helpers import assert_decode_matches, load_gz_fixture, maxdiff, prompt_kwargs, small_sam_kwargs

from imis.models.build import build_sam_vit
from imis.models.formats import load_strict, sam_med2d

TOL = 1e-4
FIXTURE = Path(__file__).parent / "fixtures" / "sam_med2d_small.pt.gz"
CASES = ["click", "box", "click_box", "click_box_mask"]


def load_fixture() -> dict:
    return load_gz_fixture(FIXTURE)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture()


@pytest.fixture(scope="module")
def net(fixture):
    model = build_sam_vit(**small_sam_kwargs(fixture["config"]), encoder_adapter=True).eval()
    sd = {k: v.float() for k, v in fixture["state_dict"].items()}
    load_strict(model, sam_med2d.to_internal(sam_med2d.unwrap({"model": sd})), "sam-med2d")
    return model


@pytest.fixture(scope="module")
def inputs(fixture):
    return {k: v.float() if v.is_floating_point() else v for k, v in fixture["inputs"].items()}


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
            fixture["image_embeddings"], **prompt_kwargs(inputs, case), multimask_output=multimask
        )
    assert_decode_matches(out, emb_ref, ref, TOL)


def test_round_trip_of_the_adapter_names(fixture):
    sd = fixture["state_dict"]
    internal = sam_med2d.to_internal(sd)
    assert "image_encoder.blocks.0.adapter.spatial_up.weight" in internal
    assert not any(".Adapter." in k for k in internal)
    assert sam_med2d.to_foreign(internal).keys() == sd.keys()
