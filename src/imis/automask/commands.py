"""The `imis automask` command (registered by :mod:`imis.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imis.automask.settings import NMS_SCORES, NO_GT, AutomaskSettings
from imis.cli_options import add_executor_arguments, add_progress_argument, positive_int
from imis.runtime_options import add_model_arguments, add_runtime_arguments

__all__ = ["cmd_automask", "register_automask_command"]

DESCRIPTION = """\
Generate the dense "interactive masks" of IMed-361M (paper §3.2) for the images of a dataset folder in
the IMed-361M layout (`imis prepare` writes one): masks of everything a promptable model finds, cleaned
against the ground truth, written as imask/x___<stem>.npy id maps exactly as the released dataset holds
them. `imis train` and `imis stats` read them like the released ones.
"""

EPILOG = """\
what it does, per image (the image is encoded ONCE):
  1. a points-per-side x points-per-side grid of positive clicks (cell centres), decoded against the one
     cached embedding in batches; each click scored on the model's mask outputs (--outputs)
  2. keep outputs with predicted IoU >= --iou-thresh and stability >= --stability (SAM's score: IoU of
     the mask at logit +1 and -1); only these masks are computed
  3. click consensus (--support): among the other clicks inside a mask, the fraction whose own mask
     matches it (IoU >= 0.7), counted as agreeing / (inside + 1); masks under --support dropped
  4. drop masks over --max-area of the image; NMS: a mask whose IoU with a kept mask of higher
     --nms-score exceeds --nms is dropped (--nms-kind mask: mask IoU, the paper; box: SAM's generator)
  5. ground-truth QC (skipped with --no-gt):
     - a GT label with several connected regions replaces the generated masks lying >= 50% inside it
     - a single-connected GT region: a generated mask whose box overlaps the GT box by more than 95%
       (box IoU) stands for it; otherwise the GT region replaces the masks lying >= 50% inside it
  6. opening then closing of every generated mask (specks off, holes filled); masks under --min-area
     of the image dropped; one id map, larger masks first and smaller ones on top, ids 1..K, 0 = none

defaults: the paper's (IoU 0.85, stability 0.95, no consensus filter, NMS on predicted IoU, masks
  >= 0.5% of the image) with GT QC; with --no-gt ("segment everything", no GT to put small organs
  back) those chosen on btcv-demo train for imis-lite: IoU 0.5, stability 0.6, support 0.5, NMS on
  support, masks >= 0.05% of the image. Any option given on the command line wins.

files written in DATASET:
  imask/x___<stem>.npy                int64 (H, W, 1) id map (the released IMed-361M format)
  automask/records/<stem>.json        per id: source model|gt, predicted IoU, stability, click, area
  automask/settings.json              settings, model, weights digest
  dataset.json                        each processed entry gains "imask": "imask/x___<stem>.npy"

resuming: rerun the same command; finished images are skipped, a killed run's last image is redone
(files are written through temporary files): the result is byte-identical to an uninterrupted run.
Other settings over existing imasks, or released imasks, need --overwrite. A broken image is reported
with the file and cause while the others go on; the exit status is then 1.

examples:
  imis automask datasets/heart
  imis automask datasets/heart --split train --workers 4
  imis automask ../shared/data/btcv-copy --no-gt --points-per-side 16 --overwrite
  imis automask datasets/liver --model sam-vit-b --checkpoint sam_vit_b_01ec64.pth --outputs multimask
  imis automask datasets/ct --backend onnx --precision int8   # ONNX Runtime encoder, PyTorch grid decoder
  RAY_ADDRESS=auto imis automask /shared/datasets/lung --executor ray --workers 64 --device cuda --gpus 0.25
