"""A board from a labgrid board farm: one more board source (harness.board.source).

`--lg-coordinator ADDR` (or env LG_COORDINATOR) with `--lg-place NAME` or `--lg-pool
TAG=VALUE`: the harness reserves a place (queued behind other users, as
`labgrid-client reserve --wait`), acquires it, reads its `NetworkService` (address, port,
username) and opens its usual SSH session with the user's profile (key, known_hosts policy,
exec prefix); the place gives host, port and user, and a place may carry per-board profile
keys as tags (`skoracle_remote_dir`, `skoracle_lib_dirs`). Names match exactly (labgrid's
own `-p` matches substrings). The board-side lock stays, a second guard for users without
labgrid.

Each lease is held by a labgrid client process of its own (harness.board.lgclient), tied
to this one by a pipe: leaving the `with` block, an exception, Ctrl-C, SIGTERM and even a
kill -9 of this process all end with the places released and the reservations cancelled.
Only a kill -9 of the client process itself leaves a place acquired: `release_hint`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.board.profile import BoardProfile, profile_from_dict
from harness.errors import HarnessError
from harness.workerproc import PROJECT_ROOT

ENV_COORDINATOR = "LG_COORDINATOR"
#: labgrid's tag syntax (labgrid.remote.common.TAG_KEY); values are free text
TAG_KEY = re.compile(r"^[a-z][a-z0-9_]+$")
#: place tags that set a profile key for that board: tag -> (profile key, parse)
PROFILE_TAGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "skoracle_remote_dir": ("remote_dir", str),
    "skoracle_lib_dirs": ("lib_dirs", lambda v: [p for p in v.split(":") if p]),
    "skoracle_exec_prefix": ("exec_prefix", str),
}
#: seconds to wait for the client process to give everything back
RELEASE_TIMEOUT = 20.0


def release_hint(coordinator: str, place: str) -> str:
    """How to free a place whose client was killed with kill -9."""
    return f"labgrid-client -x {coordinator} -p {place} release --kick"


@dataclass(frozen=True)
class LabRequest:
    """Which board(s) of a labgrid farm: an exact place name or a pool tag."""

    coordinator: str
    place: str | None = None
    pool: tuple[str, str] | None = None

    @property
    def filter(self) -> str:
        """The reservation filter: `name=PLACE` (exact) or `TAG=VALUE`."""
        return f"name={self.place}" if self.place else "=".join(self.pool or ("", ""))

    def describe(self) -> str:
        return (f"labgrid place {self.place}" if self.place
                else f"labgrid pool {'='.join(self.pool or ())}") + f" at {self.coordinator}"


def lab_request(coordinator: str | None, place: str | None, pool: str | None
                ) -> LabRequest | None:
    """The request the options name, None without --lg-place/--lg-pool; HarnessError (exit
    2) for a bad combination or value."""
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    if not place and not pool:
        if coordinator and not os.environ.get(ENV_COORDINATOR) == coordinator:
            raise HarnessError("--lg-coordinator: give --lg-place NAME or --lg-pool TAG=VALUE "
                               "too")
        return None
    if place and pool:
        raise HarnessError("--lg-place and --lg-pool: give one of them")
    if not coordinator:
        raise HarnessError(f"--lg-place/--lg-pool: no coordinator: give --lg-coordinator "
                           f"HOST:PORT or set {ENV_COORDINATOR}")
    if not re.match(r"^(\[[^\]]+\]|[^\s:/]+)(:\d+)?$", coordinator):
        raise HarnessError(f"--lg-coordinator {coordinator!r}: HOST[:PORT]")
    if place is not None and (not place.strip() or any(c.isspace() for c in place)):
        raise HarnessError(f"--lg-place {place!r}: a place name")
    if pool is None:
        return LabRequest(coordinator, place=place)
    key, sep, value = pool.partition("=")
    if not sep or not TAG_KEY.match(key) or not value or "=" in value or \
            any(c.isspace() for c in value):
        raise HarnessError(f"--lg-pool {pool!r}: TAG=VALUE (TAG: lower-case letters, digits, "
                           "_; VALUE without '=' or spaces), e.g. pool=sl2610")
    return LabRequest(coordinator, pool=(key, value))


@dataclass(frozen=True)
class LabPlace:
    """An acquired place: where its NetworkService is and its tags."""

    name: str
    address: str
    port: int
    username: str
    tags: Mapping[str, str] = field(default_factory=dict)
    token: str = ""

    def profile(self, profile_file: str | None = None,
                overrides: Mapping[str, object] | None = None) -> BoardProfile:
        """The profile for this board: the user's file (key, known_hosts, ...), then the
        place's NetworkService and profile tags, then option overrides."""
        data: dict[str, object] = {}
        source = f"labgrid place {self.name}"
        if profile_file:
            try:
                data = tomllib.loads(Path(profile_file).read_text())
            except OSError as exc:
                raise HarnessError(f"board profile {profile_file}: {exc.strerror or exc}"
                                   ) from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise HarnessError(f"board profile {profile_file}: not valid TOML: {exc}"
                                   ) from None
            if isinstance(data.get("board"), dict):
                data = data["board"]
            source = f"{profile_file} + {source}"
        data = {**data, "host": self.address, "port": self.port, "user": self.username,
                "name": self.name}
        for tag, (key, parse) in PROFILE_TAGS.items():
            if self.tags.get(tag):
                data[key] = parse(self.tags[tag])
        prof = profile_from_dict(data, source)
        return prof.with_overrides(**(overrides or {}))


