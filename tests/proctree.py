"""Which host processes are this test's own, read from /proc.

Several people (and CI) may run board-in-a-box tests on one machine at once, so a test
never judges "any dropbear/qemu on the machine": it follows the tree under the child it
started (parent links in /proc/PID/stat) to find that child's board-in-a-box, then follows
the sim's id, which every sim process carries in its environment (SKORACLE_SIM_ID, exported
by the sim's login script), so processes that were reparented after their parent died are
still found. This module reads /proc itself rather than reusing harness.board.sim, whose
clean-up is what the tests check.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

SIM_TAG = b"SKORACLE_SIM_ID="


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])  # after "(comm) state"


def descendants(root: int) -> set[int]:
    """PIDs of every live process below `root` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        ppid = _parent(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    """The process's argv joined by spaces ("" once it has gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def mentioning(text: str) -> list[str]:
    """Command lines of host processes whose argv contains `text` (e.g. a path only this
    test's sim uses, such as its remote directory)."""
    return [c for c in map(cmdline, _pids()) if text in c]


def _sim_id(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's process
        return None
    for var in env.split(b"\0"):
        if var.startswith(SIM_TAG):
            return var[len(SIM_TAG):].decode()
    return None


def with_sim_id(sim_id: str) -> list[int]:
    """Live processes carrying this sim's id in their environment."""
    return [pid for pid in _pids() if _sim_id(pid) == sim_id]


def listening(pid: int) -> bool:
    """Does the process hold a TCP socket in LISTEN state (its own, by socket inode)?"""
    try:
        fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and f"socket:[{fields[9]}]" in fds:  # 0A = TCP_LISTEN
                return True
    return False


class SimsStartedBy:
    """The board-in-a-box instances started under one process, and all their processes.

    Call `look()` while the starter runs (it finds sims through the process tree);
    `processes()` keeps finding their processes by sim id after the starter has gone.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.ids: set[str] = set()
        self.servers: set[int] = set()

    def look(self) -> None:
        """Note every sim whose processes are below the root now."""
        for pid in descendants(self.root):
            sim_id = _sim_id(pid)
            if sim_id:
                self.ids.add(sim_id)
                if Path(cmdline(pid).split(" ")[0]).name == "dropbear":
                    self.servers.add(pid)

    def up(self) -> bool:
        """Is one of the root's sims accepting SSH connections (its dropbear listening)?"""
        self.look()
        return any(listening(pid) for pid in self.servers)

    def processes(self) -> list[int]:
        """Live PIDs carrying the id of one of these sims, wherever they were reparented."""
        return [pid for pid in _pids() if pid != os.getpid() and _sim_id(pid) in self.ids]

    def kill(self) -> None:
        """SIGKILL whatever is left (so a failing test leaves nothing behind)."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