"""


def register_automask_command(sub) -> None:
    p = sub.add_parser(
        "automask",
        help="generate the dense interactive masks (imask/) of a dataset (paper §3.2)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dataset", type=Path, metavar="DATASET", help="dataset folder (dataset.json, image/, label/)"
    )
    p.add_argument(
        "--split", choices=["train", "test", "all"], default="all", help="entries to process (default all)"
    )
    add_model_arguments(p)
    g = p.add_argument_group("generation (paper defaults)")
    g.add_argument(
        "--points-per-side", type=positive_int, default=32, help="click grid side (default 32: 1024 clicks)"
    )
    _add_no_gt_defaulted_arguments(g)
    g.add_argument("--nms", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    g.add_argument(
        "--nms-kind", choices=["mask", "box"], default="mask", help="IoU of masks or boxes (default mask)"
    )
    g.add_argument(
        "--max-area", type=float, default=0.8, help="drop masks over this image fraction (default 0.8)"
    )
    g.add_argument(
        "--outputs",
        choices=["auto", "single", "multimask", "all"],
        default="auto",
        help="mask outputs scored per click: multimask (SAM's 3), single, all 4; auto: the model's rule",
    )
    g.add_argument(
        "--batch-size", type=positive_int, default=16, help="clicks decoded per batch (default 16)"
    )
    q = p.add_argument_group("quality control")
    q.add_argument("--no-gt", action="store_true", help="no ground-truth QC ('segment everything')")
    q.add_argument(
        "--box-overlap", type=float, default=0.95, help="GT box IoU for a generated mask to stand (0.95)"
    )
    q.add_argument(
        "--morphology", type=int, default=1, help="opening/closing iterations; 0 disables (default 1)"
    )
    r = p.add_argument_group("execution")
    add_executor_arguments(r, "local processes, or Ray actors (default 1 / all CPUs)")
    # precision auto: bf16 autocast of the encoder where the CPU/GPU has bf16 units (the grid decoder
    # is the PyTorch one on either backend; see imis.automask.loading)
    add_runtime_arguments(
        r,
        default_backend="torch",
        default_precision="auto",
        device_help="torch device of each worker (cpu, cuda)",
    )
    r.add_argument(
        "--gpus", type=float, default=0.0, help="GPUs per Ray actor (e.g. 0.25: four actors per GPU)"
    )
    r.add_argument("--threads", type=positive_int, default=None, help="torch threads per worker")
    r.add_argument("--overwrite", action="store_true", help="regenerate finished and released imasks")
    add_progress_argument(r)
    p.set_defaults(func=cmd_automask)


# The options whose default depends on --no-gt: flag, settings field, type or choices, what it does.
# Left at None on the command line, so that cmd_automask can tell "not given" (the mode's default) from
# a value given; the defaults in the help are read from AutomaskSettings and NO_GT, never restated.
NO_GT_DEFAULTED = (
    ("--iou-thresh", "iou_thresh", float, "keep predicted IoU >= this"),
    ("--stability", "stability_thresh", float, "keep stability >= this; 0 disables"),
    ("--support", "support_thresh", float, "keep click consensus >= this; 0 disables"),
    (
        "--nms-score",
        "nms_score",
        NMS_SCORES,
        "NMS keeps the highest predicted IoU or click consensus first",
    ),
    ("--min-area", "min_area", float, "drop masks under this fraction"),
)


# Settings whose option has the field's name (--points-per-side -> points_per_side) and one default.
SAME_NAMED_SETTINGS = (
    "points_per_side",
    "nms",
    "nms_kind",
    "max_area",
    "outputs",
    "box_overlap",
    "morphology",
    "batch_size",
)


def _add_no_gt_defaulted_arguments(group) -> None:
    """The NO_GT_DEFAULTED options, each with its paper default and its --no-gt default in the help."""
    for flag, field_name, kind, what in NO_GT_DEFAULTED:
        paper = AutomaskSettings.__dataclass_fields__[field_name].default
        typed = {"choices": kind} if isinstance(kind, tuple) else {"type": kind}
        help_text = f"{what} (default {paper}; --no-gt {NO_GT[field_name]})"
        group.add_argument(flag, default=None, help=help_text, **typed)


def settings_from_args(args: argparse.Namespace) -> AutomaskSettings:
    """The run's settings: the options given, the others at the paper's defaults or, with --no-gt, at
    the segment-everything ones."""
    chosen = {
        field_name: getattr(args, flag[2:].replace("-", "_")) for flag, field_name, *_ in NO_GT_DEFAULTED
    }
    common = {name: getattr(args, name) for name in SAME_NAMED_SETTINGS}
    if args.no_gt:
        return AutomaskSettings.segment_everything(**chosen, **common)
    return AutomaskSettings(**{k: v for k, v in chosen.items() if v is not None}, **common)


def cmd_automask(args: argparse.Namespace) -> int:
    from imis.automask.loading import runtime_tag
    from imis.automask.run import run_automask
    from imis.console import print_table
    from imis.models.registry import default_model_name

    settings = settings_from_args(args)
    model = args.model or ("litemedsam" if args.checkpoint else default_model_name())
    runtime_tag(model, args.backend, args.precision, args.device)  # bad combinations fail here, once
    summary = run_automask(
        args.dataset,
        settings,
        model=model,
        checkpoint=str(args.checkpoint) if args.checkpoint else None,  # recorded in settings.json
        split=args.split,
        workers=args.workers,
        executor=args.executor,
        overwrite=args.overwrite,
        device=args.device,
        threads=args.threads,
        gpus=args.gpus,
        progress=False if args.no_progress else None,
        backend=args.backend,
        precision=args.precision,
    )
    print()
    print_table([{"model": model, **summary.row()}])
    print(f"time: {summary.seconds:.1f} s; records: {Path(args.dataset) / 'automask' / 'records'}")
    if summary.failures:
        for f in summary.failures:
            print(f"failed: {f.cause}", file=sys.stderr)
        print(
            f"imis automask: {len(summary.failures)} image(s) failed; fix them and rerun to resume",
            file=sys.stderr,
        )
        return 1
    return 0
