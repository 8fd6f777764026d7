"""The remote runner: one program run on one exec channel, streamed and judged.

The script the channel runs is built by a pure function, `harness.board.runscript.run_script`
(the board keeps the clock and kills the run's process group when time is up, client or no
client). Here are the client's parts, each small: the channel pump (stdout/stderr streamed
live, the runner's own marker lines taken out of stderr), the client's timeout policy (it
only steps in when the board's watchdog has not acted well past the deadline), and what the
markers and the board's report say about the run.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from harness.board.runscript import RunReport, RunSpec, read_report, run_script
from harness.board.streams import SpillBuffer
from harness.board.target import RunResult, StreamCallback, exit_reason, oom_line
from harness.board.transport import CHANNEL_ERRORS, TimedOut, close_quietly, lost
from harness.errors import HarnessError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")
KillGroup = Callable[[int, str], None]


class RunShell(Protocol):
    """What the runner needs of a connected board."""

    where: str

    def open_channel(self, cmd: str) -> paramiko.Channel: ...


class MarkerFilter:
    """Takes the runner's own lines (`<tag><key> <value>\n`, tag random per run) out of a
    program's stderr as it streams, passing everything else through unchanged."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.buf = b""
        self.found: dict[str, str] = {}
        self.lines: list[tuple[str, str]] = []  # every report line, in order

    def _pass_through(self, out: bytes) -> bytes:
        """No tag in the buffer: pass it on, keeping a tail that may start one."""
        keep = next((k for k in range(min(len(self.tag) - 1, len(self.buf)), 0, -1)
                     if self.buf.endswith(self.tag[:k])), 0)
        cut = len(self.buf) - keep
        out, self.buf = out + self.buf[:cut], self.buf[cut:]
        return out

    def _take_line(self, start: int, end: int) -> None:
        key, _, value = self.buf[start + len(self.tag):end].partition(b" ")
        k, v = key.decode("ascii", "replace"), value.decode("utf-8", "replace")
        self.found[k] = v
        self.lines.append((k, v))
        self.buf = self.buf[end + 1:]

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while True:
            i = self.buf.find(self.tag)
            if i < 0:
                return self._pass_through(out)
            j = self.buf.find(b"\n", i)
            out += self.buf[:i]
            if j < 0:
                self.buf = self.buf[i:]
                return out
            self._take_line(i, j)

    def finish(self) -> bytes:
        rest, self.buf = self.buf, b""
        return rest


def check_name(kind: str, name: str) -> str:
    """A plain file name for the board (no paths, no shell specials)."""
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise HarnessError(
            f"{kind} name {name!r}: use a plain file name (letters, digits, . _ + -), no paths"
        )
    return name


