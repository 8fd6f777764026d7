"""Board farm figures, measured on the farm-in-a-box (labgrid coordinator + exporter + two
boards-in-a-box on this machine) in one run:

- `board kernel-parity --fixture` spread over the pool's 2 boards (`--lg-pool`) against the
  same command on 1 board of the same farm (`--lg-place`): wall-clock seconds of each
  (best of --repeat, interleaved; whole CLI: lease, connect, cases, release) and the ratio
  1-board / 2-board;
- what bounds that ratio here: the CPU seconds a 1-board run costs on this machine (the
  client, its labgrid client, the coordinator, and the boards-in-a-box's SSH servers,
  shells and qemu, which share this machine's cores), hence the best ratio any spread could
  reach: 1-board wall / (CPU seconds / cores). Real boards run their side on their own
  cores, so only the client's share stays on the host.
- the time from `skoracle farm-sim start --boards 2` to the first case of a
  kernel-parity run on the farm (start printed up; the run's first case line), and the
  start alone.

    python3 bench/bench_farm.py [--repeat 3] [--formats Q8_0,Q4_0,Q4_K]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and of its reaped children (/proc/PID/stat utime, stime,
    cutime, cstime)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def farm_pids(farm: dict) -> list[int]:
    """The farm's coordinator, exporter and each board-in-a-box's SSH server (whose reaped
    connections carry the shells and qemu runs of the cases)."""
    pids = [int(p["pid"]) for p in farm["processes"]]
    for sim in farm["sims"]:
        pids.append(int(json.loads((Path(sim["dir"]) / "state.json").read_text())["pid"]))
    return pids


def our_cpu(farm: dict) -> float:
    """CPU seconds so far of the farm and of the commands this benchmark ran."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime + sum(map(process_cpu, farm_pids(farm)))


def cpu_seconds_of(farm: dict, fn) -> tuple[float, float]:
    """Wall seconds of fn() and the CPU seconds it cost on this machine: the client, its
    labgrid client, the coordinator and the boards-in-a-box (other users' load excluded)."""
    c0, t0 = our_cpu(farm), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    time.sleep(0.5)  # the SSH servers reap the run's connections
    return wall, our_cpu(farm) - c0


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
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per figure, interleaved, best taken (default %(default)s)")
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
            ones, twos = [], []
            for _ in range(args.repeat):  # interleaved: other users' load drifts
                ones.append(cpu_seconds_of(farm, lambda: kernel_parity(
                    farm, args.formats, "--lg-place", farm["places"][0])))
                twos.append(best_of(lambda: kernel_parity(
                    farm, args.formats, "--lg-pool", farm["pool"]), 1))
            wall1, cpu1 = min(ones)
            one, two = wall1, min(twos)
        finally:
            subprocess.run([sys.executable, "-m", "harness", "farm-sim", "stop", "--dir",
                            str(d)], env=ENV, cwd=ROOT, check=False,
                           stdout=subprocess.DEVNULL)
    what = f"--formats {args.formats}" if args.formats else "every fixture kernel"
    print(f"board kernel-parity --fixture ({what}), farm-in-a-box, best of {args.repeat}:")
    print(f"  1 board  (--lg-place): {one:6.1f} s")
    print(f"  2 boards (--lg-pool):  {two:6.1f} s")
    cores = os.cpu_count() or 1
    print(f"  ratio 1-board / 2-board: {one / two:.2f}x  (cores: {cores})")
    print(f"  a 1-board run costs {cpu1:.1f} CPU-s in {wall1:.1f} s ({cpu1 / wall1:.2f} "
          f"cores: client, labgrid, boards-in-a-box all on this machine's {cores}), so no "
          f"spread can beat {wall1 / max(cpu1 / cores, 1e-9):.2f}x here; real boards run "
          "their side on their own cores")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"farm-sim start --boards 2: up in {t_up:.1f} s; first case after "
          f"{t_first:.1f} s" if t_first is not None else "no case line seen")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
