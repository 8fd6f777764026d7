"""The project's own Java test kernels (fixtures/jvm, package `skoracle.fixture`; the
interfaces under `sk/ainet/backend/api/kernel` mirror SKaiNET's names for discovery), compiled
with the found JDK's javac on first use and cached by source hash. They exercise the JVM
plumbing (discovery, JIT modes, drift, crash and hang handling); they are never SKaiNET."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.errors import HarnessError
from harness.ggml.build import cache_root
from harness.jvm.jdk import VECTOR_MODULE, Jdk

SOURCE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "jvm"
#: The label every report puts on results of these kernels.
LABEL = "project fixture kernel (not SKaiNET)"


def _sources(part: str) -> list[Path]:
    return sorted((SOURCE_DIR / part).rglob("*.java"))


#: The first JDK with the final FFM API (java.lang.foreign), which the MemorySegment
#: fixtures use.
FFM_FEATURE = 22


def fixture_classpath(jdk: Jdk) -> str:
    """A class directory holding the fixture kernels: the scalar ones (Java 17 bytecode),
    when `jdk` has the Vector API the Panama ones, and from JDK 22 the MemorySegment ones.
    Compiled once per source hash and JDK."""
    scalar, vector = _sources("scalar"), _sources("vector") if jdk.has_vector else []
    ffm = _sources("ffm") if jdk.feature >= FFM_FEATURE else []
    h = hashlib.sha256(jdk.version.encode())
    for f in scalar + vector + ffm:
        h.update(f.relative_to(SOURCE_DIR).as_posix().encode() + b"\0" + f.read_bytes())
    cache = cache_root() / "jvm-fixtures"
    out = cache / h.hexdigest()[:16]
    if out.is_dir():
        return str(out)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".build-"))
    try:
        steps = [[str(jdk.javac), "--release", "17", "-d", str(tmp), *map(str, scalar)]]
        if vector:
            steps.append([str(jdk.javac), "--add-modules", VECTOR_MODULE, "-cp", str(tmp),
                          "-d", str(tmp), *map(str, vector)])
        if ffm:
            steps.append([str(jdk.javac), "-cp", str(tmp), "-d", str(tmp), *map(str, ffm)])
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode:
                raise HarnessError(f"compiling fixtures/jvm with {jdk.javac} failed:\n"
                                   f"{r.stderr.strip()[-2000:]}")
        try:
            tmp.rename(out)
        except OSError:  # built meanwhile by another process: keep theirs
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
