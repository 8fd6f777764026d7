"""JVM leg figures on the project's fixture kernels (never SKaiNET): JVM start and first-case
time, cases/s of a warm worker, and the wall time of the full matrix (every fixture format x
4 shapes x 3 lane counts x 2 JIT modes) on this machine's cores.

    python3 bench/bench_jvm.py [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.jvm.discovery import discover  # noqa: E402
from harness.jvm.fixtures import fixture_classpath  # noqa: E402
from harness.jvm.jdk import find_jdk  # noqa: E402
from harness.jvm.parity import DEFAULT_SHAPES, case_data, run_matrix  # noqa: E402
from harness.jvm.worker import JvmConfig, Worker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=5.0, help="per-case limit (the hanging "
                    "fixture costs this once per configuration)")
    args = ap.parse_args()
    jdk = find_jdk()
    cp = fixture_classpath(jdk)
    # the kernels that test the surfaces (a 4-lane overread, a write past the row, a process
    # left running) are judged in tests/test_jvm_cli.py, not timed here
    kernels = [k for k in discover(cp) if k.short not in (
        "Overreads4LaneQ8_0MatmulKernel", "WritesPastRowQ8_0MatmulKernel",
        "LeavesProcessQ8_0MatmulKernel")]
    x, _, arr = case_data("Q8_0", DEFAULT_SHAPES[0], 0)
    o, i = DEFAULT_SHAPES[0][:2]
    with Worker(JvmConfig(str(jdk.home), cp, "auto", "pinned")) as wk:
        t0 = time.perf_counter()
        info = wk.start()
        r = wk.call("skoracle.fixture.PanamaVectorQ8_0MatmulKernel", x, arr, i, o)
        first = time.perf_counter() - t0
        n, t1 = 200, time.perf_counter()
        for _ in range(n):
            wk.call("skoracle.fixture.ScalarQ8_0MatmulKernel", x, arr, i, o)
        rate = n / (time.perf_counter() - t1)
    print(f"{jdk.describe()}")
    print(f"JVM start {info['wall_start_s']:.2f} s (JNI create {info['start_s']:.2f} s); "
          f"start + first case {first:.2f} s ({r.status})")
    print(f"warm worker: {rate:.0f} cases/s ({o}x{i} Q8_0 batch {x.shape[0]}, scalar)")
    fmts = sorted({k.fmt for k in kernels if k.fmt})
    t0 = time.perf_counter()
    run = run_matrix(jdk, cp, kernels, lanes=("4", "8", "16"), jit=("pinned", "warm"),
                     timeout=args.timeout)
    wall = time.perf_counter() - t0
    ran = sum(c.verdict not in ("skipped", "not-runnable") for c in run.cases)
    print(f"full matrix: {len(kernels)} fixture kernels ({', '.join(fmts)}) x "
          f"{len(DEFAULT_SHAPES)} shapes x 3 lane counts x 2 modes = {len(run.cases)} cells "
          f"({ran} run, the rest skipped: lanes this CPU lacks / after a hang), "
          f"{wall:.1f} s wall on {os.cpu_count()} cores (goal < 60 s)")


if __name__ == "__main__":
    main()
