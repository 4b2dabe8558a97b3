"""Full-size SAM 2 (t, s, b+, l; releases 2.0 and 2.1) and SAM-Med2D builders have exactly the keys and
shapes of the released checkpoints (fixtures/released_keys.json.gz: written by
scripts/make_sam2_fixtures.py from the official configs), and a checkpoint of the wrong layout or size
fails with one error naming the layout and the keys. Built on the meta device: shapes only."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imis.errors import CheckpointError
from imis.models import registry
from imis.models.build import build_sam_med2d_b
from imis.models.build_sam2 import build_sam2
from imis.models.formats import sam2, sam_med2d

KEYS = Path(__file__).parent / "fixtures" / "released_keys.json.gz"
SIZES = ["t", "s", "b+", "l"]


@pytest.fixture(scope="module")
def released() -> dict[str, dict[str, list[int]]]:
    with gzip.open(KEYS, "rt") as f:
        return json.load(f)


def shapes(sd) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sd.items()}


def meta_checkpoint(spec: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in spec.items()}


@pytest.mark.parametrize("release", ["sam2.1_hiera_", "sam2_hiera_"])
@pytest.mark.parametrize("size", SIZES)
def test_sam2_builder_matches_released_keys(released, release, size):
    official = released[release + size]
    with torch.device("meta"):
        sd = build_sam2(size).state_dict()
    ours = shapes(sd)
    internal = shapes(sam2.to_internal(meta_checkpoint(official)))
    assert internal == ours  # strictly: same keys, same shapes
    foreign = shapes(sam2.to_foreign(sd))
    dropped = sorted(set(official) - set(foreign))
    assert all(k.startswith(sam2.VIDEO_ONLY) for k in dropped) and dropped
    assert not set(foreign) - set(official)
    assert all(official[k] == v for k, v in foreign.items())


def test_sam_med2d_builder_matches_released_keys(released):
    official = released["sam-med2d_b"]
    with torch.device("meta"):
        sd = build_sam_med2d_b().state_dict()
    ours = shapes(sd)
    assert shapes(sam_med2d.to_internal(meta_checkpoint(official))) == ours
    assert shapes(sam_med2d.to_foreign(sd)) == official
    assert ours["image_encoder.pos_embed"] == [1, 16, 16, 768]
    assert ours["image_encoder.blocks.2.attn.rel_pos_h"] == [31, 64]


def _load(monkeypatch, name: str, checkpoint: dict[str, torch.Tensor]):
    monkeypatch.setattr(registry, "read_checkpoint", lambda path, tolerant=False: {"model": checkpoint})
    with torch.device("meta"):
        return registry.load_model(name, checkpoint="given.pt")


def test_sam_checkpoint_given_as_sam2(monkeypatch, parity_dir):
    sam_keys = json.loads((parity_dir / "sam_vit_b_keys.json").read_text())
    with pytest.raises(CheckpointError) as err:
        _load(monkeypatch, "sam2-hiera-b+", meta_checkpoint(sam_keys))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("given.pt: checkpoint does not match the expected layout sam2: released SAM 2")
    assert "318 missing keys (no_mem_embed, image_encoder.trunk.pos_embed," in msg
    assert "177 unexpected keys (image_encoder.pos_embed, image_encoder.patch_embed.proj.weight," in msg


def test_hiera_s_checkpoint_given_as_b_plus(monkeypatch, released):
    with pytest.raises(CheckpointError) as err:
        _load(monkeypatch, "sam2-hiera-b+", meta_checkpoint(released["sam2.1_hiera_s"]))
    msg = str(err.value)
    assert "expected layout sam2" in msg
    # B+ has 24 blocks and changes stage at blocks 2, 5, 21; S has 16 and changes at 1, 3, 14
    assert "missing keys (image_encoder.trunk.blocks.2.proj.weight," in msg
    assert "unexpected keys (image_encoder.trunk.blocks.1.proj.weight," in msg
    assert (
        "shape mismatch" in msg
        and "image_encoder.trunk.pos_embed (1, 96, 7, 7) vs model (1, 112, 14, 14)" in msg
    )


def test_sam_med2d_checkpoint_given_as_sam_vit_b(monkeypatch, released):
    with pytest.raises(
        CheckpointError, match=r"layout sam: .*unexpected keys \(image_encoder\.blocks\.0\.Adapter"
    ):
        _load(monkeypatch, "sam-vit-b", meta_checkpoint(released["sam-med2d_b"]))


def test_released_sam2_checkpoints_load(monkeypatch, released):
    # The whole released dict (video parts included) loads into the image model.
    for size in ("t", "l"):
        with torch.device("meta"):
            net = build_sam2(size)
        from imis.models.formats import load_strict

        ckpt = {k: torch.zeros(s, device="meta") for k, s in released[f"sam2.1_hiera_{size}"].items()}
        internal = sam2.to_internal(sam2.unwrap({"model": ckpt}))
        assert set(internal) == set(net.state_dict())
        with pytest.raises(CheckpointError, match="unexpected key"):
            load_strict(net, {**internal, "memory_attention_x": torch.zeros(1)}, "sam2")


def test_registry_rows():
    rows = {r["name"]: r for r in registry.registry_rows()}
    for name in [
        "sam2-hiera-t",
        "sam2-hiera-s",
        "sam2-hiera-b+",
        "sam2-hiera-l",
        "sam-med2d-b",
        "huang2024-vit-b",
    ]:
        assert rows[name]["weights"] == "pass --checkpoint"
    assert rows["sam2-hiera-b+"]["input"] == "1024 square"
    assert rows["sam-med2d-b"]["input"] == "256 square"
    assert rows["huang2024-vit-b"]["prompts"] == "box,mask"
    with pytest.raises(Exception, match="pass --checkpoint FILE"):
        registry.load_model("sam2-hiera-t")


def test_small_sam2_runs_behind_interactive_model():
    from imis.models.interactive import InteractiveModel, PromptSpec
    from imis.models.preprocess import Preprocess
    from tests.models.test_sam2_parity import load_fixture, small_model

    fx = load_fixture()
    net = small_model(fx["config"])
    model = InteractiveModel(
        "sam2-small",
        net,
        Preprocess(96, "square", "bilinear_antialias", "imagenet", False),
        "auto",
        frozenset({"box", "point", "mask"}),
        "Apache-2.0",
    )
    image = (np.arange(150 * 200) % 251).reshape(150, 200).astype(np.uint8)
    emb = model.encode(image)
    assert isinstance(emb.features, tuple) and emb.features[0].shape == (1, 32, 6, 6)
    click = model.decode(emb, PromptSpec(points=np.array([[50.0, 60.0]]), labels=np.array([1])))
    assert click.mask.shape == (150, 200) and 0.0 <= click.quality <= 1.0  # sigmoid IoU head
    again = model.decode(
        emb, PromptSpec(box=np.array([10.0, 20.0, 120.0, 110.0]), mask_logits=click.low_res_logits)
    )
    assert again.low_res_logits.shape == (1, 1, 24, 24)


def test_small_sam2_bfloat16_encode_gives_float32_features():
    from imis.models.interactive import InteractiveModel
    from imis.models.preprocess import Preprocess
    from tests.models.test_sam2_parity import load_fixture, small_model

    net = small_model(load_fixture()["config"])
    pre = Preprocess(96, "square", "bilinear_antialias", "imagenet", False)
    ref = InteractiveModel("s", net, pre, "auto", frozenset({"box"}), "x")
    half = InteractiveModel("s", net, pre, "auto", frozenset({"box"}), "x", dtype=torch.bfloat16)
    image = (np.arange(96 * 96) % 199).reshape(96, 96).astype(np.uint8)
    a, b = ref.encode(image).features, half.encode(image).features
    assert all(f.dtype == torch.float32 for f in b)
    assert all(float((x - y).abs().max()) < 0.25 * float(x.abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("size", SIZES)
def test_hiera_blocks_and_neck_match_the_official_configs(size):
    # Keys and shapes cannot show a window size or a global block: compare each block's plan with the
    # official trunk's (fixtures/released_hiera_plans.json, read off the instantiated official models).
    official = json.loads((KEYS.parent / "released_hiera_plans.json").read_text())[size]
    with torch.device("meta"):
        net = build_sam2(size)
    ours = [
        {
            "dim": b.norm1.normalized_shape[0],
            "dim_out": b.norm2.normalized_shape[0],
            "num_heads": b.attn.num_heads,
            "q_stride": b.q_stride,
            "window_size": b.window_size,
        }
        for b in net.image_encoder.trunk.blocks
    ]
    assert ours == official["blocks"]
    neck = net.image_encoder.neck
    assert list(neck.top_down_levels) == official["neck"]["fpn_top_down_levels"]
    assert neck.interpolation == official["neck"]["fpn_interp_model"]
    assert neck.scalp == official["neck"]["scalp"]
