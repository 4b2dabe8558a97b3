"""The ``imis bench`` and ``imis report`` subcommands (wired into the CLI by ``register_bench_commands``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imis.bench.volume import REFINES, VOLUME_PROTOCOLS
from imis.cli_options import add_progress_argument
from imis.errors import InputError
from imis.prompts.seed import SEED_AXES

__all__ = ["cmd_bench", "cmd_report", "parse_checkpoints", "register_bench_commands"]

BENCH_HELP = """\
Benchmark interactive segmentation models on one dataset split with seeded, replayed prompts.

Prompts are generated once per (dataset, protocol, seed) into RUN_DIR/prompts.json and every model
receives exactly the same ones. Each prediction is one line of RUN_DIR/predictions.jsonl; rerunning the
same command resumes where it stopped. At the end RUN_DIR holds summary.json, results.csv,
leaderboard.md and figures/.

protocols:
  single     per target: 1 click, tight box, text, click+box, box+text, click+text (kinds a model
             does not take are recorded as skipped, not scored)
  iterative  first click, then correction clicks (accumulated, previous logits fed back):
             Dice after each interaction, NoC@85/90 (cap 20 clicks = failure)
  box-offset     per target: the box with each coordinate offset by 0, 5, 10 and 20 px
                 (kinds box+0, box+5, box+10, box+20)
  click-position per target: one uniformly random foreground click, binned by its distance to the
                 mask centroid over the equivalent radius sqrt(area/pi) (kinds click@[0,0.25) ...
                 click@>=1): Dice per distance bin
  imis-paper the IMIS-Bench reference's test loop, for numbers comparable with the paper: per
             first prompt (paper:click = a click among the 50% of foreground pixels nearest the
             centroid, paper:box = tight box, paper:text), then rounds 2..N each feeding only the
             newest click (uniform in the error region) plus the previous logits; best-of-3 masks
             by predicted IoU; report the image-level Dice (see docs/protocols.md)

  volume     3D (imis.bench.volume): per structure of a volume dataset (nnU-Net/MSD raw folder or
             an image,label pair list) a box / click / text on its largest slice (--seed-axis),
             propagation (--refine), then 3D Dice, NSD (--nsd-tolerance mm) and HD95 with the spacing
  volume-iterative  the box start, then correction clicks on the worst slice, re-propagated

--data DATASET[:SPLIT] is a folder made by `imis prepare`; without a split the test split is used.

--perturb invert|gamma|noise|t2like remaps every image's intensities (seeded, deterministic) before
the models see it; masks and prompts are those of the unperturbed data (robustness checks).

