"""ONNX vs PyTorch parity report: mask IoU and logits max abs difference per model and prompt.

Exports litemedsam and imis-lite (real weights) and sam-vit-b / imis-net-b built from the parity
fixtures' small configs, opens each export on the ONNX Runtime backend, and compares it with the
PyTorch model on btcv-demo ABD_001_100 (box, click, clicks+box, text for text models; each also with
the previous mask fed back, and through the ONNX embedding). Prints one JSON line: per model the
minimum IoU, the maximum logits difference at native resolution and the embedding difference.
The assertions live in tests/models/test_onnx_parity.py; this script reports the numbers.
Run: `PYTHONPATH=src python benchmarks/onnx_parity.py`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))  # the tests' builders of the small fixture models


def summarise(report: dict) -> dict:
    cases = {k: v for k, v in report.items() if k != "embedding"}
    ious = [v[k] for v in cases.values() for k in ("iou", "iou_with_mask", "iou_onnx_embedding")]
    diffs = [v[k] for v in cases.values() for k in ("max_abs_diff", "max_abs_diff_with_mask")]
    return {
        "min_mask_iou": round(min(ious), 5),
        "max_logits_abs_diff": float(f"{max(diffs):.3g}"),
        "embedding_max_abs_diff": float(f"{report['embedding']['max_abs_diff']:.3g}"),
        "cases": sorted(cases),
    }


def main() -> None:
    from onnx_helpers import compare, small_imis_model, small_sam_model

    from imis.data.formats import imed
    from imis.models import load_model
    from imis.models.onnx.export import export_onnx
    from imis.models.onnx.runtime import load_onnx_model

    shared = ROOT.parent / "shared"
    image = imed.read_image(shared / "data/btcv-demo/image/ABD_001_100.png")
    parity = shared / "fixtures" / "parity"
    models = {
        "litemedsam": lambda: load_model("litemedsam"),
        "imis-lite": lambda: load_model("imis-lite"),
        "sam-vit-b (small fixture config)": lambda: small_sam_model(
            torch.load(parity / "sam_small.pt", weights_only=False)
        ),
        "imis-net-b (small fixture config)": lambda: small_imis_model(
            torch.load(parity / "imisnet_small.pt", weights_only=False)
        ),
    }
    res = {"benchmark": "onnx_parity", "image": "btcv-demo ABD_001_100"}
    for label, make in models.items():
        model = make()
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, tmp)
            text_fn = model.text_embedding if "text" in model.prompt_types else None
            onnx_model = load_onnx_model(tmp, model.name, text_fn=text_fn)
            res[label] = summarise(compare(model, onnx_model, image, text="text" in model.prompt_types))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
