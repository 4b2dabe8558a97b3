"""The imis-paper protocol, one test per rule of the IMIS-Bench reference's test loop.

The rules (reference report, shared/reference/imis-bench-reference.md §4.1, §4.3, §5): the first click is
drawn among the 50% of foreground pixels nearest the centroid; the box is the tight box; each later round
feeds only the newest click, drawn uniformly (with replacement) in the error region, plus the previous
low-res logits as the mask prompt; the mask is the best of the multimask outputs by predicted IoU,
thresholded at sigmoid > 0.5; every round 1..N is scored (no early stop); Dice is 2|P∩G|/(|P|+|G|+1e-8),
averaged over each image's masks, then over images.

LiteMedSAM (real weights) runs on the first two btcv-demo test images (17 masks). Its decode and its
network's decode are wrapped to record every prompt, every raw decoder output and every prediction.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from imis.bench.config import BenchConfig
from imis.bench.inputs import load_data
from imis.bench.protocols import PAPER_KINDS, paper_correction, paper_dice_iou, paper_mask
from imis.bench.records import read_rows
from imis.bench.runner import run_bench
from imis.errors import ImisError
from imis.prompts import centroid_candidates, load_prompts, tight_box

N_ROUNDS = 3


class Recording:
    """The real LiteMedSAM with its decode (and its network's decode) recorded."""

    def __init__(self, model) -> None:
        self.model, self.name, self.prompt_types = model, "lite", model.prompt_types
        self.calls: list[dict] = []  # per model decode: spec, prediction, raw network outputs
        net = model.net
        original = type(net).decode

        def net_decode(*args, **kwargs):
            out = original(net, *args, **kwargs)
            self.calls[-1]["net"].append((kwargs.get("multimask_output"), out))
            return out

        net.decode = net_decode  # an instance attribute: this model object only
        # the plain decoder, so that its raw outputs are recorded (the split decoder gives the same
        # masks: tests/models/test_fast_decode.py)
        model.image_sides = None

    def encode(self, image):
        return self.model.encode(image)

    def decode(self, emb, spec, threshold=0.0, multimask=None):
        self.calls.append({"spec": spec, "net": [], "multimask": multimask})
        pred = self.model.decode(emb, spec, threshold, multimask)
        self.calls[-1]["pred"] = pred
        return pred


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, btcv_dir):
    from imis.bench.baselines import load_baseline
    from imis.models.registry import load_model

    try:
        lite = Recording(load_model("litemedsam"))  # its own instance: its network is wrapped
    except ImisError as exc:
        pytest.skip(f"LiteMedSAM weights not available: {exc}")
    models = {"lite": lite, "random-walker": load_baseline("random-walker")}
    out = tmp_path_factory.mktemp("paper")
    cfg = BenchConfig(
        models=("lite", "random-walker"),
        data=btcv_dir,
        protocol="imis-paper",
        seed=3,
        max_interactions=N_ROUNDS,
        limit_images=2,
        model_loader=models.__getitem__,
    )
    summary = run_bench(cfg, out, progress=False)
    _, images, _ = load_data(cfg)
    gts = {(im.image_id, t): m for im in images for t, m in im.masks.items()}
    prompts = load_prompts(out / "prompts.json", None)
    # the decodes in run order: per image, per target (prompt-file order), per decoded mode, rounds 1..N
    seqs: dict[tuple[str, str, str], list[dict]] = {}
    calls = iter(lite.calls)
    for rec in prompts["targets"]:
        if "skip_reason" in rec:
            continue
        for kind in ("paper:click", "paper:box"):  # LiteMedSAM takes no text
            seqs[(rec["image_id"], rec["target"], kind)] = [next(calls) for _ in range(N_ROUNDS)]
    assert next(calls, None) is None
    rows = read_rows(out / "predictions.jsonl")
    return {"summary": summary, "seqs": seqs, "gts": gts, "prompts": prompts, "rows": rows, "lite": lite}


