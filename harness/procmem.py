"""Peak resident memory of a process, as Linux keeps it per address space.

`VmHWM` in /proc/PID/status is the high-water mark of the process's own memory since its
last exec. `getrusage().ru_maxrss` is not: Linux carries the parent's RSS at fork across
exec into it, so a child started from a large process (a test runner, say) would report the
parent's size. Every peak-memory figure of the project comes from here, and so does the
memory budget the harness gives the oracle's quantizer (`available_memory`).
"""

from __future__ import annotations


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """VmHWM of process `pid` in bytes, or None when it is gone or has no such line."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int | None:
    """Bytes the system can still hand out (Linux MemAvailable, page cache included), or the
    oracle's portable estimate where /proc does not say (oracle.quants.available_memory)."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    from oracle.quants import available_memory as portable

    return portable()
