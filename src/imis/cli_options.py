"""argparse pieces that the subcommands of several stages share (`imis prepare` in data, `imis automask`, ...):
below the stages, like :mod:`imis.console`, so that each command module can use them without importing
another stage's."""

from __future__ import annotations

import argparse

EXECUTORS = ("local", "ray")
EXECUTOR_HELP = (
    "local (this machine) or ray (the Ray cluster of RAY_ADDRESS, else a local Ray; `pip install ray`)"
)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


PROGRESS_HELP = "no progress bars (for logs and scripts)"


def add_progress_argument(parser, help_text: str = PROGRESS_HELP) -> None:
    """--no-progress, as every command that shows progress bars takes it (prepare, prepare-templates,
    stats, automask, bench, demo); ``args.no_progress`` is True when given."""
    parser.add_argument("--no-progress", action="store_true", help=help_text)


def add_executor_arguments(parser, workers_help: str) -> None:
    """--workers N (default None: the command's own default, said in ``workers_help``) and
    --executor local|ray, as every command that fans work out to processes or a Ray cluster takes them."""
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N", help=workers_help)
    parser.add_argument("--executor", choices=EXECUTORS, default="local", help=EXECUTOR_HELP)
