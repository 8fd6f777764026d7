"""`skoracle farm-sim start|stop|status`: a labgrid board farm on this machine, in the
background (harness.board.farm: labgrid-coordinator on 127.0.0.1, a labgrid-exporter
publishing N boards-in-a-box as NetworkService, places tagged pool=skoracle_farm).

    skoracle farm-sim start --boards 2 [--dir DIR]   # prints the options that use it
    skoracle board kernel-parity --fixture --lg-coordinator 127.0.0.1:PORT \\
        --lg-pool pool=skoracle_farm --profile DIR/farm/farm.toml
    skoracle farm-sim stop [--dir DIR]               # ends exactly what start started

Each action takes --json (one JSON document on stdout instead of the text).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.board.farm import START_TIMEOUT, FarmProcess, stop_from_state
from harness.errors import HarnessError
from harness.workerproc import PROJECT_ROOT

DEFAULT_DIR = Path(tempfile.gettempdir()) / "skoracle-farm-sim"
EXITS = {
    "start": "exit codes:\n  0  up\n  2  set-up error (labgrid, dropbear or qemu missing, DIR "
             "holds a running farm, a part did not start)",
    "stop": "exit codes:\n  0  stopped, nothing left running\n  1  a process survived\n"
            "  2  no farm in DIR",
    "status": "exit codes:\n  0  up\n  1  down\n  2  no farm in DIR",
}


def _say(args: argparse.Namespace, doc: dict, lines: list[str]) -> None:
    print(json.dumps(doc, indent=1) if args.json else "\n".join(lines))


def _state(d: Path) -> dict:
    try:
        return json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        raise HarnessError(f"farm-sim: no farm in {d} (no state.json)") from None


def _supervisor(state: dict) -> FarmProcess:
    sup = state.get("supervisor", {})
    return FarmProcess("supervisor", int(sup.get("pid", 0)), sup.get("start_time"))


def cmd_start(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    if (d / "state.json").exists():
        if _supervisor(_state(d)).alive():
            raise HarnessError(f"farm-sim: {d} already holds a running farm (stop it first: "
                               f"skoracle farm-sim stop --dir {d})")
        stop_from_state(_state(d))  # a supervisor killed -9: end what it left, then start
        (d / "state.json").unlink(missing_ok=True)
    if args.boards < 1:
        raise HarnessError(f"farm-sim: --boards {args.boards}: at least one board")
    d.mkdir(parents=True, exist_ok=True)
    (d / "failed.txt").unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH"))
                                        if p)
    t0 = time.perf_counter()
    with (d / "farm.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "harness.board.farm", "serve",
                                 str(d), str(args.boards)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT * 2
    try:
        while not (d / "state.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (d / "failed.txt").read_text() if (d / "failed.txt").exists() else \
                    ((d / "farm.log").read_text(errors="replace").strip().splitlines()
                     or ["no output"])[-1]
                raise HarnessError(f"farm-sim: the farm did not start: {why}")
            time.sleep(0.05)
    except BaseException:  # not up (or Ctrl-C): the supervisor stops what it started
        if proc.poll() is None:
            proc.terminate()
            proc.wait(START_TIMEOUT)
        raise
    seconds = time.perf_counter() - t0
    st = _state(d)
    use = (f"--lg-coordinator {st['coordinator']} --lg-pool {st['pool']} "
           f"--profile {st['profile']}")
    _say(args, {"state": "up", "dir": str(d), "seconds": round(seconds, 2), **st}, [
        f"farm up in {seconds:.1f}s: labgrid coordinator {st['coordinator']}, "
        f"{len(st['places'])} boards-in-a-box as places {', '.join(st['places'])} "
        f"(tag {st['pool']})",
        f"  use:    skoracle board kernel-parity --fixture {use}",
        f"  pytest: pytest --lg-coordinator {st['coordinator']} --lg-pool {st['pool']} "
        f"--board-profile {st['profile']} -m board",
        f"  look:   labgrid-client -x {st['coordinator']} places",
        f"  stop:   skoracle farm-sim stop --dir {d}"])
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    state = _state(d)
    sup = _supervisor(state)
    if sup.alive():
        sup.end(grace=30.0)  # it stops its farm on SIGTERM
    stop_from_state(state)  # what a supervisor killed -9 left behind (nothing otherwise)
    if state.get("own_dir") and state.get("dir"):
        shutil.rmtree(state["dir"], ignore_errors=True)
    left = [f"{p['what']} pid {p['pid']}" for p in state.get("processes", [])
            if FarmProcess(p["what"], int(p["pid"]), p.get("start_time")).alive()]
    if sup.alive():
        left.append(f"supervisor pid {sup.pid}")
    if left:
        raise HarnessError(f"farm-sim: still running after stop: {', '.join(left)}", 1)
    for name in ("state.json", "farm.log", "failed.txt"):
        (d / name).unlink(missing_ok=True)
    if not any(d.iterdir()):
        d.rmdir()
    _say(args, {"state": "stopped", "dir": str(d)}, [f"farm in {d} stopped"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    state = _state(d)
    alive = _supervisor(state).alive()
    _say(args, {"state": "up" if alive else "down", "dir": str(d), **state},
         [f"farm in {d}: {'up' if alive else 'DOWN'}, coordinator {state['coordinator']}, "
          f"places {', '.join(state['places'])} (tag {state['pool']})"])
    return 0 if alive else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "farm-sim", help="a labgrid board farm of boards-in-a-box on this machine",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="farm_command", metavar="ACTION")
    sub.required = True
    default_dir = os.environ.get("SKORACLE_FARM_SIM_DIR", str(DEFAULT_DIR))
    for name, func, help_ in (("start", cmd_start, "start it in the background"),
                              ("stop", cmd_stop, "stop exactly what start started"),
                              ("status", cmd_status, "is it up")):
        sp = sub.add_parser(name, help=help_, description=f"farm-sim {name}: {help_}.",
                            epilog=EXITS[name],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--dir", default=default_dir, metavar="DIR",
                        help="state directory (default %(default)s)")
        if name == "start":
            sp.add_argument("--boards", type=int, default=2, metavar="N",
                            help="boards-in-a-box in the farm (default %(default)s)")
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.set_defaults(func=func)
