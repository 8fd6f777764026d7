"""Checks of `skoracle board` arguments, made before anything is sent to the board: a bad
value is one clear line and exit 2 (argparse type errors, HarnessError), never a run that
fails after it has acted."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import HarnessError


def positive_seconds(text: str) -> float:
    """--timeout: a number of seconds above zero (0 or less would kill the program at once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a number of seconds above 0")
    return value


def file_mode(text: str) -> int:
    """--mode: octal permission bits, 0 to 7777."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode (e.g. 644, 755)") \
            from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text}: octal mode out of range (0 to 7777)")
    return mode


def check_outdir(outdir: Path) -> None:
    """--outdir must be a directory or creatable as one; checked before the run."""
    if outdir.exists() and not outdir.is_dir():
        raise HarnessError(f"--outdir {outdir}: exists and is not a directory")
    parent = next((a for a in (outdir, *outdir.parents) if a.exists()), Path("."))
    if not parent.is_dir():
        raise HarnessError(f"--outdir {outdir}: {parent} is not a directory")


def fetch_destination(remote: str, local: str) -> Path:
    """Where `board fetch` writes: LOCAL, or LOCAL/<remote name> when LOCAL is a directory."""
    dst = Path(local)
    if dst.is_dir():
        name = remote.rstrip("/").rpartition("/")[2]
        if not name or name in (".", ".."):
            raise HarnessError(f"fetch: {remote!r} names no file to write into {dst}/")
        dst = dst / name
        if dst.is_dir():
            raise HarnessError(f"fetch: {dst} is a directory")
    if not dst.parent.is_dir():
        raise HarnessError(f"fetch: {dst.parent}: no such directory")
    return dst


#: ELF e_machine -> the name `uname -m` gives that architecture.
ELF_ARCH_NAMES = {"EM_AARCH64": "aarch64", "EM_X86_64": "x86_64", "EM_386": "i686",
                  "EM_ARM": "arm", "EM_RISCV": "riscv64", "EM_PPC64": "ppc64le",
                  "EM_S390": "s390x", "EM_MIPS": "mips"}
#: What the board runs (the SL2610's Cortex-A55).
BOARD_ARCH = "aarch64"


def elf_arch(program: Path) -> tuple[str, str] | None:
    """(uname-style architecture, e_machine) of an ELF file, read with pyelftools; None for
    a file that is not ELF (a script, for instance)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with program.open("rb") as fh:
            if fh.read(4) != b"\x7fELF":
                return None
            fh.seek(0)
            machine = str(ELFFile(fh)["e_machine"])
    except (ELFError, ValueError) as exc:
        raise HarnessError(f"program {program}: not a readable ELF file ({exc})") from None
    except OSError as exc:
        raise HarnessError(f"program {program}: {exc.strerror or exc}") from None
    return ELF_ARCH_NAMES.get(machine, machine), machine


def check_program_arch(program: Path, board_arch: str = BOARD_ARCH) -> None:
    """Refuse (exit 2) an ELF program built for another architecture than the board's,
    before anything is pushed."""
    found = elf_arch(program)
    if found is None or found[0] == board_arch:
        return
    arch, machine = found
    want = next((m for m, a in ELF_ARCH_NAMES.items() if a == board_arch), board_arch)
    raise HarnessError(f"program {program} is built for {arch} (ELF {machine}); the board "
                       f"runs {board_arch} ({want}): build it for {board_arch} "
                       f"(e.g. {board_arch}-linux-gnu-gcc)")


def env_pair(text: str) -> tuple[str, str]:
    """--env K=V: a shell variable name, then its value (may be empty)."""
    key, sep, value = text.partition("=")
    if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit() or not key.isascii():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE with NAME a variable "
                                         "name (letters, digits, _; not starting with a digit)")
    return key, value


def stage_pair(text: str) -> tuple[Path, str]:
    """--stage LOCAL=REMOTE: REMOTE ending in / is a directory (the file keeps its name);
    a relative REMOTE is resolved under the profile's remote_dir by the caller."""
    local, sep, remote = text.partition("=")
    if not sep or not local or not remote:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOCAL=REMOTE_PATH or "
                                         "LOCAL=REMOTE_DIR/")
    path = Path(local)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{local}: no such file")
    if remote.endswith("/"):
        remote += path.name
    if any(part in ("..",) for part in remote.split("/")):
        raise argparse.ArgumentTypeError(f"{remote!r}: no '..' in the board path")
    return path, remote


def connect_failure(exc: BaseException) -> str:
    """Why a TCP connection to the board failed, in words (refused, timeout, no route, ...)."""
    import errno
    import socket

    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == \
            errno.ECONNREFUSED:
        return "connection refused (nothing listens on that port, or a firewall rejects it)"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timeout (no answer: host down, wrong address, or packets dropped)"
    if isinstance(exc, EOFError) or "banner" in str(exc):
        return ("the peer closed the connection before the SSH handshake (not an SSH server "
                "on that port, or a proxy/firewall cutting it)")
    code = getattr(exc, "errno", None)
    words = {errno.EHOSTUNREACH: "no route to host", errno.ENETUNREACH: "network unreachable",
             errno.ECONNRESET: "connection reset by the peer",
             errno.EADDRNOTAVAIL: "address not available on this machine"}
    if code in words:
        return words[code]
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{text} ({type(exc).__name__})"
