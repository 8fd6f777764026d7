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

Artifact names match exactly: `--artifact skainet-backend` is not `skainet-backend-cpu`.
The one widening is `-variant`, the Kotlin Multiplatform per-target artifacts of that very
name (`-jvm`, `-linuxarm64`, `-linuxx64`, ... : `KMP_TARGET_SUFFIXES`), which are the same
library built for another target. A glob (`*`, `?`) is used only when the user writes one,
and then matches the whole directory name (`skainet-backend*` covers `-cpu` and its variants).
In a Kotlin/Native cache name the artifact must be followed by a variant, then nothing, a
version, `cache` or a file extension.

With `--marker`, a copy is stale when no file inside it (zip members decompressed) holds the
marker; the paths to remove are the stale copies, or every copy when no marker is given.
`--clear` prints exactly the paths it will remove, then removes them: after a `y` at the
prompt on a terminal, or with `--yes` (required when stdin is not a terminal: exit 2).
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
_GLOB_OK = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9._+*?-]*$")

#: Kotlin Multiplatform publishes one artifact per target as `<artifact>-<target>`.
KMP_TARGET_SUFFIXES = (
    "jvm", "android", "android-debug", "js", "wasm-js", "wasm-wasi", "metadata",
    "linuxx64", "linuxarm64", "linuxarm32hfp", "mingwx64",
    "macosx64", "macosarm64", "iosx64", "iosarm64", "iossimulatorarm64",
    "tvosx64", "tvosarm64", "tvossimulatorarm64",
    "watchosx64", "watchosarm32", "watchosarm64", "watchossimulatorarm64",
    "watchosdevicearm64", "androidnativearm32", "androidnativearm64",
    "androidnativex86", "androidnativex64",
)
_VARIANT = "|".join(re.escape(v) for v in sorted(KMP_TARGET_SUFFIXES, key=len, reverse=True))
#: What may follow the artifact (and variant) in a Kotlin/Native cache entry's name.
_CACHE_TAIL = r"(?:$|[-_.](?:\d|cache(?:$|[^A-Za-z0-9])|(?:klib|jar|a|so|kexe)$))"


@dataclass(frozen=True)
class ArtifactName:
    """`--artifact`: an exact name (plus its KMP target variants), or a glob the user wrote."""

    text: str

    @property
    def is_glob(self) -> bool:
        return any(c in self.text for c in "*?")

    def _core(self) -> str:
        if not self.is_glob:
            return re.escape(self.text)
        return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
                       for c in self.text)

    def matches_directory(self, name: str) -> bool:
        """A Maven/Gradle artifact directory: the name itself or `<name>-<KMP target>`."""
        if self.is_glob:
            return re.fullmatch(self._core(), name) is not None
        return re.fullmatch(rf"{self._core()}(?:-(?:{_VARIANT}))?", name) is not None

    def in_cache_name(self, name: str) -> bool:
        """A Kotlin/Native cache entry named after this artifact (see the module docstring)."""
        return re.search(rf"(?:^|[^A-Za-z0-9]){self._core()}(?:-(?:{_VARIANT}))?{_CACHE_TAIL}",
                         name) is not None


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
    allowed = _GLOB_OK if what == "artifact" else _NAME_OK
    if not allowed.match(value) or ".." in value:
        glob = "; * and ? as a glob" if what == "artifact" else ""
        raise HarnessError(f"--{what} {value!r}: expected a plain Maven coordinate part "
                           f"(letters, digits, . _ + -{glob})", 2)


def _artifact_dirs(parent: Path, artifact: ArtifactName) -> list[Path]:
    """The artifact's directories under a group directory (exact name and KMP variants)."""
    if not parent.is_dir():
        return []
    return sorted(d for d in parent.iterdir() if d.is_dir() and artifact.matches_directory(d.name))


def _name_has(name: str, token: str) -> bool:
    return re.search(rf"(?:^|[^A-Za-z0-9]){re.escape(token)}(?:[^A-Za-z0-9]|$)", name) is not None


def find_copies(roots: Roots, group: str, artifact: str, version: str) -> list[CachedCopy]:
    """Every cached copy of group:artifact:version under the three roots, in a stable order."""
    for what, value in (("group", group), ("artifact", artifact), ("version", version)):
        _check_name(what, value)
    name = ArtifactName(artifact)
    copies: list[CachedCopy] = []
    m2_group = roots.m2.joinpath(*group.split("."))
    for adir in _artifact_dirs(m2_group, name):
        vdir = adir / version
        if vdir.is_dir():
            copies.append(CachedCopy("maven-local", vdir, roots.m2, adir.name, True))
    files = roots.gradle / "caches" / "modules-2" / "files-2.1" / group
    for adir in _artifact_dirs(files, name):
        vdir = adir / version
        if vdir.is_dir():
            copies.append(CachedCopy("gradle", vdir, roots.gradle, adir.name, True))
    if roots.konan.is_dir():
        for dist in sorted(roots.konan.iterdir()):
            cache = dist / "klib" / "cache"
            if cache.is_dir():
                copies.extend(_konan_entries(cache, roots.konan, name, version))
    return copies


