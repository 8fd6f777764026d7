"""Help that a user can act on, checked on the real parsers (the `board ...` subcommands
have their own checks): every subcommand says what it does and its exit codes, every value
an option takes is named by a word (`--outdir DIR`, never `OUTDIR`), a classpath is
`--classpath CP` everywhere, shapes are one repeatable `--shape`, and defaults are stated."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from harness.cli import build_parser
from harness.reference.cli import build_diff_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


COMMANDS = [(" ".join(path), p) for path, p in _walk(build_parser())
            if path and path[0] != "board"] + [("reference diff", build_diff_parser())]
LEAVES = [(name, p) for name, p in COMMANDS if not _is_group(p)]
VALUE_OPTIONS = [(name, a) for name, p in COMMANDS for a in p._actions
                 if a.option_strings and a.nargs != 0
                 and not isinstance(a, argparse._HelpAction)]


def test_there_is_something_to_check() -> None:
    names = {name for name, _ in LEAVES}
    assert {"run", "selfcheck", "reference", "reference diff", "llama-ref", "jvm parity",
            "board-sim start", "footprint", "fixtures", "elf-check"} <= names
    assert len(VALUE_OPTIONS) > 40


@pytest.mark.parametrize("name, parser", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_subcommand_has_a_description(name: str, parser: argparse.ArgumentParser):
    assert parser.description and len(parser.description.split()) >= 5


@pytest.mark.parametrize("name, parser", LEAVES, ids=[n for n, _ in LEAVES])
def test_every_subcommand_states_its_exit_codes(name: str, parser: argparse.ArgumentParser):
    text = f"{parser.description}\n{parser.epilog or ''}"
    assert re.search(r"exit codes?:?\s*\n?\s*0\b|Exit 0\b", text, re.I), text
    assert re.search(r"\b2\b", text[text.lower().index("exit"):]), "no usage-error code"


@pytest.mark.parametrize("name, action", VALUE_OPTIONS,
                         ids=[f"{n}:{a.option_strings[-1]}" for n, a in VALUE_OPTIONS])
def test_option_values_are_named_by_words(name: str, action: argparse.Action) -> None:
    if action.choices is not None and action.metavar is None:
        return  # argparse lists the choices: {a,b,c}
    # argparse's own name would be the dest upper-cased: KONAN_ROOT, OUTDIR, CLASSPATH
    assert action.metavar, f"{action.option_strings[0]} shows {action.dest.upper()}"


def test_a_classpath_is_cp_and_shapes_are_one_repeatable_option() -> None:
    classpaths = [(n, a) for n, a in VALUE_OPTIONS if "classpath" in a.dest]
    assert {n for n, _ in classpaths} >= {"run", "jvm kernels", "jvm parity"}
    assert all(a.metavar == "CP" and a.option_strings == ["--classpath"] for _, a in classpaths)
    every = [(n, a) for path, p in _walk(build_parser()) for n in [" ".join(path)]
             for a in p._actions if any("shape" in s for s in a.option_strings)]
    assert {n for n, _ in every} >= {"jvm parity", "board kernel-parity"}
    for _, a in every:
        assert a.option_strings == ["--shape"] and isinstance(a, argparse._AppendAction)


def test_reference_states_its_defaults() -> None:
    p = dict(COMMANDS)["reference"]
    helps = {a.option_strings[0]: a.help for a in p._actions if a.option_strings}
    assert "(default packed)" in helps["--load"]
    assert "(default exact;" in helps["--semantics"]
    assert "default 8" in helps["--lanes"] and "default sequential" in helps["--reduction"]
    assert "default: llama.cpp's on this CPU" in helps["--rounding"]


def test_run_has_no_skainet_version_option() -> None:
    p = dict(COMMANDS)["run"]
    assert not [a for a in p._actions if "--skainet-version" in a.option_strings]