def _rows(run, model="lite"):
    return {
        (r["image"], r["target"], r["kind"], r["k"]): r
        for r in run["rows"]
        if r["model"] == model and r["kind"] in PAPER_KINDS
    }


# --- rule 1: the first prompt ----------------------------------------------------------------------------
def test_first_click_is_drawn_among_the_half_nearest_the_centroid(paper_run):
    recs = {(r["image_id"], r["target"]): r for r in paper_run["prompts"]["targets"]}
    for (image, target, kind), seq in paper_run["seqs"].items():
        if kind != "paper:click":
            continue
        gt, spec = paper_run["gts"][(image, target)], seq[0]["spec"]
        assert spec.box is None and spec.text is None and spec.mask_logits is None
        assert spec.points.shape == (1, 2) and spec.labels.tolist() == [1]
        cand = {tuple(c) for c in centroid_candidates(gt, 0.5).tolist()}
        assert len(cand) == max(1, int(0.5 * gt.sum()))
        assert tuple(int(v) for v in spec.points[0]) in cand
        assert spec.points[0].tolist() == recs[(image, target)]["clicks"]["centroid"]


def test_first_box_is_the_tight_box_alone(paper_run):
    for (image, target, kind), seq in paper_run["seqs"].items():
        if kind == "paper:box":
            spec = seq[0]["spec"]
            assert spec.points is None and spec.text is None and spec.mask_logits is None
            assert spec.box.tolist() == list(tight_box(paper_run["gts"][(image, target)]))


# --- rule 2: correction clicks uniform in the error region -------------------------------------------------
def test_correction_clicks_lie_in_the_previous_error_with_its_sign(paper_run):
    n = 0
    for (image, target, _), seq in paper_run["seqs"].items():
        gt = paper_run["gts"][(image, target)]
        for prev, cur in zip(seq, seq[1:], strict=False):
            (x, y), label = (int(v) for v in cur["spec"].points[0]), int(cur["spec"].labels[0])
            err = paper_mask(prev["pred"].logits) ^ gt
            if err.any():
                assert err[y, x] and label == int(gt[y, x])  # 1 on a false negative, 0 on a false positive
                n += 1
            else:
                assert label == -1
    assert n > 50


def test_paper_correction_is_uniform_with_replacement():
    gt = np.zeros((6, 8), bool)
    gt[1:4, 1:4] = True  # 9 px
    pred = np.zeros_like(gt)
    pred[1:4, 2:6] = True  # FN: column 1 (3 px); FP: columns 4-5 (6 px)
    rng = np.random.default_rng(0)
    draws = [paper_correction(pred, gt, rng) for _ in range(3000)]
    counts = defaultdict(int)
    for (x, y), label in draws:
        assert (pred ^ gt)[y, x] and label == int(gt[y, x])
        counts[(x, y)] += 1
    assert len(counts) == 9  # every error pixel is drawn ...
    assert max(counts.values()) / min(counts.values()) < 1.5  # ... about equally often
    first = [xy for xy, _ in draws[:20]]
    assert len(set(first)) < len(first)  # with replacement: repeats happen
    # no error left: the reference's padding point, label -1
    xy, label = paper_correction(gt, gt, np.random.default_rng(1))
    assert label == -1 and 0 <= xy[0] < 8 and 0 <= xy[1] < 6


# --- rule 3: latest click + previous logits only -----------------------------------------------------------
def test_later_rounds_feed_only_the_newest_click_and_the_previous_logits(paper_run):
    for seq in paper_run["seqs"].values():
        for prev, cur in zip(seq, seq[1:], strict=False):
            spec = cur["spec"]
            assert spec.points.shape == (1, 2) and spec.labels.shape == (1,)
            assert spec.box is None and spec.text is None
            assert spec.mask_logits is not None
            assert torch.equal(spec.mask_logits, prev["pred"].low_res_logits)


