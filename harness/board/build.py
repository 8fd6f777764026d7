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
CROSS_NM = "aarch64-linux-gnu-nm"
#: The SL2610's Cortex-A55: Armv8.2-A with fp16 and dotprod, and nothing newer.
BOARD_MARCH = "armv8.2-a+fp16+dotprod"
FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "board"


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
    """Global symbols an `ar` archive defines (via aarch64-linux-gnu-nm)."""
    try:
        head = archive.open("rb").read(8)
    except OSError as exc:
        raise HarnessError(f"kernels archive {archive}: {exc.strerror or exc}") from None
    if head != b"!<arch>\n":
        raise HarnessError(f"kernels archive {archive}: not an `ar` static archive "
                           f"(starts with {head!r}, expected b'!<arch>\\n')")
    nm = tool(CROSS_NM, "binutils-aarch64-linux-gnu")
    proc = subprocess.run([nm, "--defined-only", "--extern-only", "--format=posix",
                           str(archive)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"kernels archive {archive}: nm cannot read it: "
                           f"{proc.stderr.strip()}")
    syms = set()
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in "TtDdBbRrWwVv" and not line.endswith(":"):
            syms.add(parts[0])
    return syms
