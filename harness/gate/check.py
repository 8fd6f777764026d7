"""Walk one artifact (ELF, ar archive, zip/klib/jar, directory) and judge it against a profile.

Containers nest: a klib (zip) holds `default/targets/linux_arm64/.../libskainet_kernels.a`,
which holds objects. Every finding carries the container path, written
`x.klib!/default/targets/linux_arm64/native/libskainet_kernels.a!q8_0_matmul.o`
(`!/` enters a zip member, `!` an archive member).

The marker is searched in the bytes of every ELF file, archive and non-container member, and
in zip members only after decompression (never in compressed bytes), as UTF-8 and as
UTF-16LE (Kotlin/Native stores string literals as UTF-16).
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.gate.arfile import THIN_MAGIC, is_archive, iter_members
from harness.gate.elfscan import ElfScan, scan_elf
from harness.gate.errors import GateError, NotAArch64
from harness.gate.profiles import STATIC_GLIBC_DISPATCHED, CpuProfile
from harness.gate.ziputil import DEFAULT_MAX_UNPACKED, UnpackBudget, zip_members

ELF_MAGIC = b"\x7fELF"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
MAX_DEPTH = 6

#: Magic numbers named in messages about archive members that are not ELF objects.
_OTHER_MAGICS = (
    (b"\xcf\xfa\xed\xfe", "Mach-O 64-bit object"),
    (b"\xce\xfa\xed\xfe", "Mach-O 32-bit object"),
    (b"BC\xc0\xde", "LLVM bitcode"),
    (b"\xde\xc0\x17\x0b", "LLVM bitcode wrapper"),
    (b"\x64\x86", "COFF x86-64 object"),
    (b"\x64\xaa", "COFF arm64 object"),
)

#: Path tokens that say which architecture a container member is for (klib target names,
#: JNI/JNA resource folders, Android ABIs).
_ARCH_TOKENS = (
    ("linux_arm64", "aarch64"), ("linux-arm64", "aarch64"), ("linuxarm64", "aarch64"),
    ("arm64-v8a", "aarch64"), ("aarch64", "aarch64"), ("arm64", "aarch64"),
    ("linux_x64", "other"), ("linux-x64", "other"), ("linuxx64", "other"),
    ("x86_64", "other"), ("x86-64", "other"), ("amd64", "other"), ("x64", "other"),
    ("mingw", "other"), ("macos", "other"), ("darwin", "other"), ("osx", "other"),
    ("windows", "other"), ("win32", "other"), ("x86", "other"), ("i386", "other"),
    ("armeabi-v7a", "other"), ("arm32", "other"), ("riscv64", "other"),
    ("ppc64le", "other"), ("s390x", "other"), ("loongarch64", "other"),
)
_ARCH_RES = tuple(
    (re.compile(rf"(?:^|[^a-z0-9]){re.escape(tok)}(?:[^a-z0-9]|$)"), arch)
    for tok, arch in _ARCH_TOKENS
)


def arch_from_path(label: str) -> str | None:
    """"aarch64", "other" or None: the architecture the innermost named folder/file implies."""
    for segment in reversed(re.split(r"!/|!|/", label.lower())):
        for rx, arch in _ARCH_RES:
            if rx.search(segment):
                return arch
    return None


def sniff(data: bytes | memoryview) -> str:
    """"elf", "ar", "thin", "zip" or "other" from the first bytes."""
    head = bytes(data[:8])
    if head.startswith(ELF_MAGIC):
        return "elf"
    if head == THIN_MAGIC:
        return "thin"
    if is_archive(head):
        return "ar"
    if head[:4] in ZIP_MAGICS:
        return "zip"
    return "other"


def _describe(data: bytes | memoryview) -> str:
    head = bytes(data[:4])
    for magic, what in _OTHER_MAGICS:
        if head.startswith(magic):
            return what
    return f"unknown format, first bytes {head.hex() or 'none'}"


def find_marker(label: str, data: bytes, patterns: tuple[bytes, ...],
                depth: int = 0, budget: UnpackBudget | None = None) -> str | None:
    """Container path of the first blob holding one of `patterns`: zip members are searched
    after decompression (recursively, within `budget`), every other blob as stored."""
    if depth > MAX_DEPTH:
        raise GateError(f"{label}: containers nested deeper than {MAX_DEPTH} levels")
    if sniff(data) == "zip":
        budget = budget if budget is not None else UnpackBudget()
        for mlabel, member in zip_members(label, data, budget):
            found = find_marker(mlabel, member, patterns, depth + 1, budget)
            if found is not None:
                return found
        return None
    return label if any(data.find(p) >= 0 for p in patterns) else None


@dataclass
class Finding:
    """One reason the artifact fails the gate."""

    kind: str  # forbidden-instruction | stale | missing-symbol | empty-archive |
    #            no-elf-members | wrong-machine | no-aarch64-code
    path: str  # container path of the ELF member / archive / artifact
    message: str
    instruction: str | None = None
    features: tuple[str, ...] = ()
    section: str | None = None
    offset: int | None = None
    file_offset: int | None = None
    address: int | None = None
    word: int | None = None
    function: str | None = None

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if v not in (None, ())}
        if "features" in d:
            d["features"] = list(d["features"])
        for key in ("word", "address"):
            if key in d:
                d[key] = f"{d[key]:#010x}" if key == "word" else f"{d[key]:#x}"
        return d


@dataclass
class ArtifactReport:
    """The verdict for one top-level path."""

    path: str
    cpu: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    elf_files: int = 0
    archives: int = 0
    zip_members: int = 0
    code_bytes: int = 0
    input_bytes: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # counted feature -> instructions
    instructions: dict[str, int] = field(default_factory=dict)  # allowed table rows seen
    marker: str | None = None
    marker_found_in: str | None = None
    symbols: dict[str, str | None] = field(default_factory=dict)  # name -> where defined
    allowed: dict[str, int] = field(default_factory=dict)  # --allow-function hits per function
    #: forbidden words in static glibc's ifunc-dispatched variants, per function (not strict)
    dispatched: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 1 if self.findings else 0

    @property
    def verdict(self) -> str:
        return {0: "PASS", 1: "FAIL", 2: "ERROR"}[self.exit_code]

    def to_json(self) -> dict:
        return {
            "path": self.path, "cpu": self.cpu, "verdict": self.verdict,
            "exit_code": self.exit_code, "error": self.error,
            "findings": [f.to_json() for f in self.findings], "notes": self.notes,
            "elf_files": self.elf_files, "archives": self.archives,
            "zip_members": self.zip_members, "code_bytes": self.code_bytes,
            "input_bytes": self.input_bytes, "counts": self.counts,
            "instructions": self.instructions, "marker": self.marker,
            "marker_found_in": self.marker_found_in, "symbols": self.symbols,
            "allowed": self.allowed, "dispatched": self.dispatched,
            "seconds": round(self.seconds, 4),
        }


def marker_patterns(marker: str) -> tuple[bytes, ...]:
    """The byte strings a marker may appear as: UTF-8 and UTF-16LE."""
    if not marker:
        raise GateError("--expect-marker needs a non-empty text")
    return (marker.encode("utf-8"), marker.encode("utf-16-le"))


class _Walker:
    def __init__(self, report: ArtifactReport, profile: CpuProfile, marker: str | None,
                 symbols: tuple[str, ...], allow: tuple[str, ...] = (),
                 dispatched: tuple[str, ...] = (),
                 max_unpacked: int = DEFAULT_MAX_UNPACKED) -> None:
        self.dispatched = dispatched
        self.report = report
        self.budget = UnpackBudget(max_unpacked)
        self.profile = profile
        self.allow = allow
        self.skipped_other = 0
        self.patterns = marker_patterns(marker) if marker is not None else ()
        self.want = frozenset(symbols)
        self.referenced: dict[str, str] = {}
        self.defined_other: dict[str, str] = {}

    # -- marker -------------------------------------------------------------------------
    def _search_marker(self, label: str, data: bytes | memoryview) -> None:
        if not self.patterns or self.report.marker_found_in is not None:
            return
        hay = data if isinstance(data, bytes) else bytes(data)
        for pattern in self.patterns:
            if hay.find(pattern) >= 0:
                self.report.marker_found_in = label
                return

    # -- dispatch -----------------------------------------------------------------------
    def visit(self, label: str, data: bytes | memoryview, depth: int, nested: bool,
              in_archive: bool = False) -> str:
        """Handle one blob; returns its kind. Non-container blobs are searched for the marker."""
        if depth > MAX_DEPTH:
            raise GateError(f"{label}: containers nested deeper than {MAX_DEPTH} levels")
        kind = sniff(data)
        if kind == "zip":
            self._zip(label, data, depth)
        elif kind == "thin":
            raise GateError(f"{label}: thin archive: its members live outside the file")
        elif kind == "ar":
            self._search_marker(label, data)
            self._archive(label, data, depth)
        elif kind == "elf":
            self._search_marker(label, data)
            self._elf(label, data, nested)
        else:
            if not nested:
                if len(data) == 0:
                    raise GateError(f"{label}: empty file")
                raise GateError(f"{label}: not an ELF file, ar archive or zip container "
                                f"({_describe(data)})")
            self._search_marker(label, data)
        return kind

    def _zip(self, label: str, data: bytes | memoryview, depth: int) -> None:
        for mlabel, member in zip_members(label, data, self.budget):
            self.report.zip_members += 1
            self.visit(mlabel, member, depth + 1, nested=True)

    def _archive(self, label: str, data: bytes | memoryview, depth: int) -> None:
        self.report.archives += 1
        members = list(iter_members(data, label))
        objects = [m for m in members if not m.special]
        if not objects:
            what = ("only a symbol table, no object members" if any(m.symbol_table for m in members)
                    else "no members at all")
            self.report.findings.append(Finding(
                "empty-archive", label,
                f"{label}: empty archive: {what} (linking against it defines nothing)"))
            return
        elf_count = 0
        wrong: list[tuple[str, str]] = []
        others: list[tuple[str, str]] = []
        for m in objects:
            mlabel = f"{label}!{m.name}"
            kind = sniff(m.data)
            if kind == "elf":
                elf_count += 1
                machine = self._elf(mlabel, m.data, nested=True, in_archive=True)
                if machine is not None:
                    wrong.append((m.name, machine))
            elif kind in ("ar", "zip", "thin"):
                self.visit(mlabel, m.data, depth + 1, nested=True)
            else:
                others.append((m.name, _describe(m.data)))
        if elf_count == 0:
            names = ", ".join(f"{n} ({w})" for n, w in others[:3])
            self.report.findings.append(Finding(
                "no-elf-members", label,
                f"{label}: none of its {len(objects)} members is an ELF object: {names}"))
        elif others:
            self.report.notes.append(
                f"{label}: {len(others)} non-ELF member(s) ignored: "
                + ", ".join(f"{n} ({w})" for n, w in others[:3]))
        if wrong:
            machines = sorted({w for _, w in wrong})
            if arch_from_path(label) == "other":
                self.skipped_other += len(wrong)
                self.report.notes.append(
                    f"{label}: skipped {len(wrong)} {'/'.join(machines)} member(s) "
                    "(the path names another architecture)")
            else:
                names = ", ".join(n for n, _ in wrong[:3])
                self.report.findings.append(Finding(
                    "wrong-machine", label,
                    f"{label}: {len(wrong)} of {elf_count} ELF members are "
                    f"{'/'.join(machines)}, not AArch64 (e.g. {names})"))

    def _elf(self, label: str, data: bytes | memoryview, nested: bool,
             in_archive: bool = False) -> str | None:
        """Scan one ELF file. Returns the machine name if it is not AArch64 (and nested)."""
        blob = data if isinstance(data, bytes) else bytes(data)
        try:
            scan = scan_elf(label, blob, self.want)
        except NotAArch64 as exc:
            if not nested:
                raise
            if in_archive:
                return exc.machine
            if arch_from_path(label) == "other":
                self.skipped_other += 1
                self.report.notes.append(f"{label}: skipped {exc.machine} ELF (the path names "
                                         "another architecture)")
            else:
                self.report.findings.append(Finding(
                    "wrong-machine", label,
                    f"{label}: ELF for {exc.machine}, not AArch64, where AArch64 is expected"))
            return None
        self._record(scan)
        return None

    def _record(self, scan: ElfScan) -> None:
        rep = self.report
        rep.elf_files += 1
        rep.code_bytes += scan.code_bytes
        rep.notes.extend(scan.notes)
        for name in scan.defined:
            rep.symbols.setdefault(name, scan.label)
            if rep.symbols[name] is None:
                rep.symbols[name] = scan.label
        for name in scan.referenced:
            self.referenced.setdefault(name, scan.label)
        for name in scan.defined_other:
            self.defined_other.setdefault(name, scan.label)
        for hit in scan.hits:
            enc = hit.encoding
            if self.profile.forbids(enc) and self._allowed(hit.function, self.allow):
                base = hit.function.split("+", 1)[0]
                rep.allowed[base] = rep.allowed.get(base, 0) + 1
            elif self.profile.forbids(enc) and self._allowed(hit.function, self.dispatched):
                base = hit.function.split("+", 1)[0]
                rep.dispatched[base] = rep.dispatched.get(base, 0) + 1
            elif self.profile.forbids(enc):
                missing = [f for f in enc.features if f in self.profile.absent]
                where = f"{hit.section}+{hit.offset:#x}"
                fn = hit.function or "(no function symbol)"
                rep.findings.append(Finding(
                    "forbidden-instruction", scan.label,
                    f"{scan.label}: {enc.name} needs {'+'.join(missing)} (absent on "
                    f"{self.profile.name}) at {where} (file offset {hit.file_offset:#x}) in "
                    f"{fn}, word {hit.word:#010x}",
                    instruction=enc.name, features=enc.features, section=hit.section,
                    offset=hit.offset, file_offset=hit.file_offset, address=hit.address,
                    word=hit.word, function=hit.function))
            else:
                rep.instructions[enc.name] = rep.instructions.get(enc.name, 0) + 1
                for feat in enc.features:
                    if feat in self.profile.counted:
                        rep.counts[feat] = rep.counts.get(feat, 0) + 1

    @staticmethod
    def _allowed(function: str | None, globs: tuple[str, ...]) -> bool:
        if not globs or function is None:
            return False
        base = function.split("+", 1)[0]
        return any(fnmatch.fnmatchcase(base, glob) for glob in globs)

    def finish(self) -> None:
        rep = self.report
        if rep.elf_files == 0 and self.skipped_other:
            rep.findings.append(Finding(
                "no-aarch64-code", rep.path,
                f"{rep.path}: no AArch64 ELF code inside; {self.skipped_other} ELF file(s) for "
                "other architectures were skipped"))
        for base, n in sorted(rep.allowed.items()):
            rep.notes.append(f"{rep.path}: {n} forbidden instruction(s) in {base} allowed by "
                             "--allow-function (runtime-dispatched code)")
        if rep.dispatched:
            n = sum(rep.dispatched.values())
            rep.notes.append(f"{rep.path}: {n} {'word' if n == 1 else 'words'} in "
                             f"ifunc-dispatched glibc variants, unreachable on "
                             f"{self.profile.name} ({', '.join(sorted(rep.dispatched))}; "
                             "--strict fails them)")
        if rep.elf_files == 0 and not rep.findings and rep.marker_found_in is None:
            # an input with nothing to check is an input error, never a PASS
            what = (f"{rep.zip_members} zip member(s), {rep.archives} archive(s), no ELF "
                    "object among them" if rep.zip_members or rep.archives else "no files")
            raise GateError(f"{rep.path}: nothing to check: no AArch64 ELF code inside "
                            f"({what})")
        if self.patterns and rep.marker_found_in is None:
            rep.findings.append(Finding(
                "stale", rep.path,
                f"STALE {rep.path}: marker {rep.marker!r} not found in any ELF file, archive "
                "or decompressed zip member (UTF-8 or UTF-16LE)"))
        for name in sorted(self.want):
            if rep.symbols.get(name):
                continue
            rep.symbols[name] = None
            extra = ""
            if name in self.defined_other:
                extra = f" (defined, but not as a function, in {self.defined_other[name]})"
            elif name in self.referenced:
                extra = f" (only referenced, undefined, in {self.referenced[name]})"
            rep.findings.append(Finding(
                "missing-symbol", rep.path,
                f"{rep.path}: no AArch64 ELF inside defines function {name}{extra}"))


def _judge(label: str, profile: CpuProfile, marker: str | None, symbols: tuple[str, ...],
           allow: tuple[str, ...], feed: Callable[[_Walker, ArtifactReport], None],
           strict: bool = False,
           max_unpacked: int = DEFAULT_MAX_UNPACKED) -> ArtifactReport:
    """The scaffold both entry points share: a fresh report and walker, `feed` walks the
    input, malformed input ends in `report.error` (exit code 2), the time is recorded."""
    report = ArtifactReport(label, profile.name, marker=marker)
    for name in symbols:
        report.symbols[name] = None
    walker = _Walker(report, profile, marker, tuple(symbols), tuple(allow),
                     () if strict else STATIC_GLIBC_DISPATCHED, max_unpacked)
    t0 = time.perf_counter()
    try:
        feed(walker, report)
        walker.finish()
    except GateError as exc:
        report.error = str(exc)
    report.seconds = time.perf_counter() - t0
    return report


def check_artifact(path: str | os.PathLike, profile: CpuProfile, marker: str | None = None,
                   symbols: tuple[str, ...] = (), allow: tuple[str, ...] = (),
                   strict: bool = False,
                   max_unpacked: int = DEFAULT_MAX_UNPACKED) -> ArtifactReport:
    """Judge one top-level path. Malformed input, or input with no AArch64 ELF code to check,
    ends in `report.error` (exit code 2).

    `allow` holds function-name globs whose forbidden instructions are accepted as
    runtime-dispatched; they become notes. Static glibc's ifunc-dispatched variants
    (profiles.STATIC_GLIBC_DISPATCHED, e.g. `__memcpy_a64fx`) become one note unless `strict`.
    `max_unpacked` caps the bytes decompressed from zip members of this artifact.
    """
    label = os.fspath(path)

    def feed(walker: _Walker, report: ArtifactReport) -> None:
        p = Path(label)
        if p.is_dir():
            _walk_dir(walker, p, label)
            return
        if p.exists() and not p.is_file():  # /dev/zero, a FIFO: reading would never end
            raise GateError(f"{label}: not a regular file or directory")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise GateError(f"{label}: cannot read: {exc.strerror or exc}") from None
        report.input_bytes = len(data)
        walker.visit(label, data, 0, nested=False)

    return _judge(label, profile, marker, symbols, allow, feed, strict, max_unpacked)


def check_bytes(label: str, data: bytes, profile: CpuProfile, marker: str | None = None,
                symbols: tuple[str, ...] = (), allow: tuple[str, ...] = (),
                strict: bool = False,
                max_unpacked: int = DEFAULT_MAX_UNPACKED) -> ArtifactReport:
    """Like check_artifact for bytes already in memory (`label` names them in messages)."""

    def feed(walker: _Walker, report: ArtifactReport) -> None:
        report.input_bytes = len(data)
        walker.visit(label, data, 0, nested=False)

    return _judge(label, profile, marker, symbols, allow, feed, strict, max_unpacked)


def _walk_dir(walker: _Walker, root: Path, label: str) -> None:
    """An unpacked klib or a cache directory: every file is a member."""
    files = sorted(f for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    for f in files:
        mlabel = f"{label.rstrip('/')}/{f.relative_to(root).as_posix()}"
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise GateError(f"{mlabel}: cannot read: {exc.strerror or exc}") from None
        walker.report.input_bytes += len(data)
        walker.visit(mlabel, data, 1, nested=True)
