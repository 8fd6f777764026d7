"""Worker processes that never outlive the client, nor leave anything they started behind.

`WorkerProcess(target, args)` starts `python -P -m harness.workerproc WATCH_FD CLEANUP
TARGET ARGS...`; the bootstrap below then calls `TARGET` (`module:function`) with ARGS.
The JVM worker (harness/jvm/worker.py) and llama-ref's decode worker (harness/ggml/llamaref.py)
both start this way. What the bootstrap sets up, and why:

- the worker gets its own session and process group, so a Ctrl-C at the terminal goes to the
  client alone, which then stops its workers at once (nothing half-handles the signal);
- it is a child subreaper (PR_SET_CHILD_SUBREAPER): whatever the code it runs starts, even a
  double-forked, `setsid` daemon, stays below it in the process tree where it can be found;
- a watcher thread reads a pipe whose write end only the client holds. When the client goes,
  whatever ended it (kill -9 included), the read sees end-of-file and the watcher removes
  the worker's temp files (CLEANUP, a JSON list of paths the client created for it) and
  SIGKILLs every descendant and the whole process group, the worker with it. (A pipe rather
  than PR_SET_PDEATHSIG: the death signal would kill the worker before it could end its own
  descendants.)

On the client side `stop()` ends the worker (politely first when asked), kills whatever it
left running, and returns those processes, so the caller can say what had to be killed.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PR_SET_CHILD_SUBREAPER = 36


# ------------------------------------------------------------------------ process tree

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a live process, None once it has gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def command_line(pid: int) -> str:
    """A process's argv joined by spaces ("" once it has gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def descendants_and_group(root: int) -> list[int]:
    """Live (non-zombie) processes below `root` or in its process group, `root` excluded."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_, _, pgid) in stats.items() if pgid == root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(root)
    found.discard(os.getpid())
    return sorted(p for p in found if stats.get(p, ("Z",))[0] != "Z")


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _remove(paths: Iterable[str]) -> None:
    for p in map(Path, paths):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- client side

class WorkerProcess:
    """One worker: `python -m harness.workerproc` running `target` (`module:function`).
    `cleanup`: temp paths the client made for the worker; the worker removes them if the
    client dies, the client removes them itself otherwise."""

    def __init__(self, target: str, args: Sequence[str], *, pass_fds: Sequence[int] = (),
                 cleanup: Sequence[str | Path] = (), **popen: Any) -> None:
        self.cleanup = [str(p) for p in cleanup]
        watch_r, self._watch_w = os.pipe()  # both ends close-on-exec; only watch_r is passed
        env = dict(popen.pop("env", None) or os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT),
                                                         env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "harness.workerproc", str(watch_r),
                 json.dumps(self.cleanup), target, *args],
                pass_fds=[watch_r, *pass_fds], env=env, start_new_session=True, **popen)
        except BaseException:
            os.close(self._watch_w)
            self._watch_w = None
            raise
        finally:
            os.close(watch_r)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_status(self) -> int | None:
        """The worker's exit status (negative: killed by that signal) once it has ended,
        else None. It is not reaped here, so its pid (and process group id) stays reserved
        until `stop()` has ended everything it started."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.proc.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def alive(self) -> bool:
        return self.exit_status() is None

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for the worker to end (not reaping it); its status."""
        deadline = time.monotonic() + timeout
        while (code := self.exit_status()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    def stop(self, polite: Callable[[], None] | None = None, grace: float = 2.0
             ) -> list[str]:
        """End the worker and everything it started (its `cleanup` paths are the caller's
        to remove now: it may still read them).

        `polite` (e.g. "quit" on the worker's own channel) is tried first and given `grace`
        seconds; then the process group, every descendant and the worker are SIGKILLed.
        Returns "pid N (argv)" for each process other than the worker that was still
        running: what the code the worker ran had left behind."""
        unreaped = self.proc.returncode is None
        before = descendants_and_group(self.pid) if unreaped and self.alive() else []
        if unreaped and polite is not None and self.alive():
            try:
                polite()
            except OSError:
                pass
            self.wait_exit(grace)
        left = sorted(set(before) | set(descendants_and_group(self.pid) if unreaped else []))
        left = [p for p in left if (st := _stat(p)) is not None and st[0] != "Z"]
        described = [f"pid {p} ({command_line(p) or '?'})" for p in left]
        if unreaped:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _kill([self.pid] if self.alive() else [])
            _kill(left)
        self.proc.wait()
        deadline = time.monotonic() + 2.0  # SIGKILL is asynchronous: see them gone
        while time.monotonic() < deadline and any(
                (st := _stat(p)) is not None and st[0] != "Z" for p in left):
            time.sleep(0.01)
        if self._watch_w is not None:
            os.close(self._watch_w)
            self._watch_w = None
        return described

    def __del__(self) -> None:
        if getattr(self, "_watch_w", None) is not None:
            os.close(self._watch_w)


# --------------------------------------------------------------------------- worker side

def _watch_client(fd: int, cleanup: list[str]) -> None:
    """Block until the client's end of the pipe closes; then end this process's group."""
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    _end_all(cleanup)


def _client_gone(fd: int) -> bool:
    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)  # the client never writes: readable means end-of-file


def _end_all(cleanup: list[str]) -> None:
    """The client has gone: SIGKILL this process's descendants and its whole process group,
    this process included, and remove the client's temp files. This process's own threads
    may still be writing into them until it dies, so a cleaner outside the group removes
    them again once this process is dead."""
    me = os.getpid()
    cleaner = _spawn_cleaner(me, cleanup) if cleanup else None
    _kill(p for p in descendants_and_group(me) if p not in (me, cleaner))
    _remove(cleanup)
    os.killpg(0, signal.SIGKILL)
    time.sleep(1)
    os._exit(137)


def _spawn_cleaner(worker: int, cleanup: list[str]) -> int:
    """Fork a process in a session of its own that waits (at most 10 s) until `worker` is
    dead, removes `cleanup`, and exits."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_stat(worker) or ("Z",))[0] != "Z":
            time.sleep(0.01)
        _remove(cleanup)
    finally:
        os._exit(0)


def bootstrap(argv: list[str]) -> int:
    """Worker entry: WATCH_FD CLEANUP_JSON module:function ARGS..."""
    fd, cleanup, target, rest = int(argv[0]), json.loads(argv[1]), argv[2], argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    threading.Thread(target=_watch_client, args=(fd, cleanup), daemon=True,
                     name="watch-client").start()
    module, _, func = target.partition(":")
    code = int(getattr(importlib.import_module(module), func)(rest) or 0)
    if _client_gone(fd):  # the target returned because the client went: same clean-up
        _end_all(cleanup)
    return code


if __name__ == "__main__":
    raise SystemExit(bootstrap(sys.argv[1:]))
