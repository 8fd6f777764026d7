"""What a program run on the board sees: its architecture (the board's, or the one qemu-user
emulates when the profile's exec_prefix names it) and the memory it may use (the smallest of
the machine's RAM, the session's address-space cap and the cgroup's limit)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.board.profile import BoardProfile


def emulated_arch(profile: BoardProfile) -> str | None:
    """The architecture qemu-user emulates for the profile's programs, if it names one."""
    argv = profile.exec_prefix_argv
    m = re.fullmatch(r"qemu-(\w+)(?:-static)?", Path(argv[0]).name) if argv else None
    return m.group(1) if m else None


def program_view(facts: dict[str, str], profile: BoardProfile) -> dict[str, object]:
    """Architecture and memory as the program sees them, each with how it was found."""
    from harness.board.sim import QEMU_VM_ALLOWANCE_MB

    host_arch = facts.get("arch", "?")
    emu = emulated_arch(profile)
    view: dict[str, object] = {"host_arch": host_arch, "arch": emu or host_arch,
                               "emulated": emu is not None}
    if emu:
        view["arch_note"] = (f"emulated by `{profile.exec_prefix}` on an {host_arch} "
                             "machine")
    limits: list[tuple[float, str]] = []
    mem = facts.get("memkb", "")
    if mem.isdigit():
        limits.append((int(mem) / 1024, "MemTotal"))
    vlim = facts.get("vlimit", "")
    if vlim.isdigit():
        mib = int(vlim) / 1024
        if emu:
            limits.append((mib - QEMU_VM_ALLOWANCE_MB,
                           f"address-space cap (ulimit -v) {mib:.0f} MiB less qemu-user's own "
                           f"{QEMU_VM_ALLOWANCE_MB} MiB"))
        else:
            limits.append((mib, "address-space cap (ulimit -v)"))
    cg = facts.get("cgmem", "")
    if cg.isdigit() and int(cg) < 1 << 60:
        limits.append((int(cg) / 2**20, "cgroup memory limit"))
    if limits:
        mib, how = min(limits)
        view["memory_mib"] = round(mib)
        view["memory_note"] = how
        view["memtotal_mib"] = round(int(mem) / 1024) if mem.isdigit() else None
    return view


def view_lines(view: dict[str, object]) -> list[str]:
    """`board check`'s lines for the program's view."""
    arch = f"{view['arch']}" + (f" ({view['arch_note']})" if view.get("arch_note") else "")
    lines = [f"  arch      {arch}"]
    if "memory_mib" in view:
        note = str(view["memory_note"])
        total = view.get("memtotal_mib")
        if note != "MemTotal" and total:
            note += f"; the machine's MemTotal {total} MiB is not available to it"
        lines.append(f"  memory    {view['memory_mib']} MiB for the program ({note})")
    else:
        lines.append("  memory    ?")
    return lines
