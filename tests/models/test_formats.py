"""Checkpoint converters and strict loading: wrappers, prefixes, dropped keys, one-line errors."""

from __future__ import annotations

import pytest
import torch

from imis.errors import CheckpointError
from imis.models.build import build_imis_net, build_sam_vit
from imis.models.formats import imis, load_strict, sam, unwrap

TINY = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2)
TINY_DEC = dict(decoder_mlp_dim=32, decoder_num_heads=2, iou_head_hidden_dim=16)


def tiny_sam():
    return build_sam_vit(
        encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
        img_size=64, window_size=2, prompt_dim=16, **TINY_DEC,
    )  # fmt: skip


def tiny_imis():
    return build_imis_net(
        **TINY, neck_out=16, prompt_dim=16, semantic_out_dim=8, **TINY_DEC,
        text_vocab_size=50, text_hidden_size=16, text_intermediate_size=32, text_num_layers=1,
        text_num_heads=2, text_max_positions=8, text_eos_token_id=49,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sam_net():
    return tiny_sam()


@pytest.fixture(scope="module")
def imis_net():
    return tiny_imis()


def released_imis(net) -> dict[str, torch.Tensor]:
    return imis.to_foreign(net.state_dict())


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---- unwrap ----


@pytest.mark.parametrize("wrap", ["flat", "model", "state_dict", "model_state_dict", "module", "nested"])
def test_unwrap_accepts_common_wrappers(sam_net, wrap):
    sd = sam_net.state_dict()
    obj = {
        "flat": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd, "optimizer": {"lr": 1.0}},
        "model_state_dict": {"epoch": 1, "model_state_dict": sd, "optimizer_state_dict": {"state": {}}},
        "module": {"module." + k: v for k, v in sd.items()},
        "nested": {"model": {"state_dict": {"module." + k: v for k, v in sd.items()}}},
    }[wrap]
    out = unwrap(obj)
    assert list(out) == list(sd)
    load_strict(tiny_sam(), sam.to_internal(out), "sam")


@pytest.mark.parametrize("obj", [[1, 2], {}, {"epoch": 3, "args": {"lr": 1}}, torch.zeros(2)])
def test_unwrap_rejects_non_state_dicts(obj):
    with pytest.raises(CheckpointError, match="no state dict"):
        unwrap(obj)


def test_sam_converter_drops_pixel_buffers(sam_net):
    sd = dict(sam_net.state_dict(), pixel_mean=torch.zeros(3, 1, 1), pixel_std=torch.ones(3, 1, 1))
    load_strict(tiny_sam(), sam.to_internal(sd), "sam")


# ---- strict loading errors ----


def test_missing_key_is_named(sam_net):
    sd = sam.to_foreign(sam_net.state_dict())
    del sd["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError) as exc:
        load_strict(tiny_sam(), sam.to_internal(sd), "sam (official SAM)")
    msg = one_line(exc)
    assert "1 missing key (mask_decoder.iou_token.weight)" in msg
    assert "sam (official SAM)" in msg
    assert "unexpected" not in msg


def test_shape_mismatch_and_unexpected_are_named(sam_net):
    sd = sam.to_foreign(sam_net.state_dict())
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 99)
    sd["image_encoder.blocks.0.attn.adapter.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as exc:
        load_strict(tiny_sam(), sam.to_internal(sd), "sam")
    msg = one_line(exc)
    assert "1 unexpected key (image_encoder.blocks.0.attn.adapter.weight)" in msg
    assert "prompt_encoder.no_mask_embed.weight (1, 99) vs model (1, 16)" in msg


def test_many_keys_are_summarised(sam_net, imis_net):
    # An IMIS-Net checkpoint given to the SAM loader: its trunk is under sam_encoder, it has a text tower.
    with pytest.raises(CheckpointError) as exc:
        load_strict(tiny_sam(), sam.to_internal(released_imis(imis_net)), "sam")
    msg = one_line(exc)
    assert "missing keys (image_encoder.pos_embed" in msg
    assert "unexpected keys (image_encoder.sam_encoder." in msg
    assert "more)" in msg


def test_sam_checkpoint_given_to_imis_loader_names_keys(sam_net):
    with pytest.raises(CheckpointError) as exc:
        imis.to_internal(sam.to_foreign(sam_net.state_dict()))
    msg = one_line(exc)
    assert "imis-net" in msg
    assert "image_encoder.pos_embed" in msg
    assert "official SAM layout" in msg


def test_imis_checkpoint_missing_text_tower_is_named(imis_net):
    sd = {k: v for k, v in released_imis(imis_net).items() if not k.startswith("text_")}
    with pytest.raises(CheckpointError) as exc:
        load_strict(tiny_imis(), imis.to_internal(sd), "imis-net")
    assert "missing keys (text_encoder.embeddings.token_embedding.weight" in one_line(exc)


# ---- IMIS-Net layout specifics ----


def test_imis_round_trip_and_timm_names(imis_net):
    released = released_imis(imis_net)
    assert "image_encoder.sam_encoder.blocks.0.mlp.fc1.weight" in released
    assert "image_encoder.sam_encoder.neck.2.weight" in released
    assert not any(".lin1." in k and k.startswith("image_encoder") for k in released)
    target = tiny_imis()
    load_strict(target, imis.to_internal(released), "imis-net")
    for k, v in imis_net.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


@pytest.mark.parametrize("text_prefix", ["text_model.", "text_model.text_model."])
def test_imis_accepts_both_text_prefixes_and_drops_position_ids(imis_net, text_prefix):
    released = {}
    for k, v in released_imis(imis_net).items():
        released[text_prefix + k[len("text_model.") :] if k.startswith("text_model.") else k] = v
    released[text_prefix + "embeddings.position_ids"] = torch.arange(8)[None]
    internal = imis.to_internal(released)
    assert not any(k.endswith("position_ids") for k in internal)
    load_strict(tiny_imis(), internal, "imis-net")


def test_imis_training_checkpoint_with_ddp_prefix(imis_net):
    sd = {"module." + k: v for k, v in released_imis(imis_net).items()}
    obj = {"epoch": 7, "model_state_dict": sd, "optimizer_state_dict": {"state": {}}, "args": None}
    load_strict(tiny_imis(), imis.to_internal(obj), "imis-net")


def test_imis_timm_neck_is_dropped_not_loaded(imis_net):
    released = released_imis(imis_net)
    released["image_encoder.sam_encoder.neck.0.weight"] = torch.randn(256, 32, 1, 1)
    internal = imis.to_internal(released)
    assert not any("sam_encoder" in k for k in internal)
    assert internal["image_encoder.neck.0.weight"].shape == (16, 32, 1, 1)


def test_fixture_checkpoints_load(parity_dir):
    # The released-layout fixture loads after conversion, and its SAM sub-dicts load in the SAM layout.
    fx = torch.load(parity_dir / "sam_small.pt", weights_only=False)
    official = {f"{m}{k}": v for m in sam.PREFIXES for k, v in fx[m.rstrip(".")].items()}
    with pytest.raises(CheckpointError, match="imis-net"):
        imis.to_internal({"model": official})
