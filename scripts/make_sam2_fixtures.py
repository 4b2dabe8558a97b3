"""Make the SAM 2 and SAM-Med2D parity fixtures under tests/models/fixtures/ from the official code.

Not needed by the tests, and it carries none of the official code: it imports the official packages
from a separate scratch environment and records what they compute.

- SAM 2: ``facebookresearch/sam2`` (commit 2b90b9f), package ``sam2`` on PYTHONPATH, with hydra-core,
  iopath and omegaconf installed; the image path is run through ``SAM2ImagePredictor`` itself
  (``set_image`` then ``_predict`` with prompts in the network-input frame).
- SAM-Med2D: ``OpenGVLab/SAM-Med2D`` (commit bfd2b93), its ``segment_anything`` package on PYTHONPATH;
  its modules are run directly (its predictor needs albumentations / OpenCV for the resize only).
- torchvision is not installed there: a stand-in package that only defines the names imported at
  module level (never called, the inputs are network-input tensors) is put on PYTHONPATH.

Run (scratch env, CPU)::

    PYTHONPATH=/work/scratch/sam2/stubs:/work/scratch/sam2/src:/work/scratch/sam2/src/sammed \
        /work/scratch/sam2/venv/bin/python scripts/make_sam2_fixtures.py

Writes ``sam2_small.pt.gz`` and ``sam_med2d_small.pt.gz`` (gzipped torch files; small random configurations: state dicts under the
official key names, inputs, encoder features, prompt embeddings, masks, IoU, object scores),
``released_keys.json.gz`` (key -> shape of every released SAM 2 / 2.1 size and of SAM-Med2D ViT-B, from
the official configs with random weights) and ``released_hiera_plans.json`` (per size, each official
Hiera block's width, heads, query stride and window; the neck's top-down levels).

Every weight and input is rounded to float16 before the official code runs and is stored as float16,
so the files stay small while the tests load exactly the values the official code saw; outputs are
stored in float32.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from functools import partial
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "models" / "fixtures"

# The small SAM 2 configuration: 96 px input; Hiera stages of 1/2/2/1 blocks with query pooling at every
# stage change; window sizes 8/4/4/2 (the pooled first block of stage 4 pads its 6x6 grid to 8x8);
# global attention in block 4; FPN with top-down levels 2, 3 (nearest); 32-d prompts and decoder.
SAM2_SMALL = {
    "image_size": 96,
    "embed_dim": 8,
    "num_heads": 1,
    "stages": [1, 2, 2, 1],
    "global_att_blocks": [4],
    "window_spec": [8, 4, 4, 2],
    "window_pos_embed_bkg_spatial_size": [4, 4],
    "d_model": 32,
    "fpn_top_down_levels": [2, 3],
    "decoder": {"depth": 2, "mlp_dim": 64, "num_heads": 4, "iou_head_hidden_dim": 32},
}

SAMMED_SMALL = {
    "img_size": 96,
    "patch_size": 16,
    "embed_dim": 16,
    "depth": 2,
    "num_heads": 2,
    "global_attn_indexes": [1],
    "window_size": 4,
    "prompt_dim": 16,
    "mask_in_chans": 4,
    "decoder": {"depth": 2, "mlp_dim": 32, "num_heads": 2, "iou_head_hidden_dim": 16},
}


def half_exact(module: torch.nn.Module, seed: int) -> None:
    """Random weights (not the zero inits), rounded to float16 so they survive the float16 file."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.state_dict().items():
            if p.is_floating_point():
                p.copy_((torch.randn(p.shape, generator=g) * 0.2).half().float())


