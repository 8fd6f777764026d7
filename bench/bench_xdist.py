"""The JVM parity matrix as pytest items, spread by pytest-xdist: `-n 2` against `-n 0`
(one process) in the same run, on this machine's cores.

The matrix is `jvm parity --lanes 4,8,16 --jit pinned,warm` on the project's own fixture
kernels (fixtures/jvm, never SKaiNET), as `pytest --skainet-parity --skainet-fixtures`
items; the kernel that never returns is left out (-k), its items would only measure the
hang timeout. Each pytest run starts its own JVM workers (one per lanes x JIT mode and
process), as a user's run does. Prints both wall times, the item counts and outcomes, and
the ratio.

    python3 bench/bench_xdist.py [--workers 2] [--shape 16x256x2 ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ["--skainet-parity", "--skainet-fixtures", "--skainet-lanes", "4,8,16",
          "--skainet-jit", "pinned,warm", "-k", "fixture-jvm and not NeverReturns", "-q",
          "-p", "no:cacheprovider"]


def run(workers: int, shapes: list[str]) -> tuple[float, str]:
    """Wall seconds of one pytest run of the matrix with `-n workers`, and its last line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, "-m", "pytest", *MATRIX, "-n", str(workers)]
    for s in shapes:
        args += ["--skainet-shape", s]
    with tempfile.TemporaryDirectory() as cwd:  # no test files: the items alone
        t0 = time.perf_counter()
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
        secs = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    if proc.returncode not in (0, 1) or not lines:
        sys.exit(f"bench_xdist: pytest -n {workers} exited {proc.returncode}:\n"
                 f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return secs, lines[-1].strip("= ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="xdist workers (default 2)")
    ap.add_argument("--shape", action="append", default=[], metavar="OUTxINxBATCH",
                    help="case shapes (default: the JVM matrix's four)")
    a = ap.parse_args()
    print(f"JVM parity matrix as pytest items (lanes 4,8,16 x jit pinned,warm, fixture "
          f"kernels, not SKaiNET), {os.cpu_count()} cores, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    one, one_line = run(0, a.shape)
    print(f"  -n 0: {one:7.1f} s  ({one_line})")
    many, many_line = run(a.workers, a.shape)
    print(f"  -n {a.workers}: {many:7.1f} s  ({many_line})")
    print(f"  speed-up -n {a.workers} vs -n 0: {one / many:.2f}x (load average at the end "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())})")


if __name__ == "__main__":
    main()
