"""Oracle quantize throughput on 4 Mi float32 elements per format, against gguf-py and
ggml's C reference measured in the same run. Prints elements/s and the ratio the oracle
issue sets a target for: K-quant quantize >= 0.25x the C reference. (Dequantize is in
bench/bench_speed.py, with the other speed goals.)

    python3 bench/bench_oracle.py [--elements 4194304] [--repeat 5]

Every figure is the best of `repeat` timed calls, and the peers are timed in the same
process on the same data, so a busy machine moves the ratios less than the raw rates.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gq
from rich.console import Console
from rich.table import Table
from timing import best_of  # bench/timing.py (scripts run from bench/)

from harness.ggml.cref import CRef
from oracle import PACKED_TYPES, quantize

KQUANT_QUANT_TARGET = 0.25  # oracle / C, K-quants
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def measure(qt: str, x: np.ndarray, cref: CRef, repeat: int) -> dict[str, float]:
    """Elements/s of quantize for the oracle, gguf-py and the C library."""
    gt = GGMLQuantizationType[qt]
    n = x.size
    rate = {
        "q_or": n / best_of(lambda: quantize(qt, x), repeat),
        "q_c": n / best_of(lambda: cref.quantize(qt, x), repeat),
    }
    try:
        rate["q_gg"] = n / best_of(lambda: gq.quantize(x, gt), repeat)
    except NotImplementedError:  # gguf-py has no K-quant quantizer
        rate["q_gg"] = float("nan")
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cref = CRef.load()
    n = args.elements
    x = np.random.default_rng(0).standard_normal((n // 1024, 1024)).astype(np.float32)
    table = Table(title=f"oracle quantize, {n:,} elements, best of {args.repeat} (Melem/s)")
    for col in ("format", "q oracle", "q gguf-py", "q C", "q oracle/C"):
        table.add_column(col, justify="right")
    missed = []
    for qt in PACKED_TYPES:
        rate = measure(qt, x, cref, args.repeat)
        mel = {k: "n/a" if np.isnan(v) else f"{v / 1e6:.1f}" for k, v in rate.items()}
        q_vs_c = rate["q_or"] / rate["q_c"]
        if qt in K_QUANTS and q_vs_c < KQUANT_QUANT_TARGET:
            missed.append(f"{qt} quantize {q_vs_c:.2f}x C < {KQUANT_QUANT_TARGET}x")
        table.add_row(qt, mel["q_or"], mel["q_gg"], mel["q_c"], f"{q_vs_c:.2f}x")
    console = Console(width=140)
    console.print(table)
    console.print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
