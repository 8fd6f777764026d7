"""The gate's error types: bad input is exit 2, with a message naming the container path."""

from __future__ import annotations

from harness.errors import HarnessError


def one_line(text: str) -> str:
    """`text` with control characters escaped (a member name may hold a newline)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class GateError(HarnessError):
    """Input the gate cannot read: not ELF/ar/zip, truncated, corrupt (exit code 2).
    The message is always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message), 2)


class NotAArch64(GateError):
    """A well-formed ELF file for another machine; callers decide if that is fatal."""

    def __init__(self, label: str, machine: str) -> None:
        super().__init__(f"{label}: not AArch64 (e_machine {machine}); the CPU profiles "
                         "describe Arm cores and check AArch64 code only")
        self.machine = machine
