"""The one interface every execution target offers, and what a run of a program reports.

A target runs one program with some input files and hands back its outputs, how it ended
(exit status mapped to a reason a person can act on), wall-clock timings and peak resident
memory. `BoardSession` implements it over SSH; `LocalTarget` runs the same program on this
machine (under the same exec prefix, e.g. qemu) and is the peer the board overhead is
measured against.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from harness.errors import HarnessError
from harness.procmem import peak_rss_bytes

#: Inputs: remote file name -> local path or the bytes themselves.
InputFiles = Mapping[str, "Path | str | bytes"]
#: Called with each chunk of live output as it arrives.
StreamCallback = Callable[[bytes], None]

#: Messages on stderr that say the program ran out of memory (allocation failure under a
#: memory cap, the C++/Kotlin/JVM runtimes' own words, glibc's perror text).
OOM_PATTERNS: tuple[str, ...] = (
    r"out of memory",
    r"cannot allocate memory",
    r"std::bad_alloc",
    r"OutOfMemoryError",
    r"memory exhausted",
    r"failed to allocate",
)

ILLEGAL_INSTRUCTION = "illegal instruction: run `skoracle elf-check` on the binary"


@dataclass
class RunResult:
    """How one run of one program on one target went."""

    program: str
    exit_status: int | None  # shell convention: 128+N when killed by signal N
    reason: str  # "ok" or what went wrong, in words
    timed_out: bool = False
    pid: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    outputs: dict[str, bytes] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: push, run, fetch, total
    peak_rss_kb: int | None = None  # the whole run's peak (every process of it)
    notes: list[str] = field(default_factory=list)
    #: each process of the run seen by the sampler: {"pid", "comm", "peak_rss_kb"}
    processes: list[dict] = field(default_factory=list)
    #: an OOM kill of any process of the run, or an allocation failure it reported
    out_of_memory: bool = False
    #: processes that outlived the run and were killed: {"pid", "comm"}
    killed_after: list[dict] = field(default_factory=list)
    #: staged files: {"local", "remote", "skipped", "bytes"}
    staged: list[dict] = field(default_factory=list)
    #: stream name -> file holding all of a stream too big for memory
    spilled: dict[str, str] = field(default_factory=dict)
    #: the client's time.perf_counter() when the program started (its first report line)
    started_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out and not self.out_of_memory

    @property
    def signal(self) -> int | None:
        """The signal that ended the program, if any (from the 128+N status)."""
        if self.exit_status is not None and 128 < self.exit_status < 128 + 65:
            return self.exit_status - 128
        return None

    def summary(self) -> str:
        """One line: status, reason, timings and memory."""
        parts = [f"{self.program}: {self.reason}"]
        if self.exit_status is not None:
            parts.append(f"exit {self.exit_status}")
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        for key in ("push", "run", "fetch", "total"):
            if key in self.timings:
                parts.append(f"{key} {self.timings[key]:.3f}s")
        if self.peak_rss_kb is not None:
            n = len(self.processes)
            parts.append(f"peak RSS {self.peak_rss_kb / 1024:.1f} MiB"
                         + (f" (whole run, {n} processes)" if n > 1 else ""))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """The result as JSON-ready data (outputs as their sizes)."""
        return {
            "program": self.program, "exit_status": self.exit_status, "reason": self.reason,
            "ok": self.ok, "timed_out": self.timed_out, "out_of_memory": self.out_of_memory,
            "pid": self.pid, "timings": self.timings, "peak_rss_kb": self.peak_rss_kb,
            "processes": self.processes, "killed_after": self.killed_after,
            "staged": self.staged, "spilled": self.spilled, "notes": self.notes,
            "outputs": {k: len(v) for k, v in self.outputs.items()},
        }


@runtime_checkable
class Target(Protocol):
    """Something that runs a program with input files and gives outputs back."""

    name: str

    def run(
        self,
        program: Path | str,
        args: Sequence[str] = (),
        inputs: InputFiles | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
        on_stdout: StreamCallback | None = None,
        on_stderr: StreamCallback | None = None,
    ) -> RunResult: ...


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def oom_line(stderr: bytes) -> str | None:
    """The first stderr line that says an allocation failed (OOM_PATTERNS), if any."""
    for line in stderr.decode("utf-8", "replace").splitlines():
        if any(re.search(p, line, re.IGNORECASE) for p in OOM_PATTERNS):
            return line.strip()[:160]
    return None


def exit_reason(
    status: int | None,
    stderr: bytes = b"",
    *,
    timed_out: bool = False,
    timeout: float | None = None,
    kill_signal: str | None = None,
    kernel_oom: bool = False,
) -> str:
    """Map an exit status (128+N for signal N) plus evidence to a reason in words.

    `kernel_oom` is True when the board's kernel log names the process as an OOM victim;
    an allocation-failure message on stderr also counts as running out of memory.
    """
    if timed_out:
        how = f", process group killed with {kill_signal}" if kill_signal else ""
        return f"timed out after {timeout:g}s{how}" if timeout is not None else f"timed out{how}"
    if status is None:
        return "no exit status (connection lost?)"
    if status == 0:
        return "ok"
    text = stderr.decode("utf-8", "replace")
    oom_text = next((p for p in OOM_PATTERNS if re.search(p, text, re.IGNORECASE)), None)
    if status == 128 + signal.SIGKILL:
        if kernel_oom:
            return "out of memory: killed by the kernel OOM killer (SIGKILL)"
        if oom_text:
            return "out of memory: killed (SIGKILL) after an allocation failure"
        return "killed (SIGKILL, no OOM trace in the kernel log)"
    if oom_text:
        how = (
            f"{signal_name(status - 128)}" if status > 128 else f"exit status {status}"
        )
        return f"out of memory: allocation failed ({how})"
    return _status_words(status)


# What a death by these signals (status 128+N) or these statuses says, in words.
_SIGNAL_WORDS = {
    signal.SIGILL: ILLEGAL_INSTRUCTION,
    signal.SIGSEGV: "segmentation fault (SIGSEGV)",
    signal.SIGBUS: "bus error (SIGBUS)",
    signal.SIGFPE: "arithmetic exception (SIGFPE)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGTERM: "terminated (SIGTERM)",
}
_STATUS_WORDS = {
    126: "cannot execute (status 126: wrong architecture or not executable?)",
    127: "command not found (status 127)",
}


def _status_words(status: int) -> str:
    """A nonzero exit status (not an OOM) in words."""
    if status > 128 and status - 128 in _SIGNAL_WORDS:
        return _SIGNAL_WORDS[signal.Signals(status - 128)]
    if status in _STATUS_WORDS:
        return _STATUS_WORDS[status]
    if 128 < status < 128 + 65:
        return f"killed by {signal_name(status - 128)}"
    return f"exited with status {status}"


def _pump_thread(stream, into: list[bytes], cb: StreamCallback | None) -> threading.Thread:
    """A started thread copying `stream` into `into` (and `cb`) until it ends."""
    def pump() -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            into.append(chunk)
            if cb:
                cb(chunk)

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    return th


def _watch(proc: subprocess.Popen, timeout: float | None,
           t_run: float) -> tuple[int | None, bool]:
    """Wait for `proc`, sampling its peak RSS, killing its group past `timeout`:
    (peak RSS in kB or None, timed out)."""
    peak = None
    while proc.poll() is None:
        hwm = peak_rss_bytes(proc.pid)
        rss = None if hwm is None else hwm // 1024
        peak = rss if peak is None or (rss or 0) > peak else peak
        if timeout is not None and time.perf_counter() - t_run > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return peak, True
        try:
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass
    return peak, False


class LocalTarget:
    """Runs programs on this machine in a scratch directory, with an optional exec prefix.

    The peer for measuring the board runner's overhead: the same program, the same qemu,
    no SSH, no pushes.
    """

    def __init__(self, exec_prefix: Sequence[str] = (), name: str = "local") -> None:
        self.exec_prefix = list(exec_prefix)
        self.name = name

    def run(
        self,
        program: Path | str,
        args: Sequence[str] = (),
        inputs: InputFiles | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
        on_stdout: StreamCallback | None = None,
        on_stderr: StreamCallback | None = None,
    ) -> RunResult:
        program = Path(program)
        if not program.is_file():
            raise HarnessError(f"program not found: {program}")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="skoracle-local-") as tmp:
            work = Path(tmp)
            for name, src in (inputs or {}).items():
                data = src if isinstance(src, bytes) else Path(src).read_bytes()
                (work / name).write_bytes(data)
            cmd = [*self.exec_prefix, str(program.resolve()), *args]
            t_run = time.perf_counter()
            proc = subprocess.Popen(
                cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
            )
            chunks: dict[str, list[bytes]] = {"out": [], "err": []}
            pumps = [_pump_thread(proc.stdout, chunks["out"], on_stdout),
                     _pump_thread(proc.stderr, chunks["err"], on_stderr)]
            peak, timed_out = _watch(proc, timeout, t_run)
            for th in pumps:
                th.join()
            run_s = time.perf_counter() - t_run
            status = proc.returncode
            if status is not None and status < 0:
                status = 128 - status
            got: dict[str, bytes] = {}
            for name in outputs:
                path = work / name
                if status == 0 and path.is_file():
                    got[name] = path.read_bytes()
        stderr = b"".join(chunks["err"])
        return RunResult(
            program=program.name,
            exit_status=status,
            reason=exit_reason(status, stderr, timed_out=timed_out, timeout=timeout,
                               kill_signal="SIGKILL"),
            timed_out=timed_out,
            pid=proc.pid,
            stdout=b"".join(chunks["out"]),
            stderr=stderr,
            outputs=got,
            timings={"run": run_s, "total": time.perf_counter() - t0},
            peak_rss_kb=peak,
        )
