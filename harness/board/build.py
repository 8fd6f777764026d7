"""Cross-compiling the board's C programs (fixtures/board/) with aarch64-linux-gnu-gcc.

Builds are cached by a hash of the sources and the command line, so tests and the benchmark
rebuild only what changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError

CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_AR = "aarch64-linux-gnu-ar"
#: The SL2610's Cortex-A55: Armv8.2-A with fp16 and dotprod, and nothing newer.
BOARD_MARCH = "armv8.2-a+fp16+dotprod"
FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "board"
#: C headers shared by the board's and the host's fixture kernels (fixtures/common)
COMMON_FIXTURE_DIR = FIXTURE_DIR.parent / "common"
#: SKaiNET's native kernel flags (its CMake build); the project's fixture kernels use them too.
SKAINET_KERNEL_FLAGS = ("-std=c11", "-fPIC", "-O3", "-ffast-math", "-funroll-loops",
                        "-march=armv8.2-a+fp16+dotprod", "-fvisibility=hidden")


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        raise HarnessError(f"`{name}` not found (Debian package {package}; scripts/setup.sh "
                           "installs it)")
    return path


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skoracle" / "board-build"


def cross_compile(
    sources: Sequence[Path | str],
    output_name: str,
    march: str = BOARD_MARCH,
    static: bool = True,
    extra: Sequence[str] = (),
    out_dir: Path | None = None,
) -> Path:
    """Compile and link `sources` for aarch64; returns the (cached) program path.

    A failing compile or link is a HarnessError (exit 2) carrying the compiler's message.
    """
    cc = tool(CROSS_CC, "gcc-aarch64-linux-gnu")
    srcs = [Path(s) for s in sources]
    for s in srcs:
        if not s.is_file():
            raise HarnessError(f"source not found: {s}")
    args = ["-O2", f"-march={march}", *(["-static"] if static else []), *extra]
    h = hashlib.sha256("\0".join([output_name, *args]).encode())
    for s in srcs:
        h.update(s.read_bytes())
    for arg in extra:  # archives and objects linked in: a rebuilt one must relink
        if not arg.startswith("-") and Path(arg).is_file():
            h.update(Path(arg).read_bytes())
    out_dir = out_dir or default_cache()
    target = out_dir / h.hexdigest()[:16] / output_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{output_name}.{os.getpid()}.tmp")
    cmd = [cc, "-O2", f"-march={march}", *(["-static"] if static else []), *map(str, srcs),
           *extra, "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        msg = proc.stderr.strip().splitlines()
        raise HarnessError(f"building {output_name} failed ({' '.join(cmd[:1])} ...):\n  "
                           + "\n  ".join(msg[-15:]))
    tmp.replace(target)
    return target


def fixture_program(name: str, march: str = BOARD_MARCH, out_dir: Path | None = None,
                    extra: Sequence[str] = (), static: bool = True) -> Path:
    """Build `fixtures/board/<name>.c` into a static aarch64 program."""
    return cross_compile([FIXTURE_DIR / f"{name}.c"], name, march=march, static=static,
                         extra=extra, out_dir=out_dir)


def archive_symbols(archive: Path) -> set[str]:
    """Global and weak symbols the ELF members of an `ar` archive define, read with
    pyelftools (HarnessError naming the archive and member when it is not readable)."""
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    from harness.gate.arfile import ArchiveError, iter_members

    try:
        data = Path(archive).read_bytes()
    except OSError as exc:
        raise HarnessError(f"kernels archive {archive}: {exc.strerror or exc}") from None
    if data[:8] != b"!<arch>\n":
        raise HarnessError(f"kernels archive {archive}: not an `ar` static archive "
                           f"(starts with {data[:8]!r}, expected b'!<arch>\\n')")
    syms: set[str] = set()
    try:
        for member in iter_members(data, label=f"kernels archive {archive}"):
            if member.special or bytes(member.data[:4]) != b"\x7fELF":
                continue
            try:
                elf = ELFFile(io.BytesIO(bytes(member.data)))
                tables = [s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)]
                for table in tables:
                    for sym in table.iter_symbols():
                        if (sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
                                and sym["st_shndx"] != "SHN_UNDEF" and sym.name):
                            syms.add(sym.name)
            except (ELFError, ValueError) as exc:
                raise HarnessError(f"kernels archive {archive}: member {member.name}: not a "
                                   f"readable ELF object ({exc})") from None
    except ArchiveError as exc:
        raise HarnessError(str(exc)) from None
    return syms


def fixture_kernel_archive(out_dir: Path | None = None, wrong: bool = False) -> Path:
    """The project's own test archive: fixtures/board/kernels/*.c compiled with SKaiNET's
    kernel flags and archived as libfixture_kernels.a (cached by a hash of sources and
    flags). `wrong`: fixtures/board/kernels_wrong/*.c, one deliberately wrong kernel per
    non-packed kind, as libfixture_kernels_wrong.a. A test fixture of the harness, never
    SKaiNET's kernels (the file name marks it: kernel-parity labels it TEST FIXTURE)."""
    cc, ar = tool(CROSS_CC, "gcc-aarch64-linux-gnu"), tool(CROSS_AR, "binutils-aarch64-linux-gnu")
    src_dir = FIXTURE_DIR / ("kernels_wrong" if wrong else "kernels")
    srcs = sorted(src_dir.glob("*.c"))
    h = hashlib.sha256("\0".join(SKAINET_KERNEL_FLAGS).encode())
    for s in sorted({*src_dir.glob("*.[ch]"), *(FIXTURE_DIR / "kernels").glob("*.h"),
                     *COMMON_FIXTURE_DIR.glob("*.h")}):
        h.update(s.name.encode() + b"\0" + s.read_bytes())
    name = "libfixture_kernels_wrong.a" if wrong else "libfixture_kernels.a"
    target = (out_dir or default_cache()) / h.hexdigest()[:16] / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = target.parent / f".objs.{os.getpid()}"
    tmp_dir.mkdir(exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        objs = []
        for src in srcs:
            obj = tmp_dir / f"{src.stem}.o"
            proc = subprocess.run([cc, *SKAINET_KERNEL_FLAGS, "-c", str(src), "-o", str(obj)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise HarnessError(f"building fixture kernel {src.name} failed:\n  "
                                   + "\n  ".join(proc.stderr.strip().splitlines()[-15:]))
            objs.append(str(obj))
        proc = subprocess.run([ar, "rcs", str(tmp), *objs], capture_output=True, text=True)
        if proc.returncode != 0:
            raise HarnessError(f"archiving the fixture kernels failed: {proc.stderr.strip()}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target
