"""`skoracle stale-check`: find every cached copy of a Maven coordinate that a Kotlin/Native or
Gradle build could link, say which ones carry a build marker, and optionally remove the rest.

Kotlin/Native and Gradle cache klibs by coordinate: republishing the same version does not
replace a copy already cached, so a "fixed" build keeps linking the old code. Places looked
at (each root overridable by a flag or environment variable):

- Kotlin/Native: `<konan>/*/klib/cache/**` entries whose name carries the artifact name
  (`--konan-root`, `$KONAN_DATA_DIR`, default `~/.konan`). These caches are keyed by library
  name, so the version is usually not in the path;
- Maven local: `<m2>/<group path>/<artifact>[-variant]/<version>` (`--m2-root`,
  `$SKORACLE_M2_REPO`, default `~/.m2/repository`);
- Gradle: `<gradle home>/caches/modules-2/files-2.1/<group>/<artifact>[-variant]/<version>`
  (`--gradle-root`, `$GRADLE_USER_HOME`, default `~/.gradle`).

`-variant` covers the Kotlin Multiplatform per-target artifacts (`-jvm`, `-linuxarm64`, ...).
With `--marker`, a copy is stale when no file inside it (zip members decompressed) holds the
marker; the paths to remove are the stale copies, or every copy when no marker is given.
`--clear` removes exactly the printed paths, after printing them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.footprint import parse_size
from harness.gate.check import find_marker, marker_patterns
from harness.gate.errors import GateError
from harness.gate.ziputil import DEFAULT_MAX_UNPACKED, MAX_UNPACKED_TEXT, UnpackBudget

_KONAN_SEARCH_DEPTH = 4
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class CachedCopy:
    """One cached copy of the coordinate: a file or directory under one cache root."""

    kind: str  # "konan" | "maven-local" | "gradle"
    path: Path
    root: Path
    artifact: str  # the directory/entry name that matched (artifact or artifact-variant)
    version_in_path: bool
    has_marker: bool | None = None  # None: no marker asked
    marker_in: str | None = None
    error: str | None = None

    @property
    def stale(self) -> bool:
        return self.error is not None or self.has_marker is False

    def to_json(self) -> dict:
        return {
            "kind": self.kind, "path": str(self.path), "root": str(self.root),
            "artifact": self.artifact, "version_in_path": self.version_in_path,
            "has_marker": self.has_marker, "marker_in": self.marker_in, "error": self.error,
            "stale": self.stale,
        }


@dataclass(frozen=True)
class Roots:
    """The three cache roots (missing ones are simply not searched)."""

    konan: Path
    m2: Path
    gradle: Path

    @classmethod
    def from_env(cls, konan: str | None = None, m2: str | None = None,
                 gradle: str | None = None) -> Roots:
        home = Path(os.path.expanduser("~"))
        return cls(
            konan=Path(konan or os.environ.get("KONAN_DATA_DIR") or home / ".konan"),
            m2=Path(m2 or os.environ.get("SKORACLE_M2_REPO") or home / ".m2" / "repository"),
            gradle=Path(gradle or os.environ.get("GRADLE_USER_HOME") or home / ".gradle"),
        )


def _check_name(what: str, value: str) -> None:
    if not _NAME_OK.match(value) or ".." in value:
        raise HarnessError(f"--{what} {value!r}: expected a plain Maven coordinate part "
                           "(letters, digits, . _ + -)", 2)


def _artifact_dirs(parent: Path, artifact: str) -> list[Path]:
    """`artifact` itself and its Kotlin Multiplatform variants `artifact-<target>`."""
    if not parent.is_dir():
        return []
    return sorted(d for d in parent.iterdir()
                  if d.is_dir() and (d.name == artifact or d.name.startswith(artifact + "-")))


def _name_has(name: str, token: str) -> bool:
    return re.search(rf"(?:^|[^A-Za-z0-9]){re.escape(token)}(?:[^A-Za-z0-9]|$)", name) is not None


def find_copies(roots: Roots, group: str, artifact: str, version: str) -> list[CachedCopy]:
    """Every cached copy of group:artifact:version under the three roots, in a stable order."""
    for what, value in (("group", group), ("artifact", artifact), ("version", version)):
        _check_name(what, value)
    copies: list[CachedCopy] = []
    m2_group = roots.m2.joinpath(*group.split("."))
    for adir in _artifact_dirs(m2_group, artifact):
        vdir = adir / version
        if vdir.is_dir():
            copies.append(CachedCopy("maven-local", vdir, roots.m2, adir.name, True))
    files = roots.gradle / "caches" / "modules-2" / "files-2.1" / group
    for adir in _artifact_dirs(files, artifact):
        vdir = adir / version
        if vdir.is_dir():
            copies.append(CachedCopy("gradle", vdir, roots.gradle, adir.name, True))
    if roots.konan.is_dir():
        for dist in sorted(roots.konan.iterdir()):
            cache = dist / "klib" / "cache"
            if cache.is_dir():
                copies.extend(_konan_entries(cache, roots.konan, artifact, version))
    return copies


def _konan_entries(cache: Path, root: Path, artifact: str, version: str) -> list[CachedCopy]:
    found: list[CachedCopy] = []
    stack = [(cache, 0)]
    while stack:
        directory, depth = stack.pop()
        for entry in sorted(directory.iterdir(), reverse=True):
            if _name_has(entry.name, artifact):
                found.append(CachedCopy(
                    "konan", entry, root, entry.name,
                    version_in_path=_name_has(str(entry.relative_to(cache)), version)))
            elif entry.is_dir() and not entry.is_symlink() and depth + 1 < _KONAN_SEARCH_DEPTH:
                stack.append((entry, depth + 1))
    return sorted(found, key=lambda c: str(c.path))


def _marker_in_copy(copy: CachedCopy, patterns: tuple[bytes, ...],
                    max_unpacked: int = DEFAULT_MAX_UNPACKED) -> None:
    paths = [copy.path] if copy.path.is_file() else sorted(
        p for p in copy.path.rglob("*") if p.is_file() and not p.is_symlink())
    try:
        for p in paths:
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise GateError(f"{p}: cannot read: {exc.strerror or exc}") from None
            where = find_marker(str(p), data, patterns, budget=UnpackBudget(max_unpacked))
            if where is not None:
                copy.has_marker, copy.marker_in = True, where
                return
    except GateError as exc:
        copy.has_marker, copy.error = False, str(exc)
        return
    copy.has_marker = False


def _inside(path: Path, root: Path) -> bool:
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(path.parent)
    return os.path.commonpath([real_root, real_parent]) == real_root


def remove_copy(copy: CachedCopy) -> None:
    """Delete one copy; a symlink is unlinked, never followed. Refuses paths outside the root."""
    if not _inside(copy.path, copy.root):
        raise HarnessError(f"refusing to remove {copy.path}: not inside {copy.root}", 2)
    try:
        if copy.path.is_symlink() or copy.path.is_file():
            copy.path.unlink()
        else:
            shutil.rmtree(copy.path)
    except OSError as exc:
        raise HarnessError(f"cannot remove {copy.path}: {exc.strerror or exc}", 2) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stale-check",
        help="list cached copies of a coordinate (konan, ~/.m2, Gradle) and their build marker",
        description=(
            "List every cached copy of GROUP:ARTIFACT:VERSION that Kotlin/Native or Gradle "
            "could link, say whether each holds the build marker, and print the paths to "
            "remove (stale copies; all copies without --marker). Exit 0 none stale (or all "
            "removed with --clear), 1 stale copies found, 2 bad input."
        ),
    )
    p.add_argument("--group", required=True, help="Maven group, e.g. sk.ainet.core")
    p.add_argument("--artifact", required=True,
                   help="artifact id, e.g. skainet-backend-native-cpu (variants -jvm, "
                        "-linuxarm64, ... are included)")
    p.add_argument("--version", required=True, help="version, e.g. 0.40.0")
    p.add_argument("--marker", metavar="TEXT", help="text a fresh build contains")
    p.add_argument("--clear", action="store_true", help="remove the printed paths")
    p.add_argument("--konan-root", help="Kotlin/Native data dir (default $KONAN_DATA_DIR or "
                                         "~/.konan)")
    p.add_argument("--m2-root", help="Maven local repository (default $SKORACLE_M2_REPO or "
                                      "~/.m2/repository)")
    p.add_argument("--gradle-root", help="Gradle user home (default $GRADLE_USER_HOME or "
                                          "~/.gradle)")
    p.add_argument("--max-unpacked", metavar="SIZE", default=MAX_UNPACKED_TEXT,
                   help="with --marker: stop when the zip members of one cached file "
                        "decompress to more than SIZE (zip bombs; default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    roots = Roots.from_env(args.konan_root, args.m2_root, args.gradle_root)
    patterns = marker_patterns(args.marker) if args.marker is not None else ()
    max_unpacked = parse_size(args.max_unpacked, "--max-unpacked")
    copies = find_copies(roots, args.group, args.artifact, args.version)
    if patterns:
        for copy in copies:
            _marker_in_copy(copy, patterns, max_unpacked)
    to_remove = [c for c in copies if c.stale] if patterns else list(copies)
    coordinate = f"{args.group}:{args.artifact}:{args.version}"
    if args.json:
        doc = {"coordinate": coordinate, "marker": args.marker,
               "roots": {k: str(v) for k, v in roots.__dict__.items()},
               "copies": [c.to_json() for c in copies],
               "remove": [str(c.path) for c in to_remove], "removed": []}
    else:
        print(f"{coordinate}: {len(copies)} cached cop{'y' if len(copies) == 1 else 'ies'}")
        for c in copies:
            state = ""
            if c.error is not None:
                state = f"  STALE (unreadable: {c.error})"
            elif c.has_marker is True:
                state = f"  marker found in {c.marker_in}"
            elif c.has_marker is False:
                state = "  STALE (no marker)"
            version = "" if c.version_in_path else "  (version not in path)"
            print(f"  [{c.kind}] {c.path}{version}{state}")
        for c in to_remove:
            print(f"remove: {c.path}")
    removed: list[str] = []
    if args.clear:
        for c in to_remove:
            remove_copy(c)
            removed.append(str(c.path))
            if not args.json:
                print(f"removed: {c.path}")
    if args.json:
        doc["removed"] = removed
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if args.clear:
        return 0  # every stale copy is gone
    return 1 if patterns and to_remove else 0
