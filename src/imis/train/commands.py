"""The ``imis train`` subcommand (wired into the CLI by ``register_train_command``)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["cmd_train", "register_train_command"]

TRAIN_HELP = """\
Train a promptable model with simulated interaction (paper §4.1-4.2).

Each step draws targets from the images (ground-truth masks and interactive-mask regions), gives each a
first prompt (click, box jittered by up to 5 px, text, or a combination), then K correction steps
(clicks from the benchmark's simulators, previous logits fed back), and learns from
20 * focal + dice + IoU-prediction MSE. With the image encoder frozen, every image is encoded once into
an fp16 embedding cache, which makes CPU training practical.

The run folder holds config.json, train_log.csv, val_log.csv, state.pt (resumable: rerunning the same
command continues exactly where it stopped) and, at the end, model.pt (load it with
`imis segment --checkpoint model.pt` or `imis bench --models model.pt`) and summary.json.

Several processes (CPU: gloo, GPUs: NCCL) share one global batch:
  torchrun --nproc-per-node 2 -m imis.cli train --config train.yaml

See the imis.train.config module (or docs/training.md) for every configuration key.

examples:
  imis train --config configs/imis-lite/stage01.yaml
  imis train --config configs/imis-lite/stage01.yaml -o runs/try --epochs 1 --max-steps 20
  imis train --config configs/imis-lite/stage08.yaml --time-limit 3600   # one hour on a lent GPU
"""


def register_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a promptable model with simulated interaction",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="training configuration (YAML)")
    p.add_argument("-o", "--out", type=Path, help="run folder (default: the config's 'out')")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps")
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="wall time for this call: then checkpoint, validate and export what it has (rerun to go on)",
    )
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run in the folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from imis.console import print_table
    from imis.errors import InputError
    from imis.train.config import load_train_config
    from imis.train.trainer import STATE_FILE, train

    cfg = load_train_config(args.config)
    if args.epochs is not None and args.epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {args.epochs}")
    cfg = cfg.with_overrides(
        out=str(args.out.resolve()) if args.out else None, epochs=args.epochs, device=args.device
    )
    if args.time_limit is not None and args.time_limit <= 0:
        raise InputError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.no_resume and (Path(cfg.out) / STATE_FILE).exists():
        raise InputError(f"{cfg.out}: holds a run already (--no-resume given)")
    result = train(cfg, progress=not args.quiet, stop_after=args.max_steps, time_limit=args.time_limit)
    rows = [
        {"key": "run folder", "value": str(result.out)},
        {"key": "steps", "value": result.steps},
        {"key": "skipped (non-finite)", "value": result.skipped_steps},
        {"key": "wall time (s)", "value": f"{result.wall_seconds:.1f}"},
        {"key": "peak memory (MB)", "value": f"{result.peak_rss_mb:.0f}"},
    ]
    rows += [{"key": f"val {k}", "value": f"{v:.4f}"} for k, v in result.val.items() if k != "targets"]
    if result.model_path is not None:
        rows.append({"key": "model", "value": str(result.model_path)})
    print_table(rows, ["key", "value"])
    return 0
