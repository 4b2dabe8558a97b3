"""ViT-B image encoder at 1024: ours vs the official Segment Anything module on identical weights.

Prints one JSON line: median seconds of each (float32), their ratio and max abs difference, and our
bfloat16 autocast path (time ratio against official float32, IoU of the masks decoded from its
embedding against float32 ones); the same encoder exported to ONNX and run by ONNX Runtime (fp32, and
int8 weights), timed in the same interleaved loop; and the imis-lite encoder (256 px) in PyTorch vs
ONNX Runtime fp32/int8 (``lite_*``). Run: `.venv/bin/python benchmarks/encoder.py [--reps 3]`
(`--skip-vit`: the imis-lite rows only). Needs `pip install --no-deps segment-anything==1.0` in the
environment (benchmarks only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _official_sam import official_sam


def cpu_has_fast_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def real_input(shared: Path) -> torch.Tensor:
    from imis.data.formats import imed
    from imis.models.preprocess import Preprocess, prepare_image

    img = imed.read_image(shared / "data/btcv-demo/image/ABD_001_100.png")
    x, _ = prepare_image(img, Preprocess(1024, "longest_side", "bilinear", "imagenet", False))
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-vit", action="store_true", help="only the imis-lite rows")
    ap.add_argument("--skip-bf16", action="store_true", help="no bf16 row (emulated bf16 is slow)")
    args = ap.parse_args()
    if args.skip_vit:
        print(json.dumps({"benchmark": "encoder_imis_lite_256", **lite_rows(args)}))
        return
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sa = official_sam()
    from imis.models.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    kw = dict(
        depth=12,
        embed_dim=768,
        img_size=1024,
        mlp_ratio=4,
        num_heads=12,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=[2, 5, 8, 11],
        window_size=14,
        out_chans=256,
    )
    official = (
        sa.modeling.ImageEncoderViT(norm_layer=lambda c: torch.nn.LayerNorm(c, eps=1e-6), **kw).eval().to(dev)
    )
    # random rel-pos tables (zeros at init would hide rel-pos bugs and costs)
    with torch.no_grad():
        for name, p in official.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.02)
    ours = ImageEncoderViT(**kw).eval().to(dev)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = real_input(args.shared).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sessions = onnx_sessions(ours, 1024, args.threads) if dev.type == "cpu" else {}
    feeds = {"image": x.cpu().numpy()}
    with torch.inference_mode():
        ref = official(x)
        got = ours(x)
        sync()
        max_diff = float((ref - got).abs().max())
        got_onnx = {k: torch.from_numpy(s.run(None, feeds)[0]) for k, s in sessions.items()}
        t_off, t_ours = [], []
        t_onnx = {k: [] for k in sessions}
        for _ in range(args.reps):  # interleaved so drift affects all alike
            t_off += timed(lambda: (official(x), sync()), 1)
            t_ours += timed(lambda: (ours(x), sync()), 1)
            for k, sess in sessions.items():
                t_onnx[k] += timed(lambda sess=sess: sess.run(None, feeds), 1)
        got_bf, t_bf = got, [float("nan")]
        if not args.skip_bf16:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                got_bf = ours(x).float()
                t_bf = timed(lambda: (ours(x), sync()), args.reps)
    bf16_iou = decoded_mask_iou(got, got_bf, args.shared)
    med_off, med_ours, med_bf = (statistics.median(t) for t in (t_off, t_ours, t_bf))
    onnx_res = {}
    for k in sessions:
        med = statistics.median(t_onnx[k])
        onnx_res[f"onnx_{k}_s"] = round(med, 3)
        onnx_res[f"ratio_onnx_{k}_vs_official_fp32"] = round(med / med_off, 3)
        onnx_res[f"onnx_{k}_max_abs_diff"] = float((got_onnx[k] - got.cpu()).abs().max())
        onnx_res[f"onnx_{k}_mask_iou_vs_fp32"] = round(decoded_mask_iou(got, got_onnx[k], args.shared), 4)
    print(
        json.dumps(
            {
                "benchmark": "encoder_vit_b_1024",
                "device": str(dev)
                if dev.type != "cpu"
                else f"cpu x{args.threads} ({platform.processor() or platform.machine()})",
                "torch": torch.__version__,
                "official_fp32_s": round(med_off, 3),
                "ours_fp32_s": round(med_ours, 3),
                "ratio_fp32": round(med_ours / med_off, 3),
                "max_abs_diff_fp32": max_diff,
                "ours_bf16_s": round(med_bf, 3),
                "ratio_bf16_vs_official_fp32": round(med_bf / med_off, 3),
                "bf16_mask_iou_vs_fp32": round(bf16_iou, 4),
                "cpu_has_fast_bf16": cpu_has_fast_bf16() if dev.type == "cpu" else None,
                **onnx_res,
                "reps": args.reps,
                **lite_rows(args),
            }
        )
    )


def onnx_sessions(encoder: torch.nn.Module, size: int, threads: int) -> dict:
    """The encoder exported to ONNX (fp32 and int8 weights), as ONNX Runtime sessions with ``threads``."""
    import tempfile

    import onnxruntime as ort

    from imis.models.onnx.export import ENCODER_INT8_FILE, export_encoder, quantize_encoder
    from imis.models.onnx.runtime import session_options

    tmp = Path(tempfile.mkdtemp(prefix="imis-enc-onnx-"))
    export_encoder(encoder.cpu().float(), size, tmp / "encoder.onnx")
    quantize_encoder(tmp / "encoder.onnx", tmp / ENCODER_INT8_FILE)
    opts = session_options(threads)
    files = {"fp32": "encoder.onnx", "int8": ENCODER_INT8_FILE}
    return {
        k: ort.InferenceSession(str(tmp / f), opts, providers=["CPUExecutionProvider"])
        for k, f in files.items()
    }


def lite_rows(args) -> dict:
    """imis-lite's encoder (256 px, real weights) in PyTorch vs ONNX Runtime, interleaved; {} without it."""
    from imis.data.formats import imed
    from imis.models import load_model
    from imis.models.preprocess import prepare_image
    from imis.models.registry import default_model_name

    if default_model_name() != "imis-lite":
        return {}
    model = load_model("imis-lite")
    img = imed.read_image(args.shared / "data/btcv-demo/image/ABD_001_100.png")
    x, _ = prepare_image(img, model.preprocess)
    enc = model.net.image_encoder
    sessions = onnx_sessions(enc, model.preprocess.input_size, args.threads)
    feeds = {"image": x.numpy()}
    times = {k: [] for k in ("torch", "torch_bf16", *sessions)}

    def enc_bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return enc(x)

    with torch.inference_mode():
        ref = enc(x)
        diffs = {k: float(np.abs(s.run(None, feeds)[0] - ref.numpy()).max()) for k, s in sessions.items()}
        bf16_diff = float((enc_bf16().float() - ref).abs().max())
        for _ in range(max(args.reps, 5)):
            times["torch"] += timed(lambda: enc(x), 1)
            times["torch_bf16"] += timed(enc_bf16, 1)
            for k, sess in sessions.items():
                times[k] += timed(lambda sess=sess: sess.run(None, feeds), 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "lite_torch_fp32_s": round(med["torch"], 3),
        "lite_torch_bf16_s": round(med["torch_bf16"], 3),
        "lite_ratio_torch_bf16_vs_torch": round(med["torch_bf16"] / med["torch"], 3),
        "lite_torch_bf16_max_abs_diff": bf16_diff,
        "cpu_has_fast_bf16": cpu_has_fast_bf16(),
    }
    for k in sessions:
        out[f"lite_onnx_{k}_s"] = round(med[k], 3)
        out[f"lite_ratio_onnx_{k}_vs_torch"] = round(med[k] / med["torch"], 3)
        out[f"lite_onnx_{k}_max_abs_diff"] = diffs[k]
    return out


def decoded_mask_iou(emb32: torch.Tensor, emb16: torch.Tensor, shared: Path) -> float:
    """IoU between masks decoded (random SAM-ViT-B decoder, liver box) from the two embeddings."""
    from imis.models.build import build_sam_vit

    torch.manual_seed(1)
    net = build_sam_vit().eval()
    box = torch.tensor([[62.0, 193.0, 313.0, 385.0]]) * 2  # the liver box of ABD_001_100 in the 1024 frame
    with torch.inference_mode():
        a = net.decode(emb32.cpu(), boxes=box, multimask_output=False)["low_res_masks"] > 0
        b = net.decode(emb16.cpu(), boxes=box, multimask_output=False)["low_res_masks"] > 0
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


if __name__ == "__main__":
    main()
