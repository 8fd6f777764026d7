"""Peak working memory of `quantize` per format, as multiples of the input's float32 size,
against the estimate `quantize` uses to refuse an input that cannot fit in memory
(oracle.quants.WORK_PER_ELEMENT_F32). The estimate must cover every measured peak.

    python3 bench/bench_quantize_memory.py [--elements 2097152]

Peaks are NumPy's own allocations as tracemalloc sees them, for float32 input (no copy)
and float64 input (one float32 copy, which the estimate adds separately).
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np
from rich.console import Console
from rich.table import Table

from oracle import QTYPES, quantize
from oracle.quants import WORK_PER_ELEMENT_F32


def peak_ratio(name: str, x: np.ndarray) -> float:
    """Peak bytes allocated while quantizing x, over x.size float32 bytes."""
    tracemalloc.start()
    try:
        quantize(name, x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (4 * x.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--elements", type=int, default=1 << 21,
                    help="input elements, a multiple of 256 (default %(default)s)")
    args = ap.parse_args()
    x32 = np.random.default_rng(0).standard_normal(args.elements).astype(np.float32)
    x64 = x32.astype(np.float64)
    table = Table(title=f"quantize peak memory / float32 input size ({args.elements} elements)")
    for col in ("format", "float32 input", "float64 input", "estimate (+1 for float64)",
                "covered"):
        table.add_column(col)
    for name in QTYPES:
        r32, r64 = peak_ratio(name, x32), peak_ratio(name, x64)
        est = WORK_PER_ELEMENT_F32[name]
        ok = r32 <= est and r64 <= est + 1
        table.add_row(name, f"{r32:.2f}x", f"{r64:.2f}x", f"{est:.2f}x",
                      "[green]yes[/]" if ok else "[red]NO[/]")
    Console().print(table)


if __name__ == "__main__":
    main()
