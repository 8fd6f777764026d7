"""Building the C peers from the llama-cpp-python sdist: the one build API of harness.ggml.

Both the scalar ggml C reference (harness.ggml.cref) and llama.cpp (harness.ggml.llamacpp)
are compiled from the same pinned sdist, fetched once into the cache, extracted member by
member, configured and built with cmake, and stamped with their version and flags. A build
is made in a temporary directory beside its final place and renamed into it under a lock
(`cached_build`), so an interrupted or concurrent build leaves no half cache.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from oracle.formats import OracleError

LCP_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LCP_VERSION}.tar.gz"
SDIST_PREFIX = f"llama_cpp_python-{LCP_VERSION}/vendor/llama.cpp/"


def say(msg: str) -> None:
    """The default build log: one line to stdout."""
    print(msg, flush=True)


def cache_root() -> Path:
    """Where downloads and builds are cached: $SKORACLE_CACHE or ~/.cache/skainet-oracle."""
    env = os.environ.get("SKORACLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "skainet-oracle"


def stamp_matches(d: Path, stamp: dict, libraries: tuple[str, ...]) -> bool:
    """True if d holds a finished build recorded with exactly `stamp` and all `libraries`."""
    try:
        got = json.loads((d / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return got.get("build") == stamp and all((d / "lib" / n).is_file() for n in libraries)


def fetch_sdist(log: Callable[[str], None] = say) -> Path:
    """The llama-cpp-python sdist, downloaded with pip into the cache when absent."""
    dest = cache_root() / "sdist"
    path = dest / SDIST_NAME
    if path.is_file() and tarfile.is_tarfile(path):
        return path
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading llama-cpp-python=={LCP_VERSION} sdist with pip")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", f"llama-cpp-python=={LCP_VERSION}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST_NAME
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise HarnessError(f"pip download of llama-cpp-python=={LCP_VERSION} failed: {tail[0]}")
        os.replace(got, path)
    return path


def extract_part(sdist: Path, out: Path, prefix: str, keep: Callable[[str], bool]) -> Path:
    """Extract the members under `prefix` whose stripped name `keep` accepts into out."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix):
                    continue
                m.name = m.name[len(prefix):]
                if m.islnk() and m.linkname.startswith(prefix):
                    m.linkname = m.linkname[len(prefix):]
                if m.name and keep(m.name):
                    members.append(m)
            if not members:
                raise HarnessError(f"{sdist}: no {prefix} in the sdist")
            tar.extractall(out, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise HarnessError(f"{sdist}: cannot extract {prefix}: {exc}") from None
    return out


def run_step(cmd: list[str], cwd: Path, what: str) -> None:
    """Run one build command; on failure a HarnessError quoting its first error line."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + "\n" + proc.stderr).splitlines()
        errors = ([ln for ln in lines if "CMake Error" in ln or "error:" in ln]
                  or [ln for ln in lines if "error" in ln.lower()] or lines[-1:])
        detail = errors[0].strip() if errors else f"exit {proc.returncode}"
        raise HarnessError(f"{what} failed (exit {proc.returncode}): {detail}")


def cached_build(final: Path, is_done: Callable[[], bool], make: Callable[[Path], None],
                 stamp: dict, label: str, force: bool = False,
                 log: Callable[[str], None] = say) -> Path:
    """Build once into `final` (cached, idempotent); return final/lib.

    `make(work)` fills work/lib in a fresh temporary directory beside `final`; the stamp
    is written and the directory renamed into place, so an interrupted build leaves no
    half cache. Concurrent callers (parallel test workers) serialise on a lock file.
    """
    if not force and is_done():
        log(f"{label} already built in {final}")
        return final / "lib"
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and is_done():
            log(f"{label} built meanwhile in {final}")
            return final / "lib"
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            make(work)
            done = {"build": stamp, "seconds": round(time.monotonic() - t0, 1)}
            (work / "stamp.json").write_text(json.dumps(done, indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            work.chmod(0o755)
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    log(f"built {label} in {time.monotonic() - t0:.0f} s -> {final / 'lib'}")
    return final / "lib"


def collect_libraries(bdir: Path, lib: Path, names: tuple[str, ...]) -> None:
    """Copy each built library (and a copy under its SONAME) from bdir's tree into lib."""
    lib.mkdir()
    for name in names:
        found = sorted(bdir.rglob(name))
        if not found:
            raise HarnessError(f"cmake build produced no {name}")
        real = found[0].resolve()
        shutil.copy2(real, lib / name)
        so = soname(real)
        if so and so != name:
            shutil.copy2(real, lib / so)


def soname(lib: Path) -> str | None:
    """The DT_SONAME of a shared library (objdump -p), or None."""
    proc = subprocess.run(["objdump", "-p", str(lib)], capture_output=True, text=True)
    m = re.search(r"^\s*SONAME\s+(\S+)", proc.stdout, re.MULTILINE)
    return m.group(1) if m else None


@dataclass(frozen=True)
class LibraryBuild:
    """One cached library build of the sdist: its directory under the cache root and the
    stamp that must match (version, cmake flags, targets) for the cache to count."""

    name: str  # the directory is <name>-<version>
    cmake_flags: tuple[str, ...]
    targets: tuple[str, ...]
    libraries: tuple[str, ...]

    def dir(self) -> Path:
        """The finished build for the pinned version: holds lib/ and stamp.json."""
        return cache_root() / f"{self.name}-{LCP_VERSION}"

    def stamp(self) -> dict:
        return {"llama_cpp_python": LCP_VERSION, "cmake_flags": list(self.cmake_flags),
                "targets": list(self.targets)}

    def is_built(self) -> bool:
        """True if a complete build with exactly the current version and flags is cached."""
        return stamp_matches(self.dir(), self.stamp(), self.libraries)

    def build(self, make: Callable[[Path], None], label: str, force: bool,
              log: Callable[[str], None]) -> Path:
        """`cached_build` of this library; returns the directory of the .so files."""
        return cached_build(self.dir(), self.is_built, make, self.stamp(), label, force, log)


def library_main(argv: list[str] | None, name: str, what: str,
                 build_fn: Callable[..., Path], dir_fn: Callable[[], Path],
                 built_fn: Callable[[], bool], check: Callable[[], None] | None = None) -> int:
    """`python3 -m harness.ggml.<name> build [--force] | info` for a cached library build."""
    parser = argparse.ArgumentParser(prog=f"python3 -m harness.ggml.{name}",
                                     description=f"Build/inspect {what}.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help=f"build (cached) and verify {what}")
    p_build.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("info", help="print where the library is and how it was built")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build_fn(force=args.force)
            if check:
                check()
        else:
            try:
                stamp = json.loads((dir_fn() / "stamp.json").read_text())
            except (OSError, ValueError):
                stamp = None
            print(json.dumps({"dir": str(dir_fn()), "built": built_fn(), "stamp": stamp},
                             indent=1))
    except (HarnessError, OracleError) as exc:
        print(f"{name} {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"{name} {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
