"""The long fuzz run: 10 000 mutated inputs per parser (GGUF, ELF, ar, zip, klib nesting),
each parser in a child capped at 1.5 GiB of address space. Prints per parser the cases,
how many were accepted, the project errors by kind, unexpected outcomes, the slowest case
and the worker's peak RSS.

    python3 bench/bench_fuzz.py [--cases 10000] [--seed 0] [--parsers gguf,elf,ar,zip,klib]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.fuzz import PARSERS, format_result, gate_seeds, gguf_seeds, run_parser  # noqa: E402
from harness.gate.testbins import build_all  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000, help="cases per parser (10000)")
    ap.add_argument("--seed", type=int, default=0, help="mutation seed (0)")
    ap.add_argument("--parsers", default=",".join(PARSERS),
                    help=f"comma-separated subset of {','.join(PARSERS)} (all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="skoracle-bench-fuzz-") as tmp:
        root = Path(tmp)
        seeds = gate_seeds(build_all(root / "bins"))
        seeds["gguf"] = gguf_seeds(root)
        bad = 0
        for parser in args.parsers.split(","):
            result = run_parser(parser, seeds[parser], args.cases, seed=args.seed,
                                case_seconds=5.0, timeout=3600)
            print(format_result(result), flush=True)
            for line in result.unexpected[:10]:
                print(f"  UNEXPECTED {line}")
            bad += len(result.unexpected)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
