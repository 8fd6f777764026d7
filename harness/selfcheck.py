"""`skoracle selfcheck`: quantize and dequantize every format on generated rows (ordinary and
adversarial), cross-check each against ggml's C library when it is built, print a table.

Exit 0 when every comparison is exact, 1 when any differs, 2 when the C library was
required (--require-c) but cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
from rich.table import Table

from harness.console import make_console
from harness.errors import HarnessError
from oracle import BLOCK_TYPES, dequantize, quantize
from oracle.samples import adversarial_rows, random_rows


@dataclass
class FormatCheck:
    """One format's result: cases compared, mismatching cases, worst round-trip error."""

    qtype: str
    cases: int = 0
    quantize_mismatch: tuple[str, ...] = ()
    dequantize_mismatch: tuple[str, ...] = ()
    max_abs_err: float = 0.0  # relative to the row's largest magnitude
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.quantize_mismatch or self.dequantize_mismatch)


def sample_cases(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cases = adversarial_rows(rng)
    cases["random_normal"] = random_rows(rng, 64, 1024)
    return cases


def check_format(qtype: str, cases: dict[str, np.ndarray], cref=None) -> FormatCheck:
    """Compare the oracle with the C library (when given) on every case; the bytes ggml's
    reference leaves undefined (`reference_defined`) are not compared."""
    from harness.ggml.cref import reference_defined

    res = FormatCheck(qtype)
    qbad, dbad = [], []
    t0 = time.perf_counter()
    for name, x in cases.items():
        raw = quantize(qtype, x)
        y = dequantize(qtype, raw)
        res.cases += 1
        if name.startswith("random"):
            rel = float(np.abs(y - x).max() / np.abs(x).max())
            res.max_abs_err = max(res.max_abs_err, rel)
        if cref is not None:
            defined = reference_defined(qtype, x)
            if not np.array_equal(raw[defined], cref.quantize(qtype, x)[defined]):
                qbad.append(name)
            if not np.array_equal(y.view(np.uint32), cref.dequantize(qtype, raw).view(np.uint32)):
                dbad.append(name)
    res.seconds = time.perf_counter() - t0
    res.quantize_mismatch, res.dequantize_mismatch = tuple(qbad), tuple(dbad)
    return res


def load_cref(required: bool):
    """The C library, or None (with the reason printed) when it is not built here."""
    from harness.ggml.cref import CRef, is_built

    if not is_built() and not required:
        return None, "ggml C library not built (run `python3 -m harness.ggml.cref build`)"
    try:
        return CRef.load(build_if_missing=required), ""
    except HarnessError as exc:
        if required:
            raise
        return None, str(exc)


def run(args: argparse.Namespace) -> int:
    console = make_console(stderr=args.json)  # --json: stdout carries the document only
    cref, why = load_cref(args.require_c)
    if cref is None:
        console.print(f"[yellow]C cross-check skipped:[/] {why}")
    cases = sample_cases(args.seed)
    if args.json:
        results = [check_format(q, cases, cref) for q in BLOCK_TYPES]
        bad = [r.qtype for r in results if not r.ok]
        print(json.dumps({
            "seed": args.seed, "cases_per_format": len(cases), "c_cross_check": cref is not None,
            "c_skipped_because": why or None, "ok": not bad, "exit_code": 1 if bad else 0,
            "formats": [{"format": r.qtype, "cases": r.cases,
                         "quantize_mismatch": list(r.quantize_mismatch),
                         "dequantize_mismatch": list(r.dequantize_mismatch),
                         "max_rel_err_normal": r.max_abs_err, "seconds": round(r.seconds, 4)}
                        for r in results]}, indent=1))
        return 1 if bad else 0
    table = Table(title=f"oracle selfcheck (seed {args.seed}, {len(cases)} cases per format)")
    for col in ("format", "vs ggml C: quantize bytes", "dequantize bits",
                "max |err|/max|x| (normal)", "time"):
        table.add_column(col)
    results = [check_format(q, cases, cref) for q in BLOCK_TYPES]
    for r in results:
        if cref is None:
            qv = dv = "[yellow]not compared[/]"
        else:
            qv, dv = (f"[red]DIFF {bad}" if bad else "[green]equal[/]"
                      for bad in (r.quantize_mismatch, r.dequantize_mismatch))
        table.add_row(r.qtype, qv, dv, f"{r.max_abs_err:.2e}", f"{r.seconds:.2f}s")
    console.print(table)
    bad = [r.qtype for r in results if not r.ok]
    if bad:
        console.print(f"[red]selfcheck FAILED for {', '.join(bad)}[/]")
        return 1
    verdict = "bit-exact with ggml's C reference" if cref else "ran (no C cross-check)"
    console.print(f"[green]selfcheck passed:[/] {len(results)} formats {verdict}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="quantize/dequantize every format, cross-check with C",
                       description=__doc__.split("\n\n")[0], epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, metavar="N", help="sample seed (default 0)")
    p.add_argument("--require-c", action="store_true",
                   help="build/load ggml's C library and fail (exit 2) if impossible")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (per format: cases, mismatching cases, worst "
                        "round-trip error) instead of the table")
    p.set_defaults(func=run)


EXIT_CODES = """\
exit codes:
  0  every comparison exact (or, without the C library, every format ran)
  1  a format differs from ggml's C code
  2  --require-c and the C library cannot be built or loaded"""
