"""CLI subcommands of the dataset engine, registered by :mod:`imis.cli` (``register_stats_command``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imis.cli_options import add_progress_argument

__all__ = ["cmd_stats", "register_stats_command"]

EPILOG_STATS = """\
examples:
  imis stats ../shared/data/btcv-demo -o reports/btcv
  imis stats data/colin4 ../shared/data/btcv-demo -o reports/all --vocabulary my_targets.yaml

DATASET is a folder in the IMed-361M layout (dataset.json, image/, label/, imask/) or the SA-Med2D-20M
layout (images/, masks/, SAMed2D_v1.json); prepare raw volumes first with `imis prepare`.
Writes REPORT_DIR/report.md, REPORT_DIR/stats.json and the figures fig2a_modalities.png,
fig2b_groups.png, fig2c_resolution.png, fig2d_coverage.png and masks_per_image.png (the paper's
Fig. 2 (a)-(d) for your data). Ground-truth masks (non-empty label channels) and interactive masks
(non-zero imask ids) are counted apart; label names are grouped by the target vocabulary.
"""


def register_stats_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``imis stats DATASET [DATASET...] -o REPORT_DIR`` to the CLI's subparsers; return its parser."""
    p = subparsers.add_parser(
        "stats",
        help="dataset statistics and figures (paper Fig. 2): modalities, masks, resolution, coverage, groups",
        description="Count images and masks of one or more datasets and write a Markdown report, PNG figures and JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_STATS,
    )
    p.add_argument("datasets", nargs="+", type=Path, metavar="DATASET", help="dataset folder(s)")
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="REPORT_DIR", help="folder for the report"
    )
    p.add_argument(
        "--vocabulary", type=Path, default=None, metavar="YAML", help="extend the built-in target vocabulary"
    )
    add_progress_argument(p)
    p.set_defaults(func=cmd_stats)
    return p


def cmd_stats(args: argparse.Namespace) -> int:
    from imis.data.stats import run_stats
    from imis.data.vocabulary import Vocabulary

    vocab = Vocabulary.from_yaml(args.vocabulary) if args.vocabulary is not None else None
    stats = run_stats(args.datasets, args.output, vocabulary=vocab, progress=not args.no_progress)
    return 1 if stats["totals"]["failures"] else 0
