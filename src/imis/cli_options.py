"""argparse pieces that the subcommands of several stages share (`imis prepare` in data, `imis automask`):
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


def add_executor_arguments(parser, workers_help: str) -> None:
    """--workers N (default None: the command's own default, said in ``workers_help``) and
    --executor local|ray, as every command that fans work out to processes or a Ray cluster takes them."""
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N", help=workers_help)
    parser.add_argument("--executor", choices=EXECUTORS, default="local", help=EXECUTOR_HELP)
