"""`skoracle board-sim start|stop|status`: the board-in-a-box as a background service.

    skoracle board-sim start [--dir DIR] [--memory-mb 1946]   # prints the profile to use
    skoracle board run --profile DIR/board.toml ...
    skoracle board-sim stop [--dir DIR]                       # leaves no process behind

Each action takes --json (one JSON document on stdout instead of the text).

exit codes:
  0  started / stopped / status: up
  1  status: down; stop: a process survived the stop
  2  usage or set-up error (no sim in DIR, dropbear or qemu missing)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from harness.board.sim import BOARD_MEMORY_MB, QEMU_VM_ALLOWANCE_MB, BoardSim
from harness.errors import HarnessError

DEFAULT_DIR = Path(tempfile.gettempdir()) / "skoracle-board-sim"


def _say(args: argparse.Namespace, doc: dict, lines: list[str]) -> None:
    """The action's result: `doc` as JSON with --json, else `lines` of text."""
    print(json.dumps(doc, indent=1) if args.json else "\n".join(lines))


def cmd_start(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    sim = BoardSim(d, memory_mb=args.memory_mb, remove_dir=not d.exists())
    sim.start()
    ssh = (f"ssh -i {sim.path('client_key')} -p {sim.port} "
           f"-o UserKnownHostsFile={sim.path('known_hosts')} board@127.0.0.1")
    _say(args, {"state": "up", "dir": str(d), "host": "127.0.0.1", "port": sim.port,
                "pid": sim.pid, "profile": str(sim.profile_path), "ssh": ssh,
                "memory_mb": args.memory_mb, "qemu_allowance_mb": QEMU_VM_ALLOWANCE_MB}, [
        f"board-in-a-box up on 127.0.0.1:{sim.port} (dropbear pid {sim.pid})",
        f"  profile:  {sim.profile_path}",
        f"  ssh:      {ssh}",
        f"  memory:   ulimit -v {args.memory_mb} + {QEMU_VM_ALLOWANCE_MB} MiB (qemu's own)",
        f"  use:      skoracle board run --profile {sim.profile_path} PROGRAM",
        f"  stop:     skoracle board-sim stop --dir {d}"])
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    sim = BoardSim.attach(args.dir)
    n = len(sim.processes())
    sim.stop()
    left = sim.processes()
    if left:
        raise HarnessError(f"board-sim: processes still running after stop: {left}", 1)
    _say(args, {"state": "stopped", "dir": str(args.dir), "processes_ended": n},
         [f"board-in-a-box stopped ({n} processes ended)"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    sim = BoardSim.attach(args.dir)
    pids = sim.processes()
    alive = sim.pid in pids
    _say(args, {"state": "up" if alive else "down", "dir": str(args.dir),
                "host": "127.0.0.1", "port": sim.port, "pid": sim.pid,
                "processes": len(pids)},
         [f"board-in-a-box in {args.dir}: {'up' if alive else 'DOWN'} on 127.0.0.1:{sim.port}, "
          f"{len(pids)} processes"])
    return 0 if alive else 1


SIM_EXIT_CODES = {
    "start": "exit codes:\n  0  up\n  2  set-up error (dropbear, qemu or busybox missing, "
             "DIR in use)",
    "stop": "exit codes:\n  0  stopped, nothing left running\n  1  a process survived\n"
            "  2  no board-in-a-box in DIR",
    "status": "exit codes:\n  0  up\n  1  down\n  2  no board-in-a-box in DIR",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "board-sim", help="board-in-a-box: real SSH server, BusyBox userland, qemu-aarch64",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="sim_command", metavar="ACTION")
    sub.required = True
    default_dir = os.environ.get("SKORACLE_BOARD_SIM_DIR", str(DEFAULT_DIR))
    for name, func, help_ in (("start", cmd_start, "start it in the background"),
                              ("stop", cmd_stop, "stop it and everything it runs"),
                              ("status", cmd_status, "is it up")):
        sp = sub.add_parser(name, help=help_, description=f"board-sim {name}: {help_}.",
                            epilog=SIM_EXIT_CODES[name],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--dir", default=default_dir, metavar="DIR",
                        help="state directory (default %(default)s)")
        if name == "start":
            sp.add_argument("--memory-mb", type=int, default=BOARD_MEMORY_MB, metavar="MB",
                            help="the board's RAM for the memory cap (default %(default)s)")
        sp.add_argument("--json", action="store_true", help="print one JSON document")
        sp.set_defaults(func=func)
