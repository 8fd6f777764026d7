"""The JVM parity matrix as pytest items, spread by pytest-xdist: `-n 2` against `-n 0`
(one process) in the same run, on this machine's cores.

The matrix is `jvm parity --lanes 4,8,16 --jit pinned,warm` on the project's own fixture
kernels (fixtures/jvm, never SKaiNET), as `pytest --skainet-parity --skainet-fixtures`
items; the kernel that never returns is left out (-k), its items would only measure the
hang timeout. Each pytest run starts its own JVM workers (one per lanes x JIT mode and
process), as a user's run does. Prints both wall times, the item counts and outcomes, and
the ratio, for xdist's default `--dist load` and for `--dist loadgroup` (each JVM
configuration on one worker: fewer JVM starts), with the CPU seconds each run used (the
warm mode's repeats until C2 has compiled the kernel grow when cores are shared, and each
worker pays pytest's start, collection and its own JVM starts).

    python3 bench/bench_xdist.py [--workers 2] [--shape 16x256x2 ...]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ["--skainet-parity", "--skainet-fixtures", "--skainet-lanes", "4,8,16",
          "--skainet-jit", "pinned,warm", "-k", "fixture-jvm and not NeverReturns", "-q",
          "-p", "no:cacheprovider"]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's waited-for children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(workers: int, shapes: list[str], dist: str = "load") -> tuple[float, float, str]:
    """Wall and CPU seconds of one pytest run of the matrix with `-n workers` (and
    `--dist`), and its last line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, "-m", "pytest", *MATRIX, "-n", str(workers)]
    if workers:
        args += ["--dist", dist]
    for s in shapes:
        args += ["--skainet-shape", s]
    with tempfile.TemporaryDirectory() as cwd:  # no test files: the items alone
        t0, c0 = time.perf_counter(), cpu_seconds()
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
        secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    if proc.returncode not in (0, 1) or not lines:
        sys.exit(f"bench_xdist: pytest -n {workers} exited {proc.returncode}:\n"
                 f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return secs, cpu, lines[-1].strip("= ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="xdist workers (default 2)")
    ap.add_argument("--shape", action="append", default=[], metavar="OUTxINxBATCH",
                    help="case shapes (default: the JVM matrix's four)")
    a = ap.parse_args()
    print(f"JVM parity matrix as pytest items (lanes 4,8,16 x jit pinned,warm, fixture "
          f"kernels, not SKaiNET), {os.cpu_count()} cores, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    one, one_cpu, one_line = run(0, a.shape)
    print(f"  -n 0: {one:6.1f} s wall, {one_cpu:6.1f} s CPU  ({one_line})")
    for dist in ("load", "loadgroup"):  # loadgroup: one JVM configuration per worker
        many, cpu, many_line = run(a.workers, a.shape, dist)
        print(f"  -n {a.workers} --dist {dist}: {many:6.1f} s wall, {cpu:6.1f} s CPU  "
              f"({many_line}); speed-up vs -n 0: {one / many:.2f}x")
    print(f"  load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
          f"(other processes on the machine share its {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
