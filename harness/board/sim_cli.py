"""`skoracle board-sim start|stop|status`: the board-in-a-box as a background service.

    skoracle board-sim start [--dir DIR] [--memory-mb 1946]   # prints the profile to use
    skoracle board run --profile DIR/board.toml ...
    skoracle board-sim stop [--dir DIR]                       # leaves no process behind
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


def cmd_start(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    sim = BoardSim(d, memory_mb=args.memory_mb, remove_dir=not d.exists())
    sim.start()
    if args.json:
        print(json.dumps({"dir": str(d), "port": sim.port, "pid": sim.pid,
                          "profile": str(sim.profile_path), "memory_mb": args.memory_mb,
                          "qemu_allowance_mb": QEMU_VM_ALLOWANCE_MB}, indent=1))
        return 0
    print(f"board-in-a-box up on 127.0.0.1:{sim.port} (dropbear pid {sim.pid})")
    print(f"  profile:  {sim.profile_path}")
    print(f"  ssh:      ssh -i {sim.path('client_key')} -p {sim.port} "
          f"-o UserKnownHostsFile={sim.path('known_hosts')} board@127.0.0.1")
    print(f"  memory:   ulimit -v {args.memory_mb} + {QEMU_VM_ALLOWANCE_MB} MiB (qemu's own)")
    print(f"  use:      skoracle board run --profile {sim.profile_path} PROGRAM")
    print(f"  stop:     skoracle board-sim stop --dir {d}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    sim = BoardSim.attach(args.dir)
    n = len(sim.processes())
    sim.stop()
    left = sim.processes()
    if left:
        raise HarnessError(f"board-sim: processes still running after stop: {left}", 1)
    if args.json:
        print(json.dumps({"dir": str(args.dir), "processes_ended": n}))
        return 0
    print(f"board-in-a-box stopped ({n} processes ended)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    sim = BoardSim.attach(args.dir)
    pids = sim.processes()
    alive = sim.pid in pids
    if args.json:
        print(json.dumps({"dir": str(args.dir), "up": alive, "port": sim.port,
                          "processes": len(pids)}))
        return 0 if alive else 1
    print(f"board-in-a-box in {args.dir}: {'up' if alive else 'DOWN'} on 127.0.0.1:{sim.port}, "
          f"{len(pids)} processes")
    return 0 if alive else 1


SIM_EXITS = {"start": "0 started; 2 a tool is missing, the directory holds a running sim, or "
                       "the server did not start",
             "stop": "0 stopped, nothing left; 1 processes would not die; 2 no sim in DIR",
             "status": "0 up; 1 down; 2 no sim in DIR"}


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
        sp = sub.add_parser(name, help=help_, description=f"board-in-a-box: {help_}.",
                            epilog=f"Exit codes: {SIM_EXITS[name]}.")
        sp.add_argument("--dir", default=default_dir, metavar="DIR",
                        help="state directory (default %(default)s)")
        sp.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "start":
            sp.add_argument("--memory-mb", type=int, default=BOARD_MEMORY_MB, metavar="MIB",
                            help="the board's RAM for the memory cap (default %(default)s)")
        sp.set_defaults(func=func)