# --- rule 4: multimask output, best predicted IoU -------------------------------------------------------------
def test_mask_is_the_multimask_output_with_the_best_predicted_iou(paper_run):
    for seq in paper_run["seqs"].values():
        for call in seq:
            assert call["multimask"] == "best_iou"
            [(multimask, out)] = call["net"]
            assert multimask is True and out["low_res_masks"].shape[1] == 3
            best = int(torch.argmax(out["iou_pred"][0]))
            torch.testing.assert_close(call["pred"].low_res_logits, out["low_res_masks"][:, best : best + 1])
            assert call["pred"].quality == pytest.approx(float(out["iou_pred"][0, best]))
    assert paper_run["lite"].model.multimask == "single"  # the model's own policy is left as it was


# --- rule 5: threshold and the reference's Dice ------------------------------------------------------------
def test_threshold_at_half_probability_and_reference_dice(paper_run):
    rows = _rows(paper_run)
    for (image, target, kind), seq in paper_run["seqs"].items():
        gt = paper_run["gts"][(image, target)]
        for k, call in enumerate(seq, start=1):
            logits = call["pred"].logits
            assert logits.shape == gt.shape  # scored at the label's native resolution
            mask = torch.sigmoid(torch.from_numpy(logits)).numpy() > 0.5
            np.testing.assert_array_equal(paper_mask(logits), mask)
            inter = np.logical_and(mask, gt).sum()
            want = 2 * inter / (mask.sum() + gt.sum() + 1e-8)
            row = rows[(image, target, kind, k)]
            assert row["dice"] == pytest.approx(want, abs=1e-12)
            assert (row["dice"], row["iou"]) == paper_dice_iou(mask, gt)


# --- rule 6: image-level averaging ------------------------------------------------------------------------
def test_image_avg_dice_is_the_mean_over_images_of_the_mean_over_their_masks(paper_run):
    res = paper_run["summary"]["results"]["lite"]
    for kind in ("paper:click", "paper:box"):
        for k in range(1, N_ROUNDS + 1):
            per_image = defaultdict(list)
            for (image, _, kd, kk), r in _rows(paper_run).items():
                if (kd, kk) == (kind, k):
                    per_image[image].append(r["dice"])
            assert len(per_image) == 2
            want = np.mean([np.mean(v) for v in per_image.values()])
            assert res[f"{kind}@{k}"]["dice_image"] == pytest.approx(want, abs=1e-12)
            assert res[f"{kind}@{k}"]["n_masks"] == 17


# --- rule 7: the number of interactions ----------------------------------------------------------------------
def test_every_round_is_decoded_and_scored_without_early_stop_or_noc(paper_run):
    rows = _rows(paper_run)
    assert len(paper_run["seqs"]) == 17 * 2
    for (image, target, kind), seq in paper_run["seqs"].items():
        assert len(seq) == N_ROUNDS
        assert [rows[(image, target, kind, k)]["status"] for k in range(1, N_ROUNDS + 1)] == ["ok"] * N_ROUNDS
    assert not any(r["kind"] == "noc" for r in paper_run["rows"])
    assert "lite" not in paper_run["summary"]["noc"]


# --- what the protocol cannot run is skipped with its reason -------------------------------------------------
def test_text_and_maskless_models_are_skipped_with_the_reason(paper_run):
    skipped = paper_run["summary"]["skipped"]
    assert skipped["lite | paper:text | model does not take text prompts"] == 17 * N_ROUNDS
    rw = [k for k in skipped if k.startswith("random-walker | paper:click")]
    assert rw and "mask prompt" in rw[0]
    assert "random-walker" not in paper_run["summary"]["results"]
    assert Path(paper_run["rows"][0]["model"])  # rows were written


def test_paper_mask_is_the_float32_sigmoid_threshold():
    logits = np.array([[-1.0, 0.0, 1e-9, 1e-6, 3.0]], dtype=np.float32)
    assert paper_mask(logits).tolist() == [[False, False, False, True, True]]
