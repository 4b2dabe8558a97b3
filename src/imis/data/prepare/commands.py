"""The `imis prepare` and `imis restack` commands (wired into :mod:`imis.cli` by the lead).

Both command functions take the parsed ``argparse.Namespace``, raise :class:`imis.errors.ImisError`
subclasses for problems the user can fix (the CLI prints the one-line reason and exits 2) and return the
exit code: ``prepare`` returns 1 when some cases failed (the dataset then holds the others; rerun to
retry them), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imis.cli_options import add_executor_arguments, add_progress_argument, positive_int
from imis.errors import InputError

__all__ = [
    "cmd_prepare",
    "cmd_prepare_ood",
    "cmd_prepare_templates",
    "cmd_restack",
    "register_prepare_commands",
]

PREPARE_DESCRIPTION = """\
Turn a collection of 3D (or 2D) labelled images into an IMIS dataset the way IMed-361M was built
(paper §3.1): 2D slices along the chosen axes, 8-bit intensities (CT windows, MR percentiles),
one-hot CSR masks, the paper's exclusion rules, target names from one vocabulary, a case-level
train/test split with a leakage check, and a provenance record for every image.

SOURCE is an MSD / nnU-Net raw folder (dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz)
or a case list (.yaml/.json: name, modality, labels, cases: [{case, image, label}], paths relative to
the file; images in any format imis reads, DICOM series folders included).
"""

PREPARE_EPILOG = """\
what it does, per case (one work unit):
  read image + label map (same shape and geometry, whole-number labels, no NaN)
  -> intensities to 8 bit: CT by window (soft_tissue W400/L40, lung W1500/L-600, bone W2500/L480,
     brain W80/L40, liver W150/L90) or percentile; MR and others 0.5-99.5 percentile, then min-max
  -> slices along z, y, x (np.take of the (z, y, x) array; axis and index recorded; slice_step N
     keeps every Nth slice, centred on each axis)
  -> exclude slices with aspect ratio > 1.5 (1.5 kept), masks below 1/1000 of the pixels (1/1000 kept),
     and slices left without a mask; optionally split labels into connected components
  -> write image/<stem>.png (RGB) and label/x___<stem>.(C, H, W, 1).npz (CSR), stem <case>_<axis>_<index>

the dataset folder (--out):
  dataset.json         IMed-361M layout: labels, training/test entries (90/10 by case, <= 3000 test
                       images; test images identical to training/other-dataset images moved out)
  image/ label/        the images and one-hot masks
  manifest.jsonl       one provenance record per image: source file, case, axis, index, spacing,
                       origin, direction, window, masks, split
  summary.json         cases, slices kept/excluded by rule, masks, failures, leakage
  prepare.json         the settings and channel layout; cases/<case>.json marks a finished case

resuming: rerun the same command; finished cases are skipped, half-finished ones redone. The result is
byte-identical to an uninterrupted run. A broken case is reported with its cause and the others go on;
the exit status is then 1.

prepare.yaml (every key optional; see imis.data.prepare.config):
  axes: [z, y, x]              modality: ct            ct_window: soft_tissue   # or {width: 400, level: 40}
  percentiles: [0.5, 99.5]     max_aspect_ratio: 1.5   min_mask_fraction: 0.001
  split_components: [lung nodule]  max_components: 8   connectivity: 8
  labels: {1: liver}           ignore_labels: [3]      vocabulary: my_targets.yaml
  keep_labels: [Thalamus_L, 77]  # only these (values or names); every other value is background
  unnamed_labels: error        # or ignore: values no name covers become background
  test_fraction: 0.1           max_test_images: 3000   seed: 0     # 0: all training, 1: all test
  slice_step: 1                # keep every Nth slice along each axis
  drop_duplicate_slices: false # leave out slices whose image and masks repeat a kept slice of the case
  leakage_datasets: [../other_dataset]                 empty_labels: error     # or skip

