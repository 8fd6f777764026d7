"""Oracle throughput on 4 Mi float32 elements per format, against gguf-py and ggml's C
reference measured in the same run. Prints elements/s and the ratios the oracle issue sets
targets for: dequantize >= 1.5x gguf-py; K-quant quantize >= 0.25x the C reference.

    python3 bench/bench_oracle.py [--elements 4194304] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gq
from rich.console import Console
from rich.table import Table

from harness.cref import CRef
from oracle import PACKED_TYPES, dequantize, quantize


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cref = CRef.load()
    n = args.elements
    x = np.random.default_rng(0).standard_normal((n // 1024, 1024)).astype(np.float32)
    table = Table(title=f"oracle throughput, {n:,} elements, best of {args.repeat} (Melem/s)")
    for col in ("format", "q oracle", "q gguf-py", "q C", "q oracle/C", "dq oracle",
                "dq gguf-py", "dq C", "dq oracle/gguf-py", "dq oracle/C"):
        table.add_column(col, justify="right")
    for qt in PACKED_TYPES:
        gt = GGMLQuantizationType[qt]
        raw = quantize(qt, x)
        rate = {}
        rate["q_or"] = n / best_of(lambda: quantize(qt, x), args.repeat)
        rate["q_c"] = n / best_of(lambda: cref.quantize(qt, x), args.repeat)
        try:
            rate["q_gg"] = n / best_of(lambda: gq.quantize(x, gt), args.repeat)
        except NotImplementedError:
            rate["q_gg"] = float("nan")
        rate["d_or"] = n / best_of(lambda: dequantize(qt, raw), args.repeat)
        rate["d_gg"] = n / best_of(lambda: gq.dequantize(raw, gt), args.repeat)
        rate["d_c"] = n / best_of(lambda: cref.dequantize(qt, raw), args.repeat)

        def m(k):
            return "n/a" if np.isnan(rate[k]) else f"{rate[k] / 1e6:.1f}"

        table.add_row(qt, m("q_or"), m("q_gg"), m("q_c"), f"{rate['q_or'] / rate['q_c']:.2f}x",
                      m("d_or"), m("d_gg"), m("d_c"), f"{rate['d_or'] / rate['d_gg']:.2f}x",
                      f"{rate['d_or'] / rate['d_c']:.2f}x")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
