"""One grammar for every subcommand, checked on the real parsers so a later option that
breaks it fails here: every option has help that shows its default, `--json` is a flag
that prints to stdout (a file is `--json-out FILE`), a board profile is `--profile`,
`run --help` lists the legs and exit codes, `board --help` the profile keys, and the
README names the keys the code reads."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.board.profile import _KINDS as PROFILE_KEYS
from harness.cli import build_parser, main
from harness.run import DEFAULT_ORDER

ROOT = Path(__file__).resolve().parent.parent
FLAGS = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction)


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
          ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(build_parser()))
OPTIONS = [(" ".join(path) or "skoracle", action) for path, parser in COMMANDS
           for action in parser._actions
           if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction)]


def test_there_is_something_to_check() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "footprint", "fixtures", "elf-check", "stale-check", "board run",
            "board push", "board-sim start", "selfcheck"} <= names
    assert len(OPTIONS) > 80


@pytest.mark.parametrize("command, action", OPTIONS,
                         ids=[f"{c}:{a.option_strings[0] if a.option_strings else a.dest}"
                              for c, a in OPTIONS])
def test_every_option_has_help_showing_its_default(command: str,
                                                   action: argparse.Action) -> None:
    assert action.help and action.help.strip(), "no help text"
    if isinstance(action, FLAGS) or not action.option_strings or action.required:
        return  # a flag's default is off; a positional or required option has none
    if action.default in (None, []):
        assert "default" in action.help, "say what happens when the option is not given"
    else:
        assert "%(default)" in action.help or str(action.default) in action.help, \
            f"default {action.default!r} not shown"


@pytest.mark.parametrize("command, action", [(c, a) for c, a in OPTIONS
                                             if any("json" in s for s in a.option_strings)])
def test_json_is_a_flag_and_a_json_file_is_json_out(command: str,
                                                    action: argparse.Action) -> None:
    if "--json" in action.option_strings:
        assert action.nargs == 0 and action.const is True, "--json takes no argument"
    else:
        assert action.option_strings == ["--json-out"] and action.metavar == "FILE"


def test_a_board_profile_is_profile_everywhere() -> None:
    profile_options = [(c, a) for c, a in OPTIONS if "profile" in a.dest]
    assert {c for c, _ in profile_options} >= {"run", "board run", "board check"}
    for command, action in profile_options:
        assert action.option_strings[0] == "--profile", command
    run_profile = next(a for c, a in profile_options if c == "run")
    assert run_profile.option_strings == ["--profile", "--board-profile"]  # old name kept


def test_run_help_lists_the_legs_and_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    legs = out[out.index("legs, in the order they run"):out.index("exit codes:")]
    assert re.findall(r"^  (\w+) ", legs, re.M) == list(DEFAULT_ORDER)
    codes = out[out.index("exit codes:"):]
    assert re.findall(r"^  (\d+) ", codes, re.M) == ["0", "1", "2", "130"]


def test_board_help_lists_every_profile_key(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["board", "--help"])
    out = capsys.readouterr().out
    keys = re.findall(r"^    (\w+) = ", out, re.M)
    assert sorted(keys) == sorted(PROFILE_KEYS)


def test_readme_names_the_profile_keys_the_code_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    sentence = readme[readme.index("Profile keys are documented"):]
    sentence = sentence[:sentence.index(".\n")]
    assert sorted(re.findall(r"`(\w+)`", sentence)) == sorted(PROFILE_KEYS)
    assert "--board-profile F.toml" not in readme and "timeouts" not in sentence