examples:
  imis prepare Task02_Heart --out datasets/heart
  imis prepare nnUNet_raw/Dataset003_Liver --out datasets/liver --config prepare.yaml --workers 8
  RAY_ADDRESS=auto imis prepare /shared/raw/Lung --out /shared/datasets/lung --executor ray
  imis restack datasets/liver --case liver_7 -o liver_7_restacked.nii.gz
"""

RESTACK_DESCRIPTION = """\
Put the 2D masks of one case of a prepared dataset (or a model's predictions for its images) back into
a 3D label map on the source volume's grid, using the provenance `imis prepare` recorded (shape,
spacing, origin, direction, and each image's axis and index). The output overlays the source image.
"""

RESTACK_EPILOG = """\
values: each mask is painted with the source label value it came from (--values dataset: the dataset's
label id instead). Excluded slices and masks are background. With several axes prepared, pick one
with --axis (each voxel then comes from exactly one image).

--predictions DIR: one file per image, named by its stem (<case>_<axis>_<index>):
  <stem>.png or <stem>.npy  integer label map of dataset label ids (0 = background), or
  x___<stem>.(C, H, W, 1).npz  one-hot CSR masks like the dataset's label/ files.
Images without a prediction file stay empty (their number is printed).

examples:
  imis restack datasets/colin27 --case colin_000 -o colin_000_labels.nii.gz
  imis restack datasets/colin27 --case colin_000 --axis x -o sagittal.nii.gz
  imis restack datasets/liver --case liver_7 --predictions runs/bench/liver/pred -o liver_7_pred.nii.gz
"""


TEMPLATES_DESCRIPTION = """\
Build the training/evaluation data of imis-lite from the brain templates we may train on: Colin27 T1
with the AAL atlas and Brodmann areas (Debian mricron-data) and the MNI152 2009a T1 with grey/white
matter maps (inside PyPI nilearn), as IMed-361M datasets made with `imis prepare` (all three axes,
every Nth slice). A fixed list of AAL structures (bilateral pairs) is held out of training and makes
its own test dataset. btcv-demo's training split, the other part of imis-lite's data, is listed and
counted in place.
"""

TEMPLATES_EPILOG = """\
datasets written under OUT (sources/ holds their case lists and derived label volumes):
  colin27-aal          train  Colin27, 92 AAL structures (the held-out ones are background)
  colin27-aal-heldout  test   Colin27, only the 24 held-out AAL structures (unseen in training)
  colin27-brodmann     train  Colin27, 41 Brodmann areas
  mni152-tissue        train  MNI152: grey matter, white matter (one label map) and brain (another)
  datasets.json        the datasets, splits, roles, counts, held-out list and slice steps

held-out AAL structures (both sides): Caudate, Putamen, Thalamus, Hippocampus, Amygdala, Insula, Heschl,
  Rectus, Angular, Calcarine, Supp_Motor_Area, Cerebelum_9 (imis.data.brain_templates)

The Colin27 datasets share one image and one step: they hold the same slices, byte for byte. Rerun
the same command to resume; finished datasets are skipped. Another step needs another --out folder.

examples:
  imis prepare-templates --out runs/imis-lite-data
  imis prepare-templates --out runs/imis-lite-quick --slice-step 10
"""


OOD_DESCRIPTION = """\
Build imis-lite's out-of-distribution validation (issue 18; imis.data.ood): the sample images that
pydicom and scikit-image ship (CT of other regions, small MR, ultrasound, nuclear medicine, fundus,
histology, microscopy: image types none of imis-lite's training data has) with 1-3 lesion-like regions
each: blobs, tubes, rings and nested pairs *added* to the image at low contrast (0.08-0.30 of its range)
under a soft edge, so the anatomy's texture continues inside; a region fainter than the spread of the
image under it is not drawn. The backgrounds are split by file: ood-val chooses checkpoints, ood-test is
reported. Deterministic: the same seed rewrites byte-identical files.
"""

OOD_EPILOG = """\
datasets written under OUT (IMed-361M layout, every image in the test split):
  ood-val    5 backgrounds (CT, MR, ultrasound, fundus, microscopy), 8 images each
  ood-test   7 backgrounds (2 CT, MR, ultrasound, nuclear medicine, fundus, histology), 12 images each

examples:
  imis prepare-ood --out runs/ood
  imis bench --models imis-lite,random-walker --data runs/ood/ood-test --protocol iterative \\
      --max-interactions 5 -o runs/ood-iterative
"""


def register_prepare_commands(subparsers) -> None:
    """Add ``prepare`` and ``restack`` to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "prepare",
        help="turn labelled volumes into an IMIS dataset (IMed-361M protocol)",
        description=PREPARE_DESCRIPTION,
        epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", type=Path, metavar="SOURCE", help="MSD/nnU-Net raw folder, or a case list (.yaml/.json)"
    )
    p.add_argument(
        "--out", "-o", type=Path, required=True, metavar="DATASET", help="dataset folder to write (or resume)"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="prepare.yaml",
        help="settings (YAML); default: the paper's protocol",
    )
    add_executor_arguments(
        p,
        "cases prepared in parallel: processes on this machine (default 1); with --executor ray, tasks in flight",
    )
    add_progress_argument(p)
    p.set_defaults(func=cmd_prepare)

    t = subparsers.add_parser(
        "prepare-templates",
        help="build imis-lite's datasets from Colin27/AAL/Brodmann and MNI152 (held-out AAL structures)",
        description=TEMPLATES_DESCRIPTION,
        epilog=TEMPLATES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--out", "-o", type=Path, required=True, metavar="DIR", help="run folder to write (or resume)"
    )
    t.add_argument(
        "--slice-step",
        type=positive_int,
        default=None,
        metavar="N",
        help="keep every Nth slice along each axis of both templates (default 2 for Colin27, 3 for MNI152)",
    )
    t.add_argument(
        "--mni-slice-step",
        type=positive_int,
        default=None,
        metavar="N",
        help="the step for MNI152 alone (overrides --slice-step)",
    )
    t.add_argument(
        "--btcv",
        type=Path,
        default=None,
        metavar="DIR",
        help="btcv-demo folder to list beside (read in place; default $IMIS_SHARED/data/btcv-demo or "
        "../shared/data/btcv-demo when present)",
    )
    add_progress_argument(t)
    t.set_defaults(func=cmd_prepare_templates)

    o = subparsers.add_parser(
        "prepare-ood",
        help="build imis-lite's out-of-distribution validation: lesion-like regions on unseen image types",
        description=OOD_DESCRIPTION,
        epilog=OOD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="folder to write")
    o.add_argument(
        "--per-background",
        type=positive_int,
        nargs=2,
        default=None,
        metavar=("VAL", "TEST"),
        help="images drawn from each background file of the val and the test half (default 8 12)",
    )
    o.add_argument("--seed", type=int, default=0, help="the images' seed (default 0: the documented set)")
    o.set_defaults(func=cmd_prepare_ood)

    r = subparsers.add_parser(
        "restack",
        help="2D masks or predictions of a prepared dataset -> a 3D label map in the source geometry",
        description=RESTACK_DESCRIPTION,
        epilog=RESTACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("dataset", type=Path, metavar="DATASET", help="a dataset folder written by `imis prepare`")
    r.add_argument("--case", required=True, metavar="C", help="case id (as in cases/<C>.json)")
    r.add_argument("--axis", choices=["z", "y", "x"], default="z", help="which slices to stack (default z)")
    r.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        metavar="OUT.nii.gz",
        help="label map to write (.nii.gz, .nrrd, .mha, .npy)",
    )
    r.add_argument(
        "--predictions",
        type=Path,
        default=None,
        metavar="DIR",
        help="stack these per-image predictions instead of the dataset's masks",
    )
    r.add_argument(
        "--values",
        choices=["source", "dataset"],
        default="source",
        help="paint source label values (default) or dataset label ids",
    )
    r.set_defaults(func=cmd_restack)


def cmd_prepare(args: argparse.Namespace) -> int:
    from imis.data.prepare.config import load_config
    from imis.data.prepare.pipeline import prepare

    config = load_config(args.config)
    summary = prepare(
        args.source,
        args.out,
        config,
        workers=args.workers,
        executor=args.executor,
        progress=False if getattr(args, "no_progress", False) else None,
        log=lambda line: print(line, flush=True),
    )
    _warn_empty_test_split(summary, config, args.out)
    if summary.failures:
        print(
            f"imis prepare: {len(summary.failures)} of {summary.cases} case(s) failed (see above and "
            f"{Path(args.out) / 'summary.json'}); the others are in the dataset. Fix them and rerun to resume.",
            file=sys.stderr,
        )
        return 1
    return 0


def _warn_empty_test_split(summary, config, out) -> None:
    """A dataset with training images but no test image (one case, a small test_fraction) cannot be
    benchmarked on its test split: say so, with the two ways out."""
    if summary.test_images or not summary.train_images or config.test_fraction == 0:
        return
    cases = summary.train_cases
    print(
        f"imis prepare: warning: 0 test images: {cases} case(s) at test_fraction {config.test_fraction:g} "
        f"leave no case for the test split, so `imis bench --data {out}:test` has nothing to run; "
        f"benchmark --data {out}:train, or set test_fraction: 1 in --config to put every case in the test split",
        file=sys.stderr,
    )


def _default_btcv() -> Path | None:
    shared = Path(os.environ.get("IMIS_SHARED", "../shared"))
    d = shared / "data" / "btcv-demo"
    return d if (d / "dataset.json").is_file() else None


def cmd_prepare_templates(args: argparse.Namespace) -> int:
    import time

    from imis.console import print_table
    from imis.data import brain_templates as bt

    t0 = time.perf_counter()
    colin_step = args.slice_step or bt.COLIN_SLICE_STEP
    mni_step = args.mni_slice_step or args.slice_step or bt.MNI_SLICE_STEP
    btcv = args.btcv if args.btcv is not None else _default_btcv()
    if args.btcv is not None and not (args.btcv / "dataset.json").is_file():
        raise InputError(f"--btcv {args.btcv}: not a btcv-demo folder (no dataset.json)")
    rows = bt.build_template_datasets(
        args.out,
        colin_step=colin_step,
        mni_step=mni_step,
        btcv=btcv,
        progress=False if args.no_progress else None,
        log=lambda line: print(line, flush=True),
    )
    print()
    print_table([r.row() for r in rows], ["dataset", "split", "images", "masks", "targets", "step", "status"])
    distinct = ", ".join(f"{k} {v}" for k, v in bt.distinct_images(rows).items())
    print(f"\ndistinct images to encode (by pixel digest): {distinct}")
    if btcv is None:
        print("btcv-demo not found (pass --btcv DIR): not listed")
    print(f"index: {Path(args.out) / bt.INDEX_FILE}")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_prepare_ood(args: argparse.Namespace) -> int:
    import time

    from imis.console import print_table
    from imis.data.ood import OodConfig, write_ood_datasets

    t0 = time.perf_counter()
    counts = {} if args.per_background is None else {"per_background": tuple(args.per_background)}
    cfg = OodConfig(seed=args.seed, **counts)
    written = write_ood_datasets(args.out, cfg, progress=lambda line: print(line, flush=True))
    print()
    rows = [{"dataset": f"ood-{half}", **c} for half, c in written.items()]
    print_table(rows, ["dataset", "backgrounds", "images", "regions"])
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_restack(args: argparse.Namespace) -> int:
    from imis.data.prepare.restack import restack_to_file

    if args.out.suffix.lower() == ".png":
        raise InputError(f"{args.out}: a restacked label map is 3D; write .nii.gz, .nrrd, .mha or .npy")
    res = restack_to_file(
        args.dataset, args.case, args.out, args.axis, predictions=args.predictions, values=args.values
    )
    shape = "x".join(str(s) for s in res.labels.shape)
    print(
        f"{args.out}: case {res.case}, {res.slices} {res.axis} slice(s) placed in a {shape} (z, y, x) volume"
    )
    if res.missing:
        print(f"note: {res.missing} image(s) of the case had no prediction file and are empty")
    return 0