def half(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def prompts(size: int, g: torch.Generator, mask_hw: int) -> dict[str, torch.Tensor]:
    s = float(size)
    return {
        "point_coords": half(torch.tensor([[[0.40 * s, 0.55 * s], [0.70 * s, 0.30 * s]]])),
        "point_labels": torch.tensor([[1, 0]], dtype=torch.int32),
        "box": half(torch.tensor([[0.20 * s, 0.25 * s, 0.75 * s, 0.80 * s]])),
        "mask_input": half(torch.randn(1, 1, mask_hw, mask_hw, generator=g) * 4),
    }


STABLE_THRESH = 0.5

CASES = {
    "click": ("point",),
    "box": ("box",),
    "click_box": ("point", "box"),
    "click_box_mask": ("point", "box", "mask"),
}


def sam2_small() -> dict:
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    c = SAM2_SMALL
    chans = [c["embed_dim"] * 2**i for i in range(4)][::-1]
    overrides = [
        f"++model.image_size={c['image_size']}",
        f"++model.image_encoder.trunk.embed_dim={c['embed_dim']}",
        f"++model.image_encoder.trunk.num_heads={c['num_heads']}",
        f"++model.image_encoder.trunk.stages={c['stages']}",
        f"++model.image_encoder.trunk.global_att_blocks={c['global_att_blocks']}",
        f"++model.image_encoder.trunk.window_spec={c['window_spec']}",
        f"++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size={c['window_pos_embed_bkg_spatial_size']}",
        f"++model.image_encoder.neck.d_model={c['d_model']}",
        f"++model.image_encoder.neck.backbone_channel_list={chans}",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    ]
    cfg = compose(config_name="configs/sam2.1/sam2.1_hiera_t.yaml", overrides=overrides)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    d, dec = c["d_model"], c["decoder"]
    # SAM2Base fixes the decoder at 2048 MLP / 8 heads; the small fixture uses the official class smaller.
    model.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=dec["depth"], embedding_dim=d, mlp_dim=dec["mlp_dim"], num_heads=dec["num_heads"]
        ),
        transformer_dim=d,
        iou_head_depth=3,
        iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        use_high_res_features=True,
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
        dynamic_multimask_via_stability=True,
        dynamic_multimask_stability_delta=0.05,
        dynamic_multimask_stability_thresh=0.98,
    )
    model.eval()
    image_parts = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
    half_exact(model, seed=0)
    sd = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(image_parts)}

    g = torch.Generator().manual_seed(1)
    size = c["image_size"]
    image = half(torch.randn(1, 3, size, size, generator=g))
    inputs = {"image": image, **prompts(size, g, size // 4)}

    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    # The transform is the network-input tensor itself (resize and normalisation are ours to test).
    predictor._transforms = _Given(image[0], predictor._transforms)
    with torch.no_grad():
        trunk = model.image_encoder.trunk(image)
        predictor.set_image(torch.zeros(size, size, 3).numpy())
        feats = predictor._features
        outputs = {}
        for case, kinds in CASES.items():
            pts = (inputs["point_coords"], inputs["point_labels"]) if "point" in kinds else (None, None)
            box = inputs["box"] if "box" in kinds else None
            mask = inputs["mask_input"] if "mask" in kinds else None
            for multimask in (True, False):
                _, iou, low = predictor._predict(
                    pts[0], pts[1], box, mask, multimask_output=multimask, return_logits=True
                )
                outputs[f"{case}/multimask={multimask}"] = {"low_res_masks": low, "iou": iou}
            outputs[case] = _sam2_heads(model, feats, pts, box, mask)
        # Random weights give unstable single masks: a lower threshold makes the rule keep them instead.
        model.sam_mask_decoder.dynamic_multimask_stability_thresh = STABLE_THRESH
        _, iou, low = predictor._predict(
            inputs["point_coords"],
            inputs["point_labels"],
            None,
            None,
            multimask_output=False,
            return_logits=True,
        )
        outputs[f"click/multimask=False/thresh={STABLE_THRESH}"] = {"low_res_masks": low, "iou": iou}
        model.sam_mask_decoder.dynamic_multimask_stability_thresh = 0.98
    return {
        "config": c,
        "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
        "inputs": {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()},
        "trunk": [t for t in trunk],
        "image_embed": feats["image_embed"],
        "high_res_feats": list(feats["high_res_feats"]),
        "outputs": outputs,
    }


class _Given:
    """The predictor's transforms, except that the image handed in is already the network input."""

    def __init__(self, x: torch.Tensor, official) -> None:
        self.x, self.official = x, official

    def __getattr__(self, name):
        return getattr(self.official, name)

    def __call__(self, _image) -> torch.Tensor:
        return self.x


def _sam2_heads(model, feats, pts, box, mask) -> dict[str, torch.Tensor]:
    """The official modules called directly: prompt embeddings, all four mask tokens, object score."""
    points = None
    if pts[0] is not None:
        points = pts
    if box is not None:  # as the predictor does: box corners (labels 2, 3) first, then the clicks
        bc, bl = box.reshape(-1, 2, 2), torch.tensor([[2, 3]], dtype=torch.int32)
        points = (
            (bc, bl) if points is None else (torch.cat([bc, points[0]], 1), torch.cat([bl, points[1]], 1))
        )
    sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask)
    dec = model.sam_mask_decoder
    masks, iou, _, obj = dec.predict_masks(
        image_embeddings=feats["image_embed"],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        repeat_image=False,
        high_res_features=list(feats["high_res_feats"]),
    )
    stability = dec._get_stability_scores(masks[:, 0:1])
    return {
        "sparse": sparse,
        "dense": dense,
        "all_masks": masks,
        "all_iou": iou,
        "object_score": obj,
        "stability": stability,
    }


def sammed_small() -> dict:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    c = SAMMED_SMALL
    d, dec = c["prompt_dim"], c["decoder"]
    grid = c["img_size"] // c["patch_size"]
    enc = ImageEncoderViT(
        depth=c["depth"],
        embed_dim=c["embed_dim"],
        img_size=c["img_size"],
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=c["num_heads"],
        patch_size=c["patch_size"],
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=c["global_attn_indexes"],
        window_size=c["window_size"],
        out_chans=d,
        adapter_train=True,
    ).eval()
    pe = PromptEncoder(
        embed_dim=d,
        image_embedding_size=(grid, grid),
        input_image_size=(c["img_size"], c["img_size"]),
        mask_in_chans=c["mask_in_chans"],
    ).eval()
    md = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=dec["depth"], embedding_dim=d, mlp_dim=dec["mlp_dim"], num_heads=dec["num_heads"]
        ),
        transformer_dim=d,
        iou_head_depth=3,
        iou_head_hidden_dim=dec["iou_head_hidden_dim"],
    ).eval()
    for i, m in enumerate((enc, pe, md)):
        half_exact(m, seed=10 + i)
    g = torch.Generator().manual_seed(2)
    size = c["img_size"]
    image = half(torch.randn(1, 3, size, size, generator=g))
    inputs = {"image": image, **prompts(size, g, 4 * grid)}
    outputs = {}
    with torch.no_grad():
        emb = enc(image)
        for case, kinds in CASES.items():
            points = (inputs["point_coords"], inputs["point_labels"]) if "point" in kinds else None
            sparse, dense = pe(
                points=points,
                boxes=inputs["box"] if "box" in kinds else None,
                masks=inputs["mask_input"] if "mask" in kinds else None,
            )
            for multimask in (True, False):
                low, iou = md(
                    image_embeddings=emb,
                    image_pe=pe.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask,
                )
                outputs[f"{case}/multimask={multimask}"] = {"low_res_masks": low, "iou": iou}
            outputs[case] = {"sparse": sparse, "dense": dense}
    sd = {}
    for prefix, m in (("image_encoder.", enc), ("prompt_encoder.", pe), ("mask_decoder.", md)):
        sd.update({prefix + k: v.half() for k, v in m.state_dict().items()})
    return {
        "config": c,
        "state_dict": sd,
        "inputs": {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()},
        "image_embeddings": emb,
        "outputs": outputs,
    }


