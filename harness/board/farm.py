"""Farm-in-a-box: a labgrid board farm on this machine, for tests and for trying the farm.

`FarmSim(boards=N)` starts (all real, nothing mocked):
- `labgrid-coordinator -l 127.0.0.1:0` (labgrid's coordinator has no authentication: it
  listens on loopback only), in its own directory (it keeps places.yaml there);
- N board-in-a-box instances (`harness.board.sim.BoardSim`), each authorizing one client
  key of the farm;
- a `labgrid-exporter` publishing each board as a `NetworkService` (address, port,
  username) from the YAML the farm writes (the same format a lab writes for its SL2610s);
- places `skoracle-farm-1..N`, each matching one board's NetworkService, tagged
  `pool=skoracle_farm` (the pool) and `skoracle_remote_dir` / `skoracle_lib_dirs` (each
  board-in-a-box keeps its files in its own directory; a real board needs no such tag);
- a profile `farm.toml` for every board of the farm: the client key, a known_hosts file with
  every board's host key, qemu as exec prefix. The place gives host, port and user.

`stop()` ends exactly what `start()` started (the coordinator and the exporter it spawned,
the sims by their ids) and removes the farm's directory if it made it. The coordinator and
the exporter also die with the process that started them (PR_SET_PDEATHSIG).

`skoracle farm-sim start|stop|status` (harness.board.farm_cli) runs a farm in the
background under a supervisor process (`python -m harness.board.farm serve DIR N`).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import write_atomic
from harness.board.profile import BoardProfile, write_profile
from harness.board.sim import SIM_USER, BoardSim
from harness.errors import HarnessError

POOL_TAG = ("pool", "skoracle_farm")
PLACE_PREFIX = "skoracle-farm-"
EXPORTER_NAME = "skoracle-farm"
PR_SET_PDEATHSIG = 1
START_TIMEOUT = 60.0


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that spawned it dies."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def process_start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with
    the pid, it names one process, so a reused pid is never mistaken for ours."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def exporter_yaml(boards: list[tuple[str, str, int, str]]) -> str:
    """labgrid-exporter resources: one group per board with its NetworkService
    (group name, address, port, username)."""
    return "".join(f"{group}:\n  NetworkService:\n    address: '{addr}'\n    port: {port}\n"
                   f"    username: '{user}'\n" for group, addr, port, user in boards)


@dataclass(frozen=True)
class FarmProcess:
    """A process the farm started, named by pid and start time."""

    what: str
    pid: int
    start_time: int | None

    def alive(self) -> bool:
        return (self.start_time is not None
                and process_start_time(self.pid) == self.start_time)

    def end(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` s: only if it is still the process we
        started."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                return
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.alive():
                time.sleep(0.02)


class FarmSim:
    """The farm, usable as a context manager (`with FarmSim(2) as farm: farm.coordinator`)."""

    def __init__(self, boards: int = 2, directory: Path | str | None = None) -> None:
        if boards < 1:
            raise HarnessError(f"farm-sim: --boards {boards}: at least one board")
        self.boards = boards
        self.own_dir = directory is None
        self.dir = Path(directory) if directory else None
        self.sims: list[BoardSim] = []
        self.coordinator = ""
        self._procs: list[tuple[subprocess.Popen, FarmProcess]] = []

    # -- what users pass ----------------------------------------------------------------------

    @property
    def places(self) -> list[str]:
        return [f"{PLACE_PREFIX}{i + 1}" for i in range(self.boards)]

    @property
    def pool(self) -> str:
        return "=".join(POOL_TAG)

    @property
    def profile_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "farm.toml"

    def options(self) -> list[str]:
        """The command-line options that use the farm's pool."""
        return ["--lg-coordinator", self.coordinator, "--lg-pool", self.pool,
                "--board-profile", str(self.profile_path)]

    # -- start ----------------------------------------------------------------------------------

    def _spawn(self, what: str, argv: list[str], cwd: Path) -> subprocess.Popen:
        log = (cwd / f"{what}.log").open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()
        self._procs.append((proc, FarmProcess(what, proc.pid, process_start_time(proc.pid))))
        return proc

    def _log_tail(self, what: str) -> str:
        assert self.dir is not None
        try:
            return (self.dir / f"{what}.log").read_text(errors="replace")[-600:].strip()
        except OSError:
            return ""

    def _start_coordinator(self) -> None:
        assert self.dir is not None
        proc = self._spawn("coordinator", [sys.executable, "-m", "labgrid.remote.coordinator",
                                           "-l", "127.0.0.1:0"], self.dir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self._log_tail("coordinator"))
            if m:
                self.coordinator = f"127.0.0.1:{m.group(1)}"
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise HarnessError("farm-sim: labgrid-coordinator did not start: "
                           + self._log_tail("coordinator"))

    def _start_boards(self) -> None:
        """N boards-in-a-box (in parallel), one farm client key authorized on each, one
        known_hosts file for all."""
        assert self.dir is not None
        self.sims = [BoardSim(self.dir / f"board-{i + 1}") for i in range(self.boards)]
        errors: list[BaseException] = []

        def start(sim: BoardSim) -> None:
            try:
                sim.start()
            except BaseException as exc:  # reported below, after every thread has ended
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in self.sims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        key = self.dir / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "skoracle-farm",
                        "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
        pub = key.with_suffix(".pub").read_text()
        for sim in self.sims:
            with sim.path("home", ".ssh", "authorized_keys").open("a") as fh:
                fh.write(pub)
        write_atomic(self.dir / "known_hosts", "".join(
            sim.path("known_hosts").read_text() for sim in self.sims).encode())

    def _start_exporter(self) -> None:
        assert self.dir is not None
        yaml = self.dir / "exporter.yaml"
        write_atomic(yaml, exporter_yaml([(f"board-{i + 1}", "127.0.0.1", sim.port or 0,
                                           SIM_USER) for i, sim in enumerate(self.sims)]
                                         ).encode())
        self._spawn("exporter", [sys.executable, "-m", "labgrid.remote.exporter",
                                 "-c", self.coordinator, "-n", EXPORTER_NAME,
                                 "--hostname", "127.0.0.1", str(yaml)], self.dir)

    def _create_places(self) -> None:
        from harness.board.lab import run_lgclient

        assert self.dir is not None
        spec = [{"name": name,
                 "matches": [f"{EXPORTER_NAME}/board-{i + 1}/NetworkService"],
                 "tags": {POOL_TAG[0]: POOL_TAG[1],
                          "skoracle_remote_dir": sim.remote_dir,
                          "skoracle_lib_dirs": str(sim.system_lib_dir)}}
                for i, (name, sim) in enumerate(zip(self.places, self.sims, strict=True))]
        path = self.dir / "places.json"
        write_atomic(path, json.dumps(spec, indent=1).encode())
        run_lgclient(["setup", self.coordinator, str(path)], timeout=START_TIMEOUT,
                     what="farm-sim: creating the places")

    def _write_profile(self) -> None:
        base = self.sims[0].profile
        write_profile(self.profile_path, BoardProfile(
            name="skoracle-farm", host="127.0.0.1", user=SIM_USER,
            identity_file=str(self.dir / "client_key") if self.dir else None,
            known_hosts=str(self.dir / "known_hosts") if self.dir else None,
            connect_timeout=base.connect_timeout, keepalive=base.keepalive,
            remote_dir=base.remote_dir, exec_prefix=base.exec_prefix, lib_dirs=base.lib_dirs,
            lock_wait=base.lock_wait, kill_grace=base.kill_grace,
            sample_interval=base.sample_interval, memory_mb=base.memory_mb,
            source=str(self.profile_path)))

    def start(self) -> FarmSim:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="skoracle-farm-"))
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_coordinator()
            self._start_boards()
            self._start_exporter()
            self._create_places()
            self._write_profile()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> FarmSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- stop -------------------------------------------------------------------------------

    def processes(self) -> list[FarmProcess]:
        """The coordinator and exporter this farm started (while they run)."""
        return [fp for _, fp in self._procs if fp.alive()]

    def state(self) -> dict[str, object]:
        """What `farm-sim stop` needs to end exactly this farm."""
        return {"coordinator": self.coordinator, "places": self.places, "pool": self.pool,
                "profile": str(self.profile_path), "dir": str(self.dir),
                "own_dir": self.own_dir,
                "processes": [vars(fp) for _, fp in self._procs],
                "sims": [{"dir": str(s.dir), "id": s.id, "port": s.port} for s in self.sims]}

    def stop(self) -> None:
        """End the exporter, the coordinator and the boards; remove the directory if the
        farm made it."""
        for proc, fp in reversed(self._procs):
            fp.end()
            proc.wait()
        self._procs = []
        for sim in self.sims:
            sim.stop()
        if self.own_dir and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def stop_from_state(state: dict) -> None:
    """End what a farm's state names, where its supervisor can no longer do it (killed):
    only processes whose pid and start time match, only sims by their ids."""
    for p in reversed(state.get("processes", [])):
        FarmProcess(p["what"], int(p["pid"]), p.get("start_time")).end()
    for s in state.get("sims", []):
        sim = BoardSim(s["dir"], port=s["port"], remove_dir=False)
        sim.id = s["id"]
        sim.stop()


def serve(directory: str, boards: int) -> int:
    """The supervisor of `farm-sim start`: run a farm until SIGTERM/SIGINT, then stop it.
    Its state (with this process named by pid and start time) is in DIR/state.json while
    it runs."""
    d = Path(directory)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    farm = FarmSim(boards, d / "farm")
    farm.own_dir = True
    try:
        farm.start()
        me = {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}
        write_atomic(d / "state.json", json.dumps({**farm.state(), "supervisor": me},
                                                  indent=1).encode())
        while not stop.wait(1.0):
            pass
    except HarnessError as exc:
        print(f"farm-sim: {exc}", file=sys.stderr)
        write_atomic(d / "failed.txt", str(exc).encode())
        return 2
    finally:
        farm.stop()
        (d / "state.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        raise SystemExit(serve(sys.argv[2], int(sys.argv[3])))
    raise SystemExit("usage: python -m harness.board.farm serve DIR BOARDS")
