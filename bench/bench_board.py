"""Board runner figures, measured against the board-in-a-box in one run:

- push throughput (MB/s) of the `cat`-over-exec transfer with hash verification, against
  the raw speed of the same SSH channel (bytes into `cat > /dev/null`, no hash, no rename);
  and the verified fetch (`cat` back, hash checked);
- per-run overhead of the runner: the same program run through BoardSession (lock with
  its keeper channel, push check, run with PID/VmHWM sampling, fetch, cleanup) against
  running it locally under the same qemu (LocalTarget) — the difference and the ratio;
  and the same with a timeout, i.e. with the board-side deadline watchdog;
- how long a run's processes outlive a client killed with SIGKILL (`board run` of a
  sleeping program in a client process, killed; until no process, lock or run directory
  of it is left on the board-in-a-box), against the program's own 60 s;
- the client's peak RSS for `board run` of a program printing --flood-mib MiB (the stream
  spills to a file past 64 MiB), against the size of the output.

    python3 bench/bench_board.py [--mb 64] [--runs 20] [--flood-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.board.build import fixture_program  # noqa: E402
from harness.board.session import BoardSession  # noqa: E402
from harness.board.sim import BoardSim  # noqa: E402
from harness.board.target import LocalTarget  # noqa: E402


def raw_channel_mbps(sess: BoardSession, data: bytes) -> float:
    chan = sess.open_channel("cat > /dev/null")
    t0 = time.perf_counter()
    for i in range(0, len(data), 1 << 20):
        chan.sendall(data[i:i + (1 << 20)])
    chan.shutdown_write()
    chan.recv_exit_status()
    chan.close()
    return len(data) / 1e6 / (time.perf_counter() - t0)


ROOT = Path(__file__).resolve().parent.parent


def kill_to_gone_s(sim: BoardSim, prog: Path) -> float:
    """Seconds from SIGKILL of a `board run` client to nothing of its run on the board."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "board", "run", "--profile", str(sim.profile_path),
         str(prog), "--", "60"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    seen = b""
    while seen.count(b"sleeping") < 2:  # parent and child both asleep
        chunk = os.read(proc.stdout.fileno(), 4096)  # type: ignore[union-attr]
        if not chunk:
            raise SystemExit("the client ended before its program started")
        seen += chunk
    rd = Path(sim.remote_dir)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    while (any(b"sleeper" in _cmdline(pid) for pid in sim.processes())
           or (rd / "lock").exists() or any((rd / "runs").iterdir())):
        if time.perf_counter() - t0 > 70:
            raise SystemExit("the run outlived its client by over 70 s")
        time.sleep(0.005)
    return time.perf_counter() - t0