def shapes(sd) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sd.items()}


def full_size_keys() -> dict[str, dict[str, list[int]]]:
    """Key -> shape of every released checkpoint's ``model`` dict, from the official configs."""
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    out = {}
    for version, prefix in (("sam2.1", "sam2.1_hiera_"), ("sam2", "sam2_hiera_")):
        for size in ("t", "s", "b+", "l"):
            cfg = compose(config_name=f"configs/{version}/{prefix}{size}.yaml")
            OmegaConf.resolve(cfg)
            model = instantiate(cfg.model, _recursive_=True)  # CPU: Hiera's init calls .item()
            out[f"{prefix}{size}"] = shapes(model.state_dict())
            del model
    from segment_anything.build_sam import build_sam_vit_b

    with torch.device("meta"):
        sam = build_sam_vit_b(argparse.Namespace(image_size=256, sam_checkpoint=None, encoder_adapter=True))
    out["sam-med2d_b"] = shapes(sam.state_dict())
    return out


def compact(obj):
    """Own storage for every tensor (a saved view would carry its whole base tensor)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone().contiguous()
    if isinstance(obj, dict):
        return {k: compact(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [compact(v) for v in obj]
    return obj


def hiera_plans() -> dict[str, list[dict]]:
    """Per released size, each official Hiera block's dim, dim_out, heads, query stride and window."""
    import sam2  # noqa: F401  (its import registers the config module with hydra)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    out = {}
    for size in ("t", "s", "b+", "l"):
        cfg = compose(config_name=f"configs/sam2.1/sam2.1_hiera_{size}.yaml")
        OmegaConf.resolve(cfg)
        trunk = instantiate(cfg.model.image_encoder.trunk)
        neck = cfg.model.image_encoder.neck
        out[size] = {
            "blocks": [
                {
                    "dim": b.dim,
                    "dim_out": b.dim_out,
                    "num_heads": b.attn.num_heads,
                    "q_stride": b.q_stride[0] if b.q_stride else None,
                    "window_size": b.window_size,
                }
                for b in trunk.blocks
            ],
            "neck": {
                "fpn_top_down_levels": list(neck.fpn_top_down_levels),
                "fpn_interp_model": neck.fpn_interp_model,
                "scalp": cfg.model.image_encoder.scalp,
            },
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only-plans", action="store_true", help="only write released_hiera_plans.json")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "released_hiera_plans.json").write_text(json.dumps(hiera_plans(), separators=(",", ":")) + "\n")
    if args.only_plans:
        return
    for name, make in (("sam2_small.pt.gz", sam2_small), ("sam_med2d_small.pt.gz", sammed_small)):
        buf = io.BytesIO()
        torch.save(compact(make()), buf)
        (OUT / name).write_bytes(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))
    keys = json.dumps(full_size_keys(), separators=(",", ":")).encode()
    (OUT / "released_keys.json.gz").write_bytes(gzip.compress(keys, compresslevel=9, mtime=0))
    for p in sorted(OUT.iterdir()):
        print(p.name, p.stat().st_size)


if __name__ == "__main__":
    main()
