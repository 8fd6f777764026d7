"""Board farm figures, measured on the farm-in-a-box (labgrid coordinator + exporter + two
boards-in-a-box on this machine) in one run:

- `board kernel-parity --fixture` spread over the pool's 2 boards (`--lg-pool`) against the
  same command on 1 board of the same farm (`--lg-place`): wall-clock seconds of each
  (best of --repeat, whole CLI: lease, connect, cases, release) and the ratio 1-board /
  2-board. On a 2-core machine each board-in-a-box is qemu on one core, so the ceiling is 2;
  the parts that do not spread (the CLI's start, building the driver, the lease, the
  reference kernels on the host) pull it down.
- the time from `skoracle farm-sim start --boards 2` to the first case of a
  kernel-parity run on the farm (start printed up; the run's first case line), and the
  start alone.

    python3 bench/bench_farm.py [--repeat 2] [--formats Q8_0,Q4_0,Q4_K]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import best_of  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


def skoracle(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *args], env=ENV, cwd=ROOT,
                            text=True, **kw)


def kernel_parity(farm: dict, formats: str | None, *where: str) -> None:
    argv = ["board", "kernel-parity", "--fixture", "--json", "--lg-coordinator",
            farm["coordinator"], "--profile", farm["profile"], *where]
    if formats:
        argv += ["--formats", formats]
    proc = skoracle(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode not in (0, 1) or not out:  # 1: the fixture's deliberate FAIL cases
        raise SystemExit(f"kernel-parity failed ({proc.returncode}): {err[-800:]}")
    want = 2 if "--lg-pool" in where else 1
    boards = {c["board"] for c in json.loads(out)["cases"]}
    if len(boards - {""}) not in ({0} if want == 1 else {2}):
        raise SystemExit(f"expected {want} board(s), cases ran on {sorted(boards)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2, help="runs per figure, best taken")
    ap.add_argument("--formats", default=None,
                    help="kernel-parity --formats (default: every kernel of the fixture)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-farm-") as tmp:
        d = Path(tmp) / "farm"
        t0 = time.perf_counter()
        start = skoracle("farm-sim", "start", "--boards", "2", "--dir", str(d), "--json",
                         stdout=subprocess.PIPE)
        out, _ = start.communicate()
        t_up = time.perf_counter() - t0
        if start.returncode != 0:
            raise SystemExit("farm-sim start failed")
        farm = json.loads(out)
        try:
            first = skoracle("board", "kernel-parity", "--fixture", "--lg-coordinator",
                             farm["coordinator"], "--lg-pool", farm["pool"], "--profile",
                             farm["profile"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
            t_first = None
            for line in first.stdout:  # type: ignore[union-attr]
                if "bit-exact" in line or "FAIL" in line:
                    t_first = time.perf_counter() - t0
                    break
            first.stdout.read()  # type: ignore[union-attr]
            first.wait()
            one = best_of(lambda: kernel_parity(farm, args.formats, "--lg-place",
                                                farm["places"][0]), args.repeat)
            two = best_of(lambda: kernel_parity(farm, args.formats, "--lg-pool",
                                                farm["pool"]), args.repeat)
        finally:
            subprocess.run([sys.executable, "-m", "harness", "farm-sim", "stop", "--dir",
                            str(d)], env=ENV, cwd=ROOT, check=False,
                           stdout=subprocess.DEVNULL)
    what = f"--formats {args.formats}" if args.formats else "every fixture kernel"
    print(f"board kernel-parity --fixture ({what}), farm-in-a-box, best of {args.repeat}:")
    print(f"  1 board  (--lg-place): {one:6.1f} s")
    print(f"  2 boards (--lg-pool):  {two:6.1f} s")
    print(f"  ratio 1-board / 2-board: {one / two:.2f}x  (cores: {os.cpu_count()})")
    print(f"farm-sim start --boards 2: up in {t_up:.1f} s; first case after "
          f"{t_first:.1f} s" if t_first is not None else "no case line seen")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
