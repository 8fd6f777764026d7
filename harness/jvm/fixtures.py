"""The project's own Java test kernels (fixtures/jvm, package `skoracle.fixture`; the
interfaces and classes under `sk/ainet/backend/api/kernel` mirror SKaiNET's names for
discovery and dispatch), compiled with the found JDK's javac on first use and cached by
source hash. They exercise the JVM plumbing (discovery, JIT modes, drift, crash and hang
handling, provider dispatch through KernelServiceLoader/KernelRegistry); they are never
SKaiNET.

Each part (scalar/, vector/ with the Vector API, ffm/ from JDK 22) may carry resources (any
file that is not .java), copied into the class directory; its
META-INF/services/sk.ainet.backend.api.kernel.KernelProvider lists the providers of that
part only, and the lists of the parts compiled are joined, so the file never names a class
the directory lacks. With the ffm part, on Linux x86-64 or aarch64, the fixture C kernels
(fixtures/host) are built into the resource native/linux-<arch>/libskainet_kernels.so, where
SKaiNET's native provider looks for its library."""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from harness.board.hostkernels import NATIVE_OS, native_library_resource
from harness.errors import HarnessError
from harness.ggml.build import cache_root
from harness.jvm.jdk import VECTOR_MODULE, Jdk

SOURCE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "jvm"
#: The label every report puts on results of these kernels.
LABEL = "project fixture kernel (not SKaiNET)"
#: Where ServiceLoader reads the kernel providers of a class directory.
SERVICES_FILE = "META-INF/services/sk.ainet.backend.api.kernel.KernelProvider"
#: The fixture library's file name (SKaiNET's on Linux: the fixture is built for Linux only).
NATIVE_LIBRARY = NATIVE_OS["Linux"][1]

#: The first JDK with the final FFM API (java.lang.foreign), which the MemorySegment
#: and native fixtures use.
FFM_FEATURE = 22


def _sources(part: str) -> list[Path]:
    return sorted((SOURCE_DIR / part).rglob("*.java"))


def _resources(part: str) -> list[Path]:
    """The part's files that are not Java sources (services lists, ...)."""
    return sorted(f for f in (SOURCE_DIR / part).rglob("*")
                  if f.is_file() and f.suffix != ".java")


def native_resource() -> str | None:
    """native/linux-<arch>/libskainet_kernels.so on a Linux x86-64 or aarch64 host, else
    None (the fixture C library is built for the host only)."""
    return native_library_resource() if platform.system() == "Linux" else None


def _native_inputs() -> list[Path]:
    """What the fixture C library is built from (hashed with the Java sources)."""
    from harness.board.build import COMMON_FIXTURE_DIR
    from harness.board.hostkernels import HOST_FIXTURE_DIR, fixture_host_source

    return [fixture_host_source(), *sorted(HOST_FIXTURE_DIR.glob("*.h")),
            *sorted(COMMON_FIXTURE_DIR.glob("*.h"))]


def _copy_resources(parts: list[str], out: Path) -> None:
    """Copy the parts' resources into `out`, joining their services lists."""
    for part in parts:
        for f in _resources(part):
            rel = f.relative_to(SOURCE_DIR / part)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel.as_posix() == SERVICES_FILE:
                names = [n for n in f.read_text().split() if n]
                with dest.open("a") as fh:
                    fh.writelines(f"{n}\n" for n in names)
            else:
                shutil.copyfile(f, dest)


def fixture_classpath(jdk: Jdk) -> str:
    """A class directory holding the fixture kernels: the scalar ones (Java 17 bytecode),
    when `jdk` has the Vector API the Panama ones, and from JDK 22 the MemorySegment and
    native (FFM) ones, with the fixture C library as a resource when this host has one
    (`native_resource`). Compiled once per source hash and JDK."""
    from harness.board.hostkernels import FIXTURE_CFLAGS, build_fixture_host_library

    parts = ["scalar", *(["vector"] if jdk.has_vector else []),
             *(["ffm"] if jdk.feature >= FFM_FEATURE else [])]
    sources = {p: _sources(p) for p in parts}
    native = native_resource() if "ffm" in parts else None
    h = hashlib.sha256(jdk.version.encode())
    for f in [f for p in parts for f in (*sources[p], *_resources(p))]:
        h.update(f.relative_to(SOURCE_DIR).as_posix().encode() + b"\0" + f.read_bytes())
    if native:
        h.update(" ".join((native, *FIXTURE_CFLAGS)).encode())
        for f in _native_inputs():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    cache = cache_root() / "jvm-fixtures"
    out = cache / h.hexdigest()[:16]
    if out.is_dir():
        return str(out)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".build-"))
    try:
        steps = [[str(jdk.javac), "--release", "17", "-d", str(tmp), *map(str, sources["scalar"])]]
        if "vector" in parts:
            steps.append([str(jdk.javac), "--add-modules", VECTOR_MODULE, "-cp", str(tmp),
                          "-d", str(tmp), *map(str, sources["vector"])])
        if "ffm" in parts:
            steps.append([str(jdk.javac), "-cp", str(tmp), "-d", str(tmp),
                          *map(str, sources["ffm"])])
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode:
                raise HarnessError(f"compiling fixtures/jvm with {jdk.javac} failed:\n"
                                   f"{r.stderr.strip()[-2000:]}")
        _copy_resources(parts, tmp)
        if native:
            (tmp / native).parent.mkdir(parents=True, exist_ok=True)
            build_fixture_host_library(tmp / native)
        try:
            tmp.rename(out)
        except OSError:  # built meanwhile by another process: keep theirs
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


class UnavailableNative(NamedTuple):
    """Class directories in which the fixture native provider is listed, yet unavailable."""

    missing: str  # no library resource: nothing to load
    corrupt: str  # the library truncated to its ELF header: System.load fails


def unavailable_native_classpaths(jdk: Jdk, where: Path) -> UnavailableNative:
    """Two copies of `fixture_classpath(jdk)` under `where` (new directories `missing-library`
    and `corrupt-library`), for tests of a native provider that is registered but not
    available. HarnessError when `jdk` or this host has no native fixture."""
    resource = native_resource()
    if jdk.feature < FFM_FEATURE or resource is None:
        raise HarnessError(f"no native fixture library for JDK {jdk.version} on "
                           f"{platform.system()} {platform.machine()}")
    cp = Path(fixture_classpath(jdk))
    missing, corrupt = Path(where) / "missing-library", Path(where) / "corrupt-library"
    shutil.copytree(cp, missing, ignore=lambda d, names: ["native"] if Path(d) == cp else [])
    shutil.copytree(cp, corrupt)
    lib = corrupt / resource
    lib.write_bytes(lib.read_bytes()[:64])
    return UnavailableNative(str(missing), str(corrupt))