# ------------------------------------------------------------------------- client process

def _client_argv(action: str, coordinator: str, *rest: str) -> tuple[list[str], dict]:
    import importlib.util

    if importlib.util.find_spec("labgrid") is None:
        raise HarnessError("labgrid is not installed: pip install labgrid==26.0.1 "
                           "(scripts/setup.sh installs it)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH"))
                                        if p)
    return [sys.executable, "-P", "-m", "harness.board.lgclient", action, coordinator,
            *rest], env


def run_lgclient(args: list[str], timeout: float, what: str) -> list[dict]:
    """A short labgrid client action (free, setup): its JSON lines; HarnessError on an
    error it reports or when it does not finish in `timeout` s."""
    argv, env = _client_argv(*args)
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{what}: the labgrid client did not answer within {timeout:.0f} s"
                           ) from None
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for doc in docs:
        if doc.get("event") == "error":
            raise HarnessError(f"{what}: {doc['message']}")
    if proc.returncode != 0 or not docs:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise HarnessError(f"{what}: the labgrid client failed: {last[-300:]}")
    return docs


def free_places(req: LabRequest) -> dict:
    """{"free": n, "total": m, "places": [...], "holders": {place: who}} right now."""
    return run_lgclient(["free", req.coordinator, req.filter], timeout=60.0,
                        what=req.describe())[0]


def too_many_workers(req: LabRequest, workers: int) -> str | None:
    """Why `workers` parallel test workers (pytest-xdist) cannot each hold a place of `req`
    for their session, or None when they can: a worker beyond the free places would wait
    for ever behind its siblings, so the run must not start."""
    free = free_places(req)
    if workers <= free["free"]:
        return None
    busy = "; ".join(f"{p} {h}" for p, h in free["holders"].items())
    return (f"{req.describe()}: {free['free']} of {free['total']} places free"
            + (f" ({busy})" if busy else "") + f", but -n {workers} starts {workers} "
            "workers, each holding a place of its own for the session: a worker without one "
            f"would wait for ever. Use -n {max(free['free'], 1)} or fewer"
            + (", or --lg-pool for several boards" if req.place else "") + ".")


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a place is held, SIGTERM (where nothing else handles it) exits through the
    `with` blocks (exit 143) instead of ending the process on the spot: the session and the
    board lock are closed too, not only the place (which the client process frees anyway)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Lease:
    """Places held through a labgrid client process (see the module docstring)."""

    def __init__(self, req: LabRequest, count: int = 1, wait: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        self.req, self.count, self.wait, self.log = req, count, wait, log
        self.places: list[LabPlace] = []
        self.waited = False
        self._released = False
        self._err = tempfile.TemporaryFile()
        argv, env = _client_argv("lease", req.coordinator, req.filter, str(count),
                                 "1" if wait else "0")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err,
                                     start_new_session=True)

    def _events(self) -> Iterator[dict]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"{"):
                yield json.loads(line)

    def _stderr_tail(self) -> str:
        """The client's last line on stderr (the error of a traceback)."""
        self._err.seek(0)
        lines = self._err.read().decode(errors="replace").strip().splitlines()
        return lines[-1][-300:] if lines else f"exit status {self.proc.poll()}"

    def acquire(self) -> list[LabPlace]:
        """Wait until the client holds its places (queued behind other users)."""
        error = None
        for ev in self._events():
            kind = ev.get("event")
            if kind == "waiting":
                self.waited = True
                busy = ", ".join(f"{p} {h}" for p, h in ev.get("holders", {}).items())
                if self.log:
                    self.log(f"labgrid: waiting for {self.req.describe()} (queued"
                             + (f"; {busy}" if busy else "") + ")")
            elif kind == "acquired":
                self.places.append(LabPlace(ev["place"], ev["address"], int(ev["port"]),
                                            ev["username"], ev.get("tags", {}),
                                            ev.get("token", "")))
                if self.log:
                    self.log(f"labgrid: acquired place {ev['place']} ({ev['username']}@"
                             f"{ev['address']}:{ev['port']})")
            elif kind == "error":
                error = ev["message"]
            elif kind == "ready" and error is None:
                return self.places
        raise HarnessError(f"{self.req.describe()}: "
                           + (error or f"the labgrid client ended: {self._stderr_tail()}"))

    def release(self) -> None:
        """Close the pipe; the client releases, cancels and exits (waited for). Once."""
        if self._released:
            return
        self._released = True
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(RELEASE_TIMEOUT)  # its last line or two fit in the pipe
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            say = self.log or (lambda m: print(m, file=sys.stderr, flush=True))
            for p in self.places:
                say(f"labgrid: place {p.name} may still be acquired; free it with: "
                    + release_hint(self.req.coordinator, p.name))
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._err.close()

    def __enter__(self) -> list[LabPlace]:
        try:
            return self.acquire()
        except BaseException:
            self.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def lease(req: LabRequest, count: int = 1, wait: bool = True,
          log: Callable[[str], None] | None = None) -> Iterator[list[LabPlace]]:
    """Hold `count` places of `req` (0: every place of it free now, at least one) for the
    block; the first is waited for (`wait`), further ones are taken only if free."""
    with _sigterm_unwinds(), Lease(req, count, wait, log) as places:
        yield places