def client_rss_for_output(sim: BoardSim, mib: int) -> tuple[int, float]:
    """(peak RSS in kB, seconds) of a `board run` client whose program prints `mib` MiB."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="skoracle-bench-") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "board", "run", "--profile",
             str(sim.profile_path), "--outdir", out, str(fixture_program("flood")), "--",
             str(mib)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, "board run of flood failed"
        return usage.ru_maxrss, time.perf_counter() - t0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass(frozen=True)
class TransferFigures:
    """Push and fetch throughput against the raw channel, and a hash-skipped push."""

    raw_mbps: float
    push_mbps: float
    skip_s: float
    fetch_mbps: float


@dataclass(frozen=True)
class RunFigures:
    """Median seconds per run: through the board (total, program phase, with a timeout)
    and locally under the same qemu."""

    board_total_s: float
    board_run_s: float
    local_total_s: float
    board_timed_s: float


def measure_transfers(board: BoardSession, payload: bytes, target: str) -> TransferFigures:
    """Medians of 3 raw-channel sends, 3 verified pushes and 3 verified fetches, and one
    push of a file already there."""
    raw = statistics.median(raw_channel_mbps(board, payload) for _ in range(3))
    push_times = []
    for _ in range(3):
        board.exec(f"rm -f {target}")
        res = board.push(payload, target)
        push_times.append(float(res["seconds"]))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    skipped = board.push(payload, target)
    skip_s = time.perf_counter() - t0
    assert skipped["skipped"]
    push_mbps = len(payload) / 1e6 / statistics.median(push_times)
    fetch_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert board.fetch(target) == payload
        fetch_times.append(time.perf_counter() - t0)
    fetch_mbps = len(payload) / 1e6 / statistics.median(fetch_times)
    return TransferFigures(raw, push_mbps, skip_s, fetch_mbps)


def measure_runs(board: BoardSession, sim: BoardSim, prog: Path, runs: int) -> RunFigures:
    """`runs` board runs against as many local runs of the same program (outputs must
    match), then `runs` board runs with a timeout."""
    small = {"in.bin": b"x" * 4096}
    argv = ["in.bin", "out.bin"]
    board.run(prog, args=argv, inputs=small, outputs=["out.bin"])  # warm: program pushed
    local = LocalTarget(sim.profile.exec_prefix_argv)
    b_tot, b_run, l_tot = [], [], []
    for _ in range(runs):
        r = board.run(prog, args=argv, inputs=small, outputs=["out.bin"])
        assert r.ok, r.summary()
        b_tot.append(r.timings["total"])
        b_run.append(r.timings["run"])
        t0 = time.perf_counter()
        lr = local.run(prog, args=argv, inputs=small, outputs=["out.bin"])
        l_tot.append(time.perf_counter() - t0)
        assert lr.ok and lr.outputs == r.outputs
    bt, br, lt = (statistics.median(v) for v in (b_tot, b_run, l_tot))
    b_timed = []
    for _ in range(runs):
        r = board.run(prog, args=argv, inputs=small, outputs=["out.bin"], timeout=60)
        assert r.ok, r.summary()
        b_timed.append(r.timings["total"])
    return RunFigures(bt, br, lt, statistics.median(b_timed))


def print_figures(args: argparse.Namespace, xfer: TransferFigures, runs: RunFigures,
                  gone: float, flood: tuple[int, float] | None) -> None:
    """The figures, each with its peer and ratio."""
    bt, br, lt, btt = (runs.board_total_s, runs.board_run_s, runs.local_total_s,
                       runs.board_timed_s)
    print(f"board-in-a-box (dropbear on loopback, qemu-aarch64), {args.mb} MB push, "
          f"{args.runs} runs each")
    print(f"push throughput : {xfer.push_mbps:8.1f} MB/s verified push (cat + sha256sum + mv)")
    print(f"  peer          : {xfer.raw_mbps:8.1f} MB/s raw channel into cat > /dev/null "
          f"-> {xfer.push_mbps / xfer.raw_mbps:.2f}x of raw")
    print(f"  skip (same hash): {xfer.skip_s * 1e3:6.1f} ms for {args.mb} MB already on the "
          "board")
    print(f"fetch throughput: {xfer.fetch_mbps:8.1f} MB/s verified fetch (sha256sum + cat)")
    print(f"per-run         : board {bt * 1e3:7.1f} ms median (of which program phase "
          f"{br * 1e3:.1f} ms)")
    print(f"  peer          : local {lt * 1e3:7.1f} ms median (same program, same qemu)")
    print(f"  overhead      : {(bt - lt) * 1e3:7.1f} ms per run = {bt / lt:.2f}x local")
    print(f"  with --timeout: board {btt * 1e3:7.1f} ms median (board-side deadline watchdog) "
          f"-> {(btt - bt) * 1e3:+.1f} ms vs no timeout")
    print(f"client SIGKILL  : run's processes, lock and run dir gone {gone * 1e3:.0f} ms after "
          "(median of 5; the program would have slept 60 s)")
    if flood:
        rss_kb, secs = flood
        print(f"1 run printing   : {args.flood_mib} MiB -> client peak RSS {rss_kb / 1024:.0f} MiB "
              f"= {rss_kb / 1024 / args.flood_mib:.3f}x the output, {args.flood_mib / secs:.1f} "
              "MiB/s (stream spilled to a file past 64 MiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="push size in MB (default 64)")
    ap.add_argument("--runs", type=int, default=20, help="runs per target (default 20)")
    ap.add_argument("--flood-mib", type=int, default=1024,
                    help="output size of the streaming run in MiB (default 1024, 0 = skip)")
    args = ap.parse_args()

    prog = fixture_program("roundtrip")
    payload = bytes(range(256)) * (args.mb * 1_000_000 // 256)
    with BoardSim() as sim, BoardSession(sim.profile) as board:
        xfer = measure_transfers(board, payload, f"{sim.remote_dir}/bench/payload.bin")
        runs = measure_runs(board, sim, prog, args.runs)
        sleeper = fixture_program("sleeper")
        gone = statistics.median(kill_to_gone_s(sim, sleeper) for _ in range(5))
        flood = client_rss_for_output(sim, args.flood_mib) if args.flood_mib else None
    print_figures(args, xfer, runs, gone, flood)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