def _konan_entries(cache: Path, root: Path, artifact: ArtifactName,
                   version: str) -> list[CachedCopy]:
    found: list[CachedCopy] = []
    stack = [(cache, 0)]
    while stack:
        directory, depth = stack.pop()
        for entry in sorted(directory.iterdir(), reverse=True):
            if artifact.in_cache_name(entry.name):
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
            "remove (stale copies; all copies without --marker). Artifact names match "
            "exactly, plus their Kotlin Multiplatform target variants; a glob only when "
            "written. Exit 0 none stale (or all removed with --clear), 1 stale copies found, "
            "2 bad input or --clear not confirmed (nothing removed)."
        ),
    )
    p.add_argument("--group", metavar="GROUP", required=True,
                   help="Maven group, e.g. sk.ainet.core (required)")
    p.add_argument("--artifact", metavar="NAME", required=True,
                   help="exact artifact id, e.g. skainet-backend-native-cpu; its Kotlin "
                        "Multiplatform target variants (-jvm, -linuxarm64, -linuxx64, ...) are "
                        "the same artifact; a glob only when written, e.g. 'skainet-backend*' "
                        "(required)")
    p.add_argument("--version", metavar="VERSION", required=True,
                   help="version, e.g. 0.40.0 (required)")
    p.add_argument("--marker", metavar="TEXT",
                   help="text a fresh build contains (default: none, every copy is listed for "
                        "removal)")
    p.add_argument("--clear", action="store_true",
                   help="remove the printed paths, after a y at the prompt (or --yes)")
    p.add_argument("--yes", action="store_true",
                   help="with --clear: remove without asking (required when stdin is not a "
                        "terminal)")
    p.add_argument("--konan-root", metavar="DIR",
                   help="Kotlin/Native data dir (default $KONAN_DATA_DIR or ~/.konan)")
    p.add_argument("--m2-root", metavar="DIR",
                   help="Maven local repository (default $SKORACLE_M2_REPO or ~/.m2/repository)")
    p.add_argument("--gradle-root", metavar="DIR",
                   help="Gradle user home (default $GRADLE_USER_HOME or ~/.gradle)")
    p.add_argument("--max-unpacked", metavar="SIZE", default=MAX_UNPACKED_TEXT,
                   help="with --marker: stop when the zip members of one cached file "
                        "decompress to more than SIZE (zip bombs; default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON document to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the cached copies of one artifact, look for the marker in each, and with
    --clear remove the stale ones; 1 when stale copies remain, else 0."""
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
        _print_copies(coordinate, copies, to_remove)
    removed = _clear(to_remove, args.yes, args.json) if args.clear else []
    if args.json:
        doc["removed"] = removed
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if args.clear:
        return 0  # every stale copy is gone
    return 1 if patterns and to_remove else 0


def _copy_state(copy: CachedCopy) -> str:
    """What the marker search found in one copy, as the text listing shows it."""
    if copy.error is not None:
        return f"  STALE (unreadable: {copy.error})"
    if copy.has_marker is True:
        return f"  marker found in {copy.marker_in}"
    if copy.has_marker is False:
        return "  STALE (no marker)"
    return ""


def _print_copies(coordinate: str, copies: list[CachedCopy], to_remove: list[CachedCopy]
                  ) -> None:
    """The text listing: every copy with its state, then the paths to remove."""
    print(f"{coordinate}: {len(copies)} cached cop{'y' if len(copies) == 1 else 'ies'}")
    for c in copies:
        version = "" if c.version_in_path else "  (version not in path)"
        print(f"  [{c.kind}] {c.path}{version}{_copy_state(c)}")
    for c in to_remove:
        print(f"remove: {c.path}")


def _clear(to_remove: list[CachedCopy], yes: bool, json_mode: bool) -> list[str]:
    """Remove the listed copies (asking first unless `yes`); returns the removed paths."""
    removed: list[str] = []
    if to_remove and not yes:
        _confirm([c.path for c in to_remove], json_mode)
    for c in to_remove:
        remove_copy(c)
        removed.append(str(c.path))
        if not json_mode:
            print(f"removed: {c.path}")
    return removed


def _confirm(paths: list[Path], json_mode: bool) -> None:
    """Ask before removing (on stderr, so --json output stays one document); refuse with
    exit 2 when nobody can be asked."""
    if json_mode:  # the text mode has printed them already
        for path in paths:
            print(f"remove: {path}", file=sys.stderr)
    what = f"the {len(paths)} path{'s' if len(paths) != 1 else ''} listed above"
    if not sys.stdin.isatty():
        raise HarnessError(f"--clear: stdin is not a terminal, nothing removed; pass --yes to "
                           f"remove {what}", 2)
    print(f"remove {what}? [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise HarnessError("--clear: not confirmed, nothing removed", 2)
