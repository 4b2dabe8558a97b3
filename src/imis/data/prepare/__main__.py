"""``python -m imis.data.prepare {prepare,restack} ...``: the two commands without the full `imis` CLI."""

from __future__ import annotations

import argparse
import sys

from imis.data.prepare.commands import register_prepare_commands
from imis.errors import ImisError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imis.data.prepare")
    register_prepare_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ImisError as exc:
        print(f"imis: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