def needed_libraries(program: Path) -> list[str]:
    """DT_NEEDED entries of an ELF file (empty for a static or non-ELF file)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with program.open("rb") as fh:
            elf = ELFFile(fh)
            out: list[str] = []
            for sec in elf.iter_sections():
                if isinstance(sec, DynamicSection):
                    out += [t.needed for t in sec.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
            return out
    except (ELFError, OSError, ValueError):
        return []


class ChannelPump:
    """Streams a run channel's stdout and stderr into their buffers and callbacks, live,
    with the marker lines taken out of stderr."""

    def __init__(self, chan: paramiko.Channel, markers: MarkerFilter,
                 streams: list[SpillBuffer], on_stdout: StreamCallback | None,
                 on_stderr: StreamCallback | None) -> None:
        self.chan, self.markers = chan, markers
        self.out, self.err = streams
        self.on_stdout, self.on_stderr = on_stdout, on_stderr

    def _stderr(self, data: bytes) -> None:
        if data:
            self.err.write(data)
            if self.on_stderr:
                self.on_stderr(data)

    def drain(self) -> None:
        """Take whatever stdout/stderr the channel holds now."""
        while self.chan.recv_ready():
            data = self.chan.recv(65536)
            self.out.write(data)
            if self.on_stdout:
                self.on_stdout(data)
        while self.chan.recv_stderr_ready():
            self._stderr(self.markers.feed(self.chan.recv_stderr(65536)))

    def finish(self) -> None:
        """Pass on what is left of stderr and close both buffers."""
        self._stderr(self.markers.finish())
        self.out.close()
        self.err.close()


def _timeout_reason(timeout: float, pid: int | None, sig: str, grace: float) -> str:
    return (f"timed out after {timeout:g}s: process group {pid} killed with SIG{sig}"
            + (f" (still there {grace:g}s after SIGTERM)" if sig == "KILL" else ""))


@dataclass
class ClientWatchdog:
    """The client's timeout policy: the board enforces the timeout; the client only steps
    in (TERM, then KILL after the grace) when the board has not acted 5 s past the deadline
    plus the grace, and gives up on a program that has not started 30 s past it."""

    timeout: float | None
    grace: float
    name: str
    at: str
    started: float
    kill_at: float | None = None
    sent_kill: bool = False

    def check(self, now: float, pid: int | None, result: RunResult, kill: KillGroup) -> None:
        if self.timeout is None:
            return
        if pid is None:
            if now - self.started > self.timeout + 30.0:
                raise TimedOut(f"{self.at}: {self.name} did not start within "
                               f"{self.timeout + 30.0:g}s")
            return
        if not result.timed_out and now - self.started > self.timeout + self.grace + 5.0:
            result.timed_out = True
            kill(pid, "TERM")
            self.kill_at = now + self.grace
            result.reason = _timeout_reason(self.timeout, pid, "TERM", self.grace)
        elif result.timed_out and not self.sent_kill and self.kill_at and now > self.kill_at:
            self.sent_kill = True
            kill(pid, "KILL")
            result.reason = _timeout_reason(self.timeout, pid, "KILL", self.grace)


def _pump(chan: paramiko.Channel, pump: ChannelPump, watchdog: ClientWatchdog,
          result: RunResult, kill: KillGroup) -> tuple[int, int | None]:
    """Run the channel to its end: (exit status or -1, the program's PID if reported)."""
    pid: int | None = None
    chan.shutdown_write()
    while True:
        pump.drain()
        if pid is None and "pid" in pump.markers.found:
            pid = int(pump.markers.found["pid"])
            result.started_at = time.perf_counter()
        if chan.eof_received or chan.closed or chan.exit_status_ready():
            break
        watchdog.check(time.monotonic(), pid, result, kill)
        select.select([chan], [], [], 0.02)
    chan.status_event.wait(30.0)
    pump.drain()
    return (chan.recv_exit_status() if chan.status_event.is_set() else -1), pid


def apply_report(result: RunResult, spec: RunSpec, lines: list[tuple[str, str]],
                 status: int, pid: int | None, streams: list[SpillBuffer]) -> RunReport:
    """Fill `result` from the run's marker lines, exit status and streams."""
    report = read_report(lines)
    if pid is None:
        pid = report.pid
    if report.timeout in ("TERM", "KILL"):
        result.timed_out = True
        result.reason = _timeout_reason(spec.timeout or 0.0, pid, report.timeout,
                                        spec.kill_grace)
    if report.leftover:
        result.notes.append(f"processes of group {pid} outlived the run; killed")
    result.exit_status = status
    result.pid = pid
    result.stdout, result.stderr = streams[0].head, streams[1].head
    for key, sb in zip(("stdout", "stderr"), streams, strict=True):
        if sb.path is not None:
            result.spilled[key] = str(sb.path)
            result.notes.append(sb.note() or "")
    return report


def run_remote(sh: RunShell, result: RunResult, spec: RunSpec, streams: list[SpillBuffer],
               on_stdout: StreamCallback | None, on_stderr: StreamCallback | None,
               kill: KillGroup) -> RunReport:
    """Run `spec`'s script on one exec channel and stream its output; the board enforces
    the timeout, `kill` (group, signal) is the client's fallback."""
    name = spec.argv[-1] if spec.argv else "program"
    chan = sh.open_channel(run_script(spec))
    pump = ChannelPump(chan, MarkerFilter(spec.tag.encode()), streams, on_stdout, on_stderr)
    watchdog = ClientWatchdog(spec.timeout, spec.kill_grace, name, sh.where,
                              time.monotonic())
    try:
        status, pid = _pump(chan, pump, watchdog, result, kill)
    except CHANNEL_ERRORS as exc:
        raise lost(sh.where, "running the program", exc) from None
    finally:
        close_quietly(chan)
    pump.finish()
    if status == -1:
        raise lost(sh.where, f"running {name}")
    return apply_report(result, spec, pump.markers.lines, status, pid, streams)


def _note_processes(result: RunResult, report: RunReport) -> None:
    result.processes = [{"pid": pid, "comm": comm, "peak_rss_kb": kb}
                        for pid, (kb, comm) in sorted(report.peaks.items())]
    result.peak_rss_kb = report.peak_kb
    result.killed_after = [{"pid": pid, "comm": comm} for pid, comm in report.strays]
    if report.strays:
        names = ", ".join(f"{pid} ({comm})" for pid, comm in report.strays)
        result.notes.append(f"{len(report.strays)} process(es) outlived the run (left its "
                            f"process group/session) and were killed: {names}")
    if report.kernel_log_error is not None:
        result.notes.append("kernel log not readable "
                            f"({report.kernel_log_error}): an OOM kill of the run's "
                            "processes could not be checked there (stderr only)")


def _exit_reason(result: RunResult, report: RunReport) -> None:
    result.reason = exit_reason(result.exit_status, result.stderr)
    if result.exit_status == 0:
        line = oom_line(result.stderr)
        if line is not None:
            result.out_of_memory = True
            result.reason = (f"out of memory: a process of the run failed to allocate "
                             f"({line!r} on stderr), though the program exited 0")
    elif result.exit_status == 128 + 9 and report.kernel_log_error is not None:
        result.reason = "killed (SIGKILL; the kernel log could not be read for an OOM trace)"


def judge_run(result: RunResult, report: RunReport) -> None:
    """Reason, memory and what had to be killed, from the board's report: an OOM kill of
    any process of the run (kernel log), or an allocation failure on stderr, is "out of
    memory" whatever the program's exit status."""
    _note_processes(result, report)
    if report.pid is None:
        report.pid = result.pid
    victims = report.oom_victims()
    if result.timed_out:
        return
    if victims:
        result.out_of_memory = True
        who = ", ".join(f"pid {pid} ({comm})" for pid, comm in victims)
        main = result.pid in {pid for pid, _ in victims}
        result.reason = ("out of memory: killed by the kernel OOM killer (SIGKILL)" if main
                         else f"out of memory: the kernel OOM killer killed {who} of the "
                         f"run (the program exited {result.exit_status})")
        return
    _exit_reason(result, report)
