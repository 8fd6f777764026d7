"""Benchmark: the oracle's speed goals, every ratio measured against its peer in one run.

    python3 bench/bench_speed.py [--n 32] [--model M.gguf] [--repeat 3] [--smoke]

Prints one table (and the machine's load average before and after, since the peers and the
oracle share its cores with whatever else runs):

  - whole-model greedy decode on the FunctionGemma-shaped GGUF (harness.golden.tinygemma,
    generated once into the cache): llama.cpp with 1 thread (the yardstick), then
    `skoracle reference` under `fast`, `exact` and the SKaiNET orders, each decode in its
    own process so that its peak RSS (VmHWM) is its own. Goals: fast >= 0.25x llama.cpp,
    exact and every SKaiNET order >= 0.1x, packed peak RSS < 450 MB;
  - oracle.dequantize of every packed format at 512x4096 and 4096x1024 against gguf-py's
    dequantize and ggml's C dequantize_row_* (one call over all rows, the cref build).
    Goals: >= 2x gguf-py, >= 0.5x ggml C;
  - the lm_head (262144 x 640 Q8_0) under `exact` against ggml's C mul_mat (quantize x,
    vec_dot per row; bench_kernels.GgmlMatmul). Goal: <= 3x the C time.

Every timing is the best of `--repeat` (decodes: one run each; llama.cpp runs before each
reference decode and once after, and its fastest run is the yardstick). A goal that is
missed says by how much. `--smoke` runs the same code on tiny sizes (the golden tiny model,
2 tokens, small matrices) so CI can check the table without the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_kernels import GgmlMatmul  # bench/ is sys.path[0] when run as a script
from timing import best_of

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oracle import PACKED_TYPES, dequantize, native, qtype, quantize  # noqa: E402

PROMPT = [2, 105, 2364, 107]
SMOKE_PROMPT = [2, 105]  # ids inside the tiny model's 512-token vocabulary
#: semantics decoded by the reference, and the ratio to llama.cpp each must reach
DECODE_GOALS = {"fast": 0.25, "exact": 0.1, "skainet_neon": 0.1, "skainet_scalar": 0.1,
                "skainet_panama": 0.1}
RSS_GOAL = 450e6
DEQUANT_SHAPES = ((512, 4096), (4096, 1024))
DEQUANT_VS_GGUF, DEQUANT_VS_C = 2.0, 0.5
LM_HEAD = (262144, 640)
LM_HEAD_GOAL = 3.0  # exact time / ggml C time, at most


@dataclass
class Row:
    what: str
    value: str
    peer: str
    ratio: float | None  # higher is better, compared with `goal`
    goal: float | None
    shown: str = ""  # how the ratio reads (default: "0.31x")

    def verdict(self) -> str:
        if self.ratio is None or self.goal is None:
            return "n/a"
        if self.ratio >= self.goal:
            return "met"
        return f"MISSED by {(1 - self.ratio / self.goal) * 100:.0f}%"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def decode_rows(model: Path, n: int, prompt: list[int]) -> list[Row]:
    """One reference decode per semantics, each in its own process, with a llama.cpp decode
    before each and one after: the yardstick is the fastest llama.cpp run, so a busy
    moment slows the peer no more than the oracle (the ratios err against the oracle)."""
    from harness.ggml import llamacpp, llamaref

    built = llamacpp.is_built()
    llama_runs: list[float] = []

    def llama() -> None:
        if built:
            llama_runs.append(llamaref.decode(model, prompt, n, threads=1).tok_per_s)

    reps = {}
    for sem in DECODE_GOALS:
        llama()
        reps[sem] = reference(model, n, sem, prompt)
    llama()
    best = max(llama_runs) if llama_runs else None
    rows = [Row("llama.cpp, 1 thread", f"{best:.2f} tok/s" if best else "not built",
                f"best of {len(llama_runs)} runs" if best else
                "python3 -m harness.ggml.llamacpp build", None, None)]
    for sem, goal in DECODE_GOALS.items():
        rate, rss = reps[sem]["tok_per_s"], reps[sem]["peak_rss_bytes"]
        rows.append(Row(f"reference `{sem}`", f"{rate:.2f} steps/s", "llama.cpp",
                        rate / best if best else None, goal))
        rows.append(Row(f"  packed peak RSS, {n}-token `{sem}`", f"{rss / 1e6:.0f} MB",
                        "450 MB", RSS_GOAL / rss, 1.0, f"{rss / RSS_GOAL:.2f} of it"))
    return rows


def reference(model: Path, n: int, semantics: str, prompt: list[int]) -> dict:
    tokens = ",".join(map(str, prompt))
    r = subprocess.run([sys.executable, "-m", "harness", "reference", str(model), "--tokens",
                        tokens, "--n", str(n), "--semantics", semantics, "--json"],
                       capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    if r.returncode:
        raise SystemExit(f"reference decode failed ({semantics}):\n{r.stderr}")
    return json.loads(r.stdout)


def c_dequantize(cref: object, fmt: str, raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """ggml's dequantize_row_<fmt> over every row at once (the rows are contiguous), into a
    new array as the oracle and gguf-py return one (so all three pay the allocation)."""
    out = np.empty(shape, np.float32)
    cref._row_fns(qtype(fmt))[1](raw.ctypes.data, out.ctypes.data, out.size)
    return out


def dequant_rows(shapes: tuple[tuple[int, int], ...], repeat: int) -> list[Row]:
    from gguf import GGMLQuantizationType
    from gguf import quants as gq

    from harness.ggml.cref import CRef

    try:
        cref = CRef.load(build_if_missing=False)
    except Exception:  # the table says the peer is missing; it does not hide it
        cref = None
    rows = []
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        for fmt in PACKED_TYPES:
            raw = quantize(fmt, x)
            t_or = best_of(lambda f=fmt, r=raw: dequantize(f, r), repeat)
            gt = GGMLQuantizationType[fmt]
            t_gg = best_of(lambda r=raw, g=gt: gq.dequantize(r, g), repeat)
            label = f"dequantize {fmt} {shape[0]}x{shape[1]}"
            rate = f"{x.size / t_or / 1e6:.0f} Melem/s"
            rows.append(Row(label, rate, "gguf-py", t_gg / t_or, DEQUANT_VS_GGUF))
            label = f"  {fmt} {shape[0]}x{shape[1]}, same"
            if cref is None:
                rows.append(Row(label, "", "ggml C: not built", None, DEQUANT_VS_C))
                continue
            t_c = best_of(lambda f=fmt, r=raw, s=shape: c_dequantize(cref, f, r, s), repeat)
            rows.append(Row(label, "", "ggml C dequantize_row", t_c / t_or, DEQUANT_VS_C))
    return rows


def lm_head_rows(rows: int, cols: int, repeat: int) -> list[Row]:
    from kernels_ref import matmul_wt
    from oracle.samples import random_q8_0_matrix

    raw = random_q8_0_matrix(np.random.default_rng(0), rows, cols)
    x = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
    t_exact = best_of(lambda: matmul_wt(x, raw, "Q8_0", rows, cols), repeat)
    label = f"lm_head {rows}x{cols} Q8_0 `exact`"
    try:
        g = GgmlMatmul(raw, x, 1)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return [Row(label, f"{t_exact * 1e3:.0f} ms", f"ggml C: {exc}", None, 1 / LM_HEAD_GOAL)]
    try:
        t_c = best_of(g, repeat)
    finally:
        g.close()
    return [Row(label, f"{t_exact * 1e3:.0f} ms", f"ggml C vec_dot {t_c * 1e3:.0f} ms",
                t_c / t_exact, 1 / LM_HEAD_GOAL, f"{t_exact / t_c:.2f}x the C time")]


def print_table(rows: list[Row]) -> None:
    print(f"| {'what':<46} | {'oracle':>16} | {'peer':<30} | {'ratio':>16} | {'goal':>6} | "
          "verdict |")
    print(f"|{'-' * 48}|{'-' * 18}:|{'-' * 32}|{'-' * 17}:|{'-' * 7}:|---------|")
    for r in rows:
        ratio = r.shown or ("" if r.ratio is None else f"{r.ratio:.2f}x")
        goal = "" if r.goal is None else (f">= {r.goal:g}x" if r.goal != 1.0 or not r.shown
                                          else "< 1")
        if r.what.startswith("lm_head"):
            goal = f"<= {LM_HEAD_GOAL:g}x"
        print(f"| {r.what:<46} | {r.value:>16} | {r.peer:<30} | {ratio:>16} | {goal:>6} | "
              f"{r.verdict()} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="tokens to decode (default 32)")
    ap.add_argument("--model", type=Path, help="a Gemma-3 GGUF (default: FunctionGemma-shaped)")
    ap.add_argument("--repeat", type=int, default=5, help="timings per figure (default 5)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the table only")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.smoke:
        model = args.model or ROOT / "fixtures" / "golden" / "tiny-gemma3.gguf"
        n, shapes, head, repeat = 2, ((8, 512), (16, 256)), (512, 640), 1
        prompt = SMOKE_PROMPT
    else:
        from harness.golden import tinygemma

        model = args.model or tinygemma.cached_model(tinygemma.FUNCTIONGEMMA,
                                                     "functiongemma-shaped")
        n, shapes, head, repeat = args.n, DEQUANT_SHAPES, LM_HEAD, args.repeat
        prompt = PROMPT
    start, t0 = load(), time.perf_counter()
    print(f"model: {model.name}; {n}-token greedy decode after {prompt}; compiled twin "
          f"{'in use' if native.available() else 'NOT available (NumPy definitions)'}")
    print(f"load average at start: {start} ({os.cpu_count()} cores)")
    rows = (decode_rows(model, n, prompt) + dequant_rows(shapes, repeat)
            + lm_head_rows(*head, repeat))
    print_table(rows)
    missed = [r for r in rows if r.verdict().startswith("MISSED")]
    print(f"load average at end: {load()}; {time.perf_counter() - t0:.0f} s")
    print(f"goals: {len(rows) - len(missed) - sum(r.verdict() == 'n/a' for r in rows)} met, "
          f"{len(missed)} missed" + "".join(f"\n  missed: {r.what.strip()} vs {r.peer} "
                                            f"{r.verdict()[7:]}" for r in missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