--prompts FILE replays a prompt file (e.g. another run's RUN_DIR/prompts.json); a file made for
other data is refused.

--checkpoint MODEL=FILE gives a model without embedded weights its weight file (see 'imis models':
"pass --checkpoint"); repeat it, once per model. With a single learned model, --checkpoint FILE is enough.

examples:
  imis bench --models litemedsam,grabcut --data ../shared/data/btcv-demo:test --protocol single -o runs/single
  imis bench --models litemedsam --data ../shared/data/btcv-demo --protocol iterative --seed 1 -o runs/iter
  imis bench --models litemedsam --data ../shared/data/btcv-demo --protocol box-offset -o runs/offset
  imis bench --models litemedsam --data ../shared/data/btcv-demo --protocol imis-paper -o runs/paper
  imis bench --models grabcut --data ../shared/data/btcv-demo --prompts runs/single/prompts.json -o runs/gc
  imis bench --models imis-lite --data ../shared/data/btcv-demo:train --cases ABD_034,ABD_035,ABD_036 \\
      --protocol iterative -o runs/val-iter     # a validation split held out of training
  imis bench --models imis-lite --data Task04_Hippocampus --protocol volume --nsd-tolerance 1 -o runs/vol
  imis bench --models sam2-hiera-b+,sam-med2d-b,medsam-vit-b --data ../shared/data/btcv-demo -o runs/paper-models \\
      --checkpoint sam2-hiera-b+=sam2.1_hiera_base_plus.pt --checkpoint sam-med2d-b=sam-med2d_b.pth \\
      --checkpoint medsam-vit-b=medsam_vit_b.pth
  imis bench --models imis-lite --data ../shared/data/btcv-demo:test --perturb t2like -o runs/single-t2like
  imis report runs/single runs/iter -o runs/leaderboard.md
"""

REPORT_EPILOG = """\
examples:
  imis report runs/bench-single                     # rewrite one run's reports, print its table
  imis report runs/bench-single runs/bench-iter -o runs/leaderboard.md   # several runs, one table
"""


SPLITS = ("test", "train")


def _parse_data(spec: str) -> tuple[Path, str]:
    """``DATASET[:SPLIT]`` -> (folder, split); the split defaults to ``test``. An unknown split of an
    existing folder (``data:val``) is refused by name, not taken as part of the folder's path."""
    path, sep, split = spec.rpartition(":")
    if sep and path and not Path(spec).exists():
        if split in SPLITS:
            return Path(path), split
        if Path(path).is_dir():
            raise InputError(
                f"--data {spec}: unknown split {split!r}; a dataset has the splits {' and '.join(SPLITS)} "
                f"(e.g. --data {path}:test; a validation set is --data {path}:train --cases IDS)"
            )
    return Path(spec), "test"


def check_data(data: Path, split: str) -> None:
    """Refuse what is not a prepared dataset with entries in ``split``, before any run folder exists."""
    if not data.is_dir():
        raise InputError(f"--data {data}: no such dataset folder")
    if (data / "imagesTr").is_dir() and not (data / "image").is_dir():
        raise InputError(
            f"--data {data}: an MSD / nnU-Net raw folder of volumes; run `imis prepare {data} --out DATASET` "
            "and benchmark the prepared DATASET"
        )
    if not (data / "dataset.json").is_file():
        raise InputError(
            f"--data {data}: not a dataset folder (no dataset.json); pass --data DATASET[:split]"
        )
    from imis.data.formats.imed import read_dataset

    ds = read_dataset(data)
    if not ds.split(split):
        counts = {s: len(ds.split(s)) for s in SPLITS}
        other = next((s for s in SPLITS if counts[s]), None)
        hint = f"; use --data {data}:{other} ({counts[other]} images)" if other else ""
        raise InputError(f"--data {data}: split {split!r} has no images{hint}")


def _parse_cases(spec: str | None) -> tuple[str, ...]:
    if spec is None:
        return ()
    cases = tuple(c.strip() for c in spec.split(",") if c.strip())
    if not cases:
        raise InputError(f"--cases: no case id in {spec!r} (pass e.g. --cases ABD_034,ABD_035)")
    return cases


def parse_checkpoints(specs: list[str] | None, models: tuple[str, ...]) -> dict[str, str]:
    """``--checkpoint MODEL=FILE`` (repeatable) -> {model: file}; a bare FILE goes to the only learned
    model. Refuses a file for a model that is not benchmarked or is a baseline, and two for one model."""
    from imis.bench.runner import BASELINES
    from imis.models.registry import REGISTRY

    learned = [m for m in models if m not in BASELINES]
    out: dict[str, str] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not (sep and name in models):
            if sep and (name in REGISTRY or name in BASELINES):
                raise InputError(f"--checkpoint {spec}: {name} is not among --models ({', '.join(models)})")
            if len(learned) != 1:
                raise InputError(
                    f"--checkpoint {spec}: name the model it is for (MODEL=FILE) when benchmarking "
                    f"{len(learned)} learned models"
                )
            name, path = learned[0], spec
        if name in BASELINES:
            raise InputError(f"--checkpoint {spec}: {name} is a baseline, it takes no weights")
        if name in out:
            raise InputError(f"--checkpoint: two files for {name} ({out[name]}, {path})")
        out[name] = path
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    from imis.bench.config import BenchConfig
    from imis.bench.model_names import check_model_names
    from imis.bench.report import format_table, merge_runs
    from imis.bench.runner import run_bench

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    checkpoints = parse_checkpoints(args.checkpoint, models)
    check_model_names(models, checkpoints)
    if args.protocol in VOLUME_PROTOCOLS:  # 3D: imis.bench.volume reads volume datasets itself
        from imis.bench.volume import cmd_bench_volume

        return cmd_bench_volume(args, models)
    data, split = _parse_data(args.data)
    check_data(data, split)
    config = BenchConfig(
        models=models,
        data=data,
        split=split,
        protocol=args.protocol,
        seed=args.seed,
        max_interactions=args.max_interactions,
        click_simulator=args.click_simulator,
        first_click=args.first_click,
        nsd_tolerance_mm=args.nsd_tolerance,
        cases=_parse_cases(args.cases),
        limit_images=args.limit_images,
        device=args.device,
        prompts_file=args.prompts,
        checkpoints=checkpoints,
        backend=args.backend,
        precision=args.precision,
        perturb=args.perturb,
        zoom=args.zoom or 0,
    )
    summary = _run_leaving_no_empty_folder(run_bench, config, Path(args.output), not args.no_progress)
    print(format_table(merge_runs([args.output])), end="")
    for model, n in summary["noc"].items():
        print(
            f"{model}: NoC@85 {n['noc85']:.2f}, NoC@90 {n['noc90']:.2f}, failures {n['failures90']}/{n['n_masks']}"
        )
    if summary["errors"]:
        print(f"{len(summary['errors'])} error(s), see {Path(args.output) / 'leaderboard.md'}")
    print(f"report: {Path(args.output) / 'leaderboard.md'}")
    return 0


def _run_leaving_no_empty_folder(run_bench, config, out: Path, progress: bool) -> dict:
    """``run_bench``; a run that fails before writing a prediction removes the run folder it created."""
    existed = out.exists()
    try:
        return run_bench(config, out, progress=progress)
    except BaseException:
        pred = out / "predictions.jsonl"
        if not existed and out.is_dir() and not (pred.is_file() and pred.stat().st_size):
            for f in sorted(out.rglob("*"), reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
            out.rmdir()
        raise


def cmd_report(args: argparse.Namespace) -> int:
    from imis.bench.report import format_table, merge_runs, write_report

    for d in args.run_dirs:
        if not (Path(d) / "predictions.jsonl").is_file():
            raise InputError(f"{d}: not a run directory of `imis bench` (no predictions.jsonl)")
    for d in args.run_dirs:
        write_report(d)
    table = format_table(merge_runs(args.run_dirs))
    print(table, end="")
    if args.output is not None:
        from imis.io import atomic_output

        with atomic_output(args.output) as tmp:
            Path(tmp).write_text(table, encoding="utf-8")
        print(f"table: {args.output}")
    return 0


def register_bench_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and ``report`` to the CLI's subparsers."""
    from imis.bench.protocols import CLICK_SIMULATORS, FIRST_CLICKS, PROTOCOLS
    from imis.data.perturb import PERTURBATIONS

    fmt = argparse.RawDescriptionHelpFormatter
    b = subparsers.add_parser(
        "bench", help="benchmark models with seeded prompts", description=BENCH_HELP, formatter_class=fmt
    )
    b.add_argument(
        "--models",
        required=True,
        help="comma-separated registry models (see 'imis models') and baselines (grabcut, random-walker)",
    )
    b.add_argument(
        "--data",
        required=True,
        metavar="DATASET[:SPLIT]",
        help="a dataset folder made by `imis prepare` (IMed-361M layout) and its split: ':test' (the default) "
        "or ':train'",
    )
    b.add_argument(
        "--protocol",
        choices=PROTOCOLS + VOLUME_PROTOCOLS,
        default="single",
        help="prompt protocol: " + ", ".join(PROTOCOLS + VOLUME_PROTOCOLS) + " (default single; see below)",
    )
    b.add_argument("--seed", type=int, default=0, help="seed of every simulated prompt (default 0)")
    b.add_argument("-o", "--output", required=True, type=Path, metavar="RUN_DIR", help="run directory")
    b.add_argument(
        "--max-interactions", type=int, default=9, help="iterative, imis-paper: interactions per target (9)"
    )
    b.add_argument(
        "--click-simulator",
        choices=CLICK_SIMULATORS,
        default="ritm",
        help="iterative: correction clicks (ritm)",
    )
    b.add_argument(
        "--first-click",
        choices=FIRST_CLICKS,
        default="center",
        help="which first click of the prompt file (center)",
    )
    b.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="replay this prompt file (made for the same data) instead of generating prompts from --seed",
    )
    b.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        metavar="MODEL=FILE",
        help="weight file of a model without embedded weights; repeat once per model (a bare FILE: the "
        "only learned model)",
    )
    b.add_argument(
        "--perturb",
        choices=PERTURBATIONS,
        default=None,
        help="remap every image's intensities before the models see it (seeded by --seed and the image; "
        "masks and prompts unchanged): invert, gamma, noise or t2like (see docs/protocols.md)",
    )
    b.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    b.add_argument(
        "--seed-axis",
        choices=SEED_AXES,
        default="z",
        help="volume protocols: where the seed slice is looked for: one axis (default z, the largest axial "
        "slice) or 'largest', the largest cross-section over z, y, x by mm^2 (docs/volumes.md)",
    )
    b.add_argument(
        "--refine",
        choices=REFINES,
        default="orthogonal",
        help="volume protocols: after propagating, 'orthogonal' (default) re-segments the mask along the "
        "other two axes from its tight boxes and keeps the majority of the three; 'none' (docs/volumes.md)",
    )
    b.add_argument(
        "--cases",
        default=None,
        metavar="IDS",
        help="only these cases of the split, comma-separated (ABD_034,ABD_035: the case of ABD_035_120 "
        "is ABD_035), e.g. the validation cases a training run held out",
    )
    b.add_argument("--limit-images", type=int, default=None, help="only the first N images (quick runs)")
    from imis.runtime_options import add_runtime_arguments, add_zoom_argument

    add_runtime_arguments(
        b, default_precision="fp32", device_help="torch device of the learned models (default cpu)"
    )
    add_zoom_argument(b)  # the learned models only; baselines run as they are
    add_progress_argument(b)
    b.set_defaults(func=cmd_bench)
    r = subparsers.add_parser(
        "report",
        help="aggregate benchmark runs into one table",
        description="Rewrite each RUN_DIR's summary.json, results.csv, leaderboard.md and figures, "
        "and print one table merging all runs (run, dataset, protocol, model, prompt kind, Dice).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=REPORT_EPILOG,
    )
    r.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="directories written by imis bench"
    )
    r.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the merged table to FILE (Markdown, e.g. runs/leaderboard.md)",
    )
    r.set_defaults(func=cmd_report)
