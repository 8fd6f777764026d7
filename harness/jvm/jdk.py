"""Finding a JDK: `--jdk`, then JAVA_HOME, then /usr/lib/jvm/*; each checked for the
`jdk.incubator.vector` module the Panama kernels need (read from the JDK's `release` file,
else asked of `java --list-modules`)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

VECTOR_MODULE = "jdk.incubator.vector"
MIN_VECTOR_VERSION = 21
JVM_ROOT = Path("/usr/lib/jvm")


@dataclass(frozen=True)
class Jdk:
    """One JDK installation: its home, feature version and whether it has the Vector API."""

    home: Path
    version: str
    feature: int
    has_vector: bool

    @property
    def java(self) -> Path:
        return self.home / "bin" / "java"

    @property
    def javac(self) -> Path:
        return self.home / "bin" / "javac"

    @property
    def libjvm(self) -> Path:
        return self.home / "lib" / "server" / "libjvm.so"

    @property
    def suitable(self) -> bool:
        """>= 21 with jdk.incubator.vector: runs scalar and Panama kernels."""
        return self.has_vector and self.feature >= MIN_VECTOR_VERSION

    def describe(self) -> str:
        vec = VECTOR_MODULE if self.has_vector else f"NO {VECTOR_MODULE}"
        return f"JDK {self.version} at {self.home} ({vec})"


def probe_jdk(home: Path | str) -> Jdk | None:
    """The JDK at `home`, or None when it is not one (no bin/java or no server libjvm)."""
    home = Path(home).resolve()
    if not (home / "bin" / "java").is_file() or not (home / "lib" / "server" /
                                                     "libjvm.so").is_file():
        return None
    release = home / "release"
    text = release.read_text(errors="replace") if release.is_file() else ""
    m = re.search(r'^JAVA_VERSION="([^"]+)"', text, re.M)
    mods = re.search(r'^MODULES="([^"]*)"', text, re.M)
    if m and mods:
        version, modules = m.group(1), mods.group(1).split()
    else:
        try:
            ver = subprocess.run([str(home / "bin" / "java"), "-version"], capture_output=True,
                                 text=True, timeout=60).stderr
            listed = subprocess.run([str(home / "bin" / "java"), "--list-modules"],
                                    capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        vm = re.search(r'version "([^"]+)"', ver)
        version = vm.group(1) if vm else "unknown"
        modules = [line.split("@")[0] for line in listed.split()]
    fm = re.match(r"(?:1\.)?(\d+)", version)
    return Jdk(home, version, int(fm.group(1)) if fm else 0, VECTOR_MODULE in modules)


def candidates() -> list[Path]:
    """JAVA_HOME first, then every directory under /usr/lib/jvm."""
    out = []
    if os.environ.get("JAVA_HOME"):
        out.append(Path(os.environ["JAVA_HOME"]))
    if JVM_ROOT.is_dir():
        out.extend(sorted(p for p in JVM_ROOT.iterdir() if p.is_dir()))
    return out


def find_jdk(explicit: str | Path | None = None) -> Jdk:
    """`explicit` (--jdk) as given, else the newest suitable candidate, else the newest JDK
    of any kind (it runs the scalar kernels only). HarnessError when there is none."""
    if explicit:
        jdk = probe_jdk(explicit)
        if jdk is None:
            raise HarnessError(f"--jdk {explicit}: not a JDK (needs bin/java and "
                               "lib/server/libjvm.so)")
        return jdk
    seen: dict[Path, Jdk] = {}
    for c in candidates():
        jdk = probe_jdk(c)
        if jdk is not None:
            seen.setdefault(jdk.home, jdk)
    if not seen:
        raise HarnessError("no JDK found: pass --jdk PATH or set JAVA_HOME (looked in "
                           f"JAVA_HOME and {JVM_ROOT}/*)")
    return max(seen.values(), key=lambda j: (j.suitable, j.feature))
