"""The long fuzz run: 10 000 mutated inputs per parser (GGUF, ELF, ar, zip, klib nesting),
each parser in a child capped at 1.5 GiB of address space. Prints per parser the cases,
how many were accepted, the project errors by kind, unexpected outcomes, the slowest case
and the worker's peak RSS; writes them to bench/results/fuzz.json, and with --readme
rewrites the README's fuzz table (the block between its bench_fuzz markers) from them, so
the README's figures are always the benchmark's own.

    python3 bench/bench_fuzz.py [--cases 10000] [--seed 0] [--parsers gguf,elf,ar,zip,klib]
                                [--json-out FILE] [--readme]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.atomic import write_atomic  # noqa: E402
from harness.fuzz import (  # noqa: E402
    PARSERS,
    format_result,
    gate_seeds,
    gguf_seeds,
    readme_table,
    replace_readme_block,
    run_parser,
)
from harness.gate.testbins import build_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fuzz.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000, help="cases per parser (10000)")
    ap.add_argument("--seed", type=int, default=0, help="mutation seed (0)")
    ap.add_argument("--parsers", default=",".join(PARSERS),
                    help=f"comma-separated subset of {','.join(PARSERS)} (all)")
    ap.add_argument("--json-out", metavar="FILE", default=str(RESULTS),
                    help="where the figures go (default bench/results/fuzz.json)")
    ap.add_argument("--readme", action="store_true",
                    help="rewrite README.md's fuzz table from this run (every parser only)")
    args = ap.parse_args()
    parsers = args.parsers.split(",")
    if args.readme and sorted(parsers) != sorted(PARSERS):
        ap.error("--readme needs every parser (the table has a row for each)")
    results = []
    with tempfile.TemporaryDirectory(prefix="skoracle-bench-fuzz-") as tmp:
        root = Path(tmp)
        seeds = gate_seeds(build_all(root / "bins"))
        seeds["gguf"] = gguf_seeds(root)
        bad = 0
        for parser in parsers:
            result = run_parser(parser, seeds[parser], args.cases, seed=args.seed,
                                case_seconds=5.0, timeout=3600)
            print(format_result(result), flush=True)
            for line in result.unexpected[:10]:
                print(f"  UNEXPECTED {line}")
            bad += len(result.unexpected)
            results.append(dataclasses.asdict(result))
    doc = {"measured": time.strftime("%Y-%m-%d", time.gmtime()),
           "machine": f"a {os.cpu_count()}-core {platform.machine()} machine, load average "
                      f"{os.getloadavg()[0]:.1f}",
           "seed": args.seed, "cases_per_parser": args.cases, "results": results}
    write_atomic(Path(args.json_out), (json.dumps(doc, indent=1) + "\n").encode())
    print(f"figures: {args.json_out}")
    if args.readme:
        readme = ROOT / "README.md"
        text = replace_readme_block(readme.read_text(), readme_table(doc))
        write_atomic(readme, text.encode())
        print(f"README.md's fuzz table rewritten from {args.json_out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
