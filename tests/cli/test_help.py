"""Every subcommand's --help teaches (a description and examples), and no example the user reads, in
the help or the README, names a subcommand or option that is gone. Parsing only: nothing is run
(test_readme.py runs the README's commands; this catches a renamed flag in a second, including the
sections and inline mentions that test does not run)."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
from readme_helpers import REPO, commands, readme_blocks, split_env

from imis.cli import build_parser

PARSER = build_parser()
SUBCOMMANDS: dict[str, argparse.ArgumentParser] = next(
    a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)
).choices


def _help_examples(sub: argparse.ArgumentParser) -> list[list[str]]:
    """The argv of every ``imis ...`` line in a subcommand's description and epilog (after VAR=value)."""
    text = re.sub(r"\\\n\s*", " ", f"{sub.description or ''}\n{sub.epilog or ''}")
    found = []
    for line in text.splitlines():
        if re.match(r"([A-Z_][A-Z0-9_]*=\S*\s+)*imis\s", line.strip()):  # a command line, not prose
            _, argv = split_env(shlex.split(line.strip(), comments=True))
            found.append(argv[1:])
    return found


def _parse_error(argv: list[str], capsys) -> str | None:
    """None when ``imis ARGV`` parses, else argparse's message."""
    try:
        PARSER.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            return capsys.readouterr().err.strip().splitlines()[-1]
    return None


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_help_has_a_description_and_examples_of_itself(name):
    sub = SUBCOMMANDS[name]
    assert sub.description, f"imis {name} --help has no description"
    assert "examples:" in sub.format_help(), f"imis {name} --help has no examples: section"
    assert any(argv[:1] == [name] for argv in _help_examples(sub)), f"no `imis {name} ...` example"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_help_example_parses(name, capsys):
    bad = [(argv, err) for argv in _help_examples(SUBCOMMANDS[name]) if (err := _parse_error(argv, capsys))]
    assert bad == []


def test_every_readme_command_parses(capsys):
    bad = []
    for section, code in readme_blocks("bash"):
        for argv in commands(code):
            _, argv = split_env(argv)
            if argv[:1] == ["imis"] and (err := _parse_error(argv[1:], capsys)):
                bad.append((section, " ".join(argv), err))
    assert bad == []


def test_inline_readme_mentions_name_real_subcommands_and_options():
    # prose such as `imis export MODEL --format onnx -o DIR [--opset 18-23]`: not whole commands, so
    # only the subcommand and each option it names are checked
    bad = []
    for mention in re.findall(r"`imis ([^`]+)`", (REPO / "README.md").read_text(encoding="utf-8")):
        words = mention.replace("[", " ").replace("]", " ").split()
        if words[0] not in SUBCOMMANDS:
            bad.append(f"imis {mention}: no subcommand {words[0]!r}")
            continue
        known = SUBCOMMANDS[words[0]]._option_string_actions
        bad += [f"imis {mention}: no option {w}" for w in words[1:] if w.startswith("-") and w not in known]
    assert bad == []


def test_the_checks_see_a_stale_option(capsys):
    assert _parse_error(["segment", "x.png", "--no-such-flag"], capsys) is not None
    assert _parse_error(["segment", "x.png", "--box", "1,2,3,4", "-o", "m.png"], capsys) is None
