"""`skoracle elf-check`: fail a build whose binaries use instructions the board lacks or that
do not carry the expected build marker / kernel symbols.

Exit codes: 0 clean, 1 findings (forbidden instruction, stale, missing symbol, empty
archive, wrong machine), 2 bad input (not ELF/ar/zip, truncated, corrupt, or nothing to
check: no AArch64 ELF code inside). Static glibc's ifunc-dispatched SVE variants are one
note by default and findings with --strict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from harness.footprint import parse_size
from harness.gate import DEFAULT_PROFILE, PROFILES, ArtifactReport, check_artifact, profile
from harness.gate.ziputil import MAX_UNPACKED_TEXT

_PER_FILE_SHOWN = 5
_NOTES_SHOWN = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "elf-check",
        help="check ELF/.a/.klib/.jar for instructions a CPU lacks, and for a build marker",
        description=(
            "Scan the code of ELF files (executables, shared objects, objects), ar archives "
            "and zip containers (klib, jar; nested containers too) for instructions the CPU "
            "profile lacks (I8MM, BF16, SVE/SVE2, SME on Cortex-A55). Exit 0 clean, 1 "
            "findings, 2 bad input."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="ELF file, .a archive, zip (.klib/.jar) or directory")
    p.add_argument("--cpu", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                   help=f"CPU profile (default {DEFAULT_PROFILE})")
    p.add_argument("--expect-marker", metavar="TEXT",
                   help="every PATH must contain TEXT (ELF data or decompressed zip members); "
                        "one without it is reported STALE (default: no marker check)")
    p.add_argument("--expect-symbol", metavar="NAME", action="append", default=[],
                   help="every PATH must define function NAME in some AArch64 ELF inside "
                        "(repeatable; default: none)")
    p.add_argument("--allow-function", metavar="GLOB", action="append", default=[],
                   help="accept forbidden instructions inside functions matching GLOB: code "
                        "reached only after a runtime CPU check, e.g. glibc's ifunc variants "
                        "'__mem*_a64fx' (repeatable; a stripped file has no names to match; "
                        "default: none)")
    p.add_argument("--strict", action="store_true",
                   help="also fail forbidden words in static glibc's ifunc-dispatched variants "
                        "(__memcpy_a64fx, ...), which by default are one note: they never run "
                        "on a CPU without the feature")
    p.add_argument("--max-unpacked", metavar="SIZE", default=MAX_UNPACKED_TEXT,
                   help="stop when the zip members of one PATH decompress to more than SIZE "
                        "(zip bombs; default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _summary(rep: ArtifactReport) -> str:
    counted = ", ".join(f"{n} {feat}" for feat, n in sorted(rep.counts.items())) or "none"
    return (f"{rep.verdict} {rep.path} [{rep.cpu}]: {rep.elf_files} ELF file(s), "
            f"{rep.archives} archive(s), {_size(rep.code_bytes)} of code; allowed "
            f"instructions counted: {counted}")


def _print_text(reports: list[ArtifactReport]) -> None:
    for rep in reports:
        if rep.error is not None:
            print(f"skoracle elf-check: error: {rep.error}", file=sys.stderr)
            print(f"ERROR {rep.error}")
            continue
        print(_summary(rep))
        shown: dict[str, int] = {}
        for f in rep.findings:
            n = shown.get(f.path, 0)
            shown[f.path] = n + 1
            if n < _PER_FILE_SHOWN:
                print(f"  {f.message}")
        for path, n in shown.items():
            if n > _PER_FILE_SHOWN:
                print(f"  ... {n - _PER_FILE_SHOWN} more finding(s) in {path} (--json lists all)")
        if rep.marker is not None and rep.marker_found_in:
            print(f"  marker {rep.marker!r} found in {rep.marker_found_in}")
        for name, where in sorted(rep.symbols.items()):
            if where:
                print(f"  symbol {name} defined in {where}")
        for note in rep.notes[:_NOTES_SHOWN]:
            print(f"  note: {note}")
        if len(rep.notes) > _NOTES_SHOWN:
            print(f"  note: ... {len(rep.notes) - _NOTES_SHOWN} more note(s) (--json lists all)")


def run(args: argparse.Namespace) -> int:
    prof = profile(args.cpu)
    max_unpacked = parse_size(args.max_unpacked, "--max-unpacked")
    reports = [
        check_artifact(path, prof, args.expect_marker, tuple(args.expect_symbol),
                       tuple(args.allow_function), strict=args.strict,
                       max_unpacked=max_unpacked)
        for path in args.paths
    ]
    code = max(r.exit_code for r in reports)
    try:
        _emit(args, prof.name, code, reports)
    except BrokenPipeError:  # e.g. piped into `head`: the verdict is the exit code
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _emit(args: argparse.Namespace, cpu: str, code: int, reports: list[ArtifactReport]) -> None:
    if args.json:
        json.dump({"cpu": cpu, "exit_code": code,
                   "artifacts": [r.to_json() for r in reports]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        for rep in reports:
            if rep.error is not None:
                print(f"skoracle elf-check: error: {rep.error}", file=sys.stderr)
    else:
        _print_text(reports)
