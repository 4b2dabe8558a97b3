"""Fine-tune imis-lite's decoder to propagate: the neighbour slice's mask (logits + box) -> this slice.

An experiment for issue 17 (docs/volumes.md, fourth round), not a shipped model. Training pairs come
from the Colin27 AAL structures that are neither held out (HELDOUT_AAL_STRUCTURES) nor among the eight
validation structures (propagation_grid.TRAIN_STRUCTURES, the ones the rules were tuned on): for a
structure slice j and a neighbour k = j +- 1 (sometimes past the structure's end, whose target is
empty), the prompt is what a walk gives slice k (grown box + logits of slice j's mask) from one of: the
base model's tight-box prediction of slice j, the ground truth of slice j as +-8 logits, or that
prediction shifted by up to 3 px and offset by up to +-3 logits (a drifted walk). Loss: the trainer's
(focal 20 + Dice + IoU MSE). ``--parts all`` trains the prompt encoder and the mask decoder, ``light``
only the mask-prompt path, the output tokens, the first hypernetwork, the IoU head and the upscaling.

Validation every ``--eval-every`` steps: the box and click walks of the eight validation structures
(seed from the base model, walk from the tuned decoder, each seed kind's default stop rules, and without
stops), 3D Dice; the best state is saved to OUT/best.pt. Needs bf16 embeddings of every axial slice
(benchmarks/encode_slices.py --axis z --precision bf16 --out runs/emb/bf16).

    PYTHONPATH=src:benchmarks python benchmarks/propagation_finetune.py --out runs/propagation-ft
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, "benchmarks")
import volume_heldout as vh  # noqa: E402
from propagation_grid import TRAIN_STRUCTURES as VAL_STRUCTURES  # noqa: E402

from imis.data.brain_templates import heldout_aal_labels, read_aal_names  # noqa: E402
from imis.io import read_image  # noqa: E402
from imis.models import load_model  # noqa: E402
from imis.models.fast_decode import ImageSideCache  # noqa: E402
from imis.models.interactive import Embedding, InteractiveModel, PromptSpec  # noqa: E402
from imis.models.preprocess import Frame, logits_to_native  # noqa: E402
from imis.prompts import tight_box  # noqa: E402
from imis.session.propagation import PropagationRules, default_rules, next_prompt  # noqa: E402
from imis.train.loss import mask_loss  # noqa: E402

T = Path("/usr/share/mricron/templates")


def lowres_target(gt: np.ndarray, frame: Frame) -> torch.Tensor:
    h, w = frame.valid_hw
    t = F.interpolate(torch.from_numpy(gt.astype(np.float32))[None, None], size=(h, w), mode="nearest")[0, 0]
    out = torch.zeros(frame.input_size, frame.input_size)
    out[:h, :w] = t
    return out


def trainable(net, parts: str):
    for p in net.parameters():
        p.requires_grad_(False)
    names = []
    for n, p in net.named_parameters():
        ok = False
        if parts == "all":
            ok = n.startswith("mask_decoder.") or n.startswith("prompt_encoder.")
        elif parts == "light":
            ok = n.startswith("prompt_encoder.mask_downscaling") or any(
                n.startswith(f"mask_decoder.{s}")
                for s in (
                    "mask_tokens",
                    "iou_token",
                    "output_hypernetworks_mlps.0.",
                    "iou_prediction_head",
                    "output_upscaling",
                )
            )
        if ok:
            p.requires_grad_(True)
            names.append(n)
    return [p for p in net.parameters() if p.requires_grad], names


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--emb-dir", type=Path, default=Path("runs/emb/bf16"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--parts", default="all")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--end-share", type=float, default=0.1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val", default=",".join(VAL_STRUCTURES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    image = read_image(T / "ch2.nii.gz").array
    aal = read_image(T / "aal.nii.gz").array
    names = read_aal_names(T / "aal.nii.txt")
    held = set(heldout_aal_labels(names))
    val_names = args.val.split(",")
    by_name = {n: v for v, n in names.items()}
    val = [by_name[n] for n in val_names]
    train_vals = [v for v in names if v not in held and v not in val and (aal == v).any()]
    print(f"train structures {len(train_vals)}, val {len(val)}", file=sys.stderr)

    base = load_model("imis-lite")
    feats, frame = {}, None
    for k in range(image.shape[0]):
        d = torch.load(args.emb_dir / f"z{k:03d}.pt", weights_only=True)
        feats[k] = d["features"]
        frame = Frame(*d["frame"])

    # the base model's tight-box prediction on every (structure, slice): the realistic "previous mask"
    t0 = time.perf_counter()
    pairs, oracle = [], {}
    for k in range(image.shape[0]):
        emb = Embedding(feats[k], frame)
        for v in np.unique(aal[k]):
            v = int(v)
            if v == 0 or v not in train_vals:
                continue
            gt = aal[k] == v
            if gt.sum() < 4:
                continue
            p = base.decode(emb, PromptSpec(box=np.asarray(tight_box(gt), np.float32)))
            oracle[(v, k)] = p.low_res_logits.half()
            pairs.append((v, k))
    print(f"oracle logits {len(pairs)} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    ends = [
        (v, k, d)
        for v, k in pairs
        for d in (-1, 1)
        if 0 <= k + d < image.shape[0] and not (aal[k + d] == v).any()
    ]
    print(f"end pairs {len(ends)}", file=sys.stderr)

    net = copy.deepcopy(base.net)
    prop = InteractiveModel(
        "imis-lite-prop",
        net,
        base.preprocess,
        base.multimask,
        base.prompt_types,
        base.license,
        spec=base.spec,
    )
    params, pnames = trainable(net, args.parts)
    print(f"trainable {sum(p.numel() for p in params)} in {len(pnames)} tensors", file=sys.stderr)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rules = PropagationRules()

    def sample():
        while True:
            if rng.random() < args.end_share:
                v, j, d = rng.choice(ends)
            else:
                v, j = rng.choice(pairs)
                d = rng.choice((-1, 1))
            k = j + d
            if not 0 <= k < image.shape[0]:
                continue
            r = rng.random()
            if r < 0.5:
                lg = oracle[(v, j)].float()
            elif r < 0.7:
                lg = (lowres_target(aal[j] == v, frame)[None, None] * 2 - 1) * 8
            else:
                lg = oracle[(v, j)].float()
                lg = torch.roll(lg, shifts=(rng.randint(-3, 3), rng.randint(-3, 3)), dims=(2, 3))
                lg = lg + rng.uniform(-3, 3)
            prev = logits_to_native(lg, frame)[0, 0].numpy() > 0
            if prev.sum() < 2:
                continue
            spec = next_prompt(prev, lg, rules)
            box = frame.to_input(np.asarray(spec.box, np.float64).reshape(2, 2)).reshape(4)
            return feats[k][0], torch.from_numpy(box), lg[0], lowres_target(aal[k] == v, frame)

    def validate(step: int) -> dict:
        net.eval()
        prop.image_sides = ImageSideCache()
        slices = vh.Slices(base, image, args.emb_dir, 0)
        for k, f in feats.items():
            slices.cache[k] = Embedding(f, frame)
        out = {"step": step}
        for kind in ("box", "click"):
            dices = {}
            for v, name in zip(val, val_names, strict=True):
                gt3 = aal == v
                ax, seed, _ = vh.largest_section(gt3, vh.SPACING_ZYX, vh.seed_axes("z"))
                pred, _ = vh.seed_prediction(base, slices[seed], gt3[seed], kind, default_rules(kind))
                rec = {
                    "seed": seed,
                    "axis": "z",
                    kind: {
                        "seed_mask": vh._pack(pred.mask),
                        "seed_quality": pred.quality,
                        "down": vh.record_walk(prop, slices, gt3, pred, seed, -1, rules, 4),
                        "up": vh.record_walk(prop, slices, gt3, pred, seed, 1, rules, 4),
                    },
                }
                vol, _ = vh.assemble(rec, kind, gt3.shape, default_rules(kind))
                vol_nc, _ = vh.assemble(
                    rec,
                    kind,
                    gt3.shape,
                    PropagationRules(
                        min_quality=0.0, max_growth=float("inf"), min_seed_ratio=0.0, max_reach=float("inf")
                    ),
                    charge=False,
                )
                dices[name] = (
                    round(2 * float((vol & gt3).sum()) / (vol.sum() + gt3.sum()), 4),
                    round(2 * float((vol_nc & gt3).sum()) / (vol_nc.sum() + gt3.sum()), 4),
                )
            out[kind] = round(float(np.mean([d[0] for d in dices.values()])), 4)
            out[kind + "_nostop"] = round(float(np.mean([d[1] for d in dices.values()])), 4)
            out[kind + "_per"] = dices
        net.train()
        return out

    log = args.out / "log.jsonl"
    v0 = validate(0)
    print(json.dumps(v0), flush=True)
    log.open("a").write(json.dumps(v0) + "\n")
    best = v0["box"] + v0["click"]
    net.train()
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        items = [sample() for _ in range(args.batch)]
        f = torch.stack([i[0] for i in items])
        boxes = torch.stack([i[1] for i in items])
        masks = torch.stack([i[2] for i in items])
        tgt = torch.stack([i[3] for i in items])
        out = net.decode(f, boxes=boxes, masks=masks, multimask_output=False)
        terms = mask_loss(out["low_res_masks"][:, 0], out["iou_pred"][:, 0], tgt)
        loss = terms.total.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(
                f"step {step} loss {loss.item():.4f} dice {terms.dice.mean().item():.3f} "
                f"{(time.perf_counter() - t0) / step:.2f} s/step",
                file=sys.stderr,
                flush=True,
            )
        if step % args.eval_every == 0 or step == args.steps:
            v = validate(step)
            print(json.dumps(v), flush=True)
            log.open("a").write(json.dumps(v) + "\n")
            if v["box"] + v["click"] > best:
                best = v["box"] + v["click"]
                torch.save(
                    {n: p.detach().clone() for n, p in net.named_parameters() if n in pnames},
                    args.out / "best.pt",
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
