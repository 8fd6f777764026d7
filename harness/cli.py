"""`skoracle`: one CLI, thin over the harness modules.

Each subcommand lives in its own module that exposes `register(subparsers)`; the parser it
adds sets `func`, which takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from harness.errors import INPUT_ERRORS, exit_code_of
from oracle.formats import OracleError

#: Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "harness.run",
    "harness.selfcheck",
    "harness.golden.cli",
    "harness.ggml.llamaref",
    "harness.gate.cli",
    "harness.gate.stale",
    "harness.board.cli",
    "harness.board.sim_cli",
    "harness.board.farm_cli",
    "harness.footprint",
    "harness.reference.cli",
    "harness.jvm.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skoracle",
        description="Bit-exact oracle and parity harness for SKaiNET packed quantized weights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # building the parser imports every command's module: Ctrl-C may land there
        if argv[:2] == ["reference", "diff"]:  # its own parser: its own help and options
            from harness.reference.cli import build_diff_parser

            args = build_diff_parser().parse_args(argv[2:])
        else:
            args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("skoracle: interrupted", file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except (*INPUT_ERRORS, OracleError) as exc:
        print(f"skoracle {args.command}: error: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    except KeyboardInterrupt:
        print(f"skoracle {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
