"""Scan the code of one AArch64 ELF file (pyelftools) for the words in the encoding table.

Only executable sections are read (SHF_EXECINSTR; executable PT_LOAD segments when a file
has no section headers). Data inside code is skipped using the AAELF64 mapping symbols:
`$d` (or `$d.<n>`) starts data, `$x` (or `$x.<n>`) starts code again. A stripped file has
no mapping symbols, so all of its code sections are read as instructions (the report says
so). Symbols are read only when needed: when a section has a table hit (to drop hits inside
`$d` regions and name the enclosing function) or when the caller asks about symbol names.
"""

from __future__ import annotations

import io
import struct
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np
from elftools.common.exceptions import ELFError, ELFParseError
from elftools.construct import ConstructError
from elftools.elf.constants import P_FLAGS, SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import Symbol
from elftools.elf.structs import ELFStructs

from harness.gate.encodings import ENCODINGS, Encoding, classify
from harness.gate.errors import GateError, NotAArch64

#: Exceptions pyelftools raises on malformed input (its own, construct's and the stdlib's
#: parse errors); each becomes a one-line GateError naming the file.
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ELFError, ELFParseError, ConstructError, struct.error, ValueError, IndexError, KeyError,
    TypeError, AttributeError, UnicodeDecodeError, OverflowError, EOFError, AssertionError,
    ZeroDivisionError, RecursionError, MemoryError,
)

_FUNC_TYPES = ("STT_FUNC", "STT_GNU_IFUNC")
_AARCH64 = "EM_AARCH64"
_EM_AARCH64_BYTESWAPPED = 0xB700


class _SharedStructsELFFile(ELFFile):
    """An ELFFile that shares pyelftools' struct definitions between files of one kind.

    pyelftools builds its construct structs anew for every file (about 3 ms), which
    dominates the scan of an archive of small objects; the structs are never modified after
    creation, so files with the same class, byte order, type, machine and OS ABI can share
    them. The constructor does what ELFFile.__init__ does, with the structs looked up.
    """

    _basic: dict[tuple, ELFStructs] = {}
    _advanced: dict[tuple, ELFStructs] = {}

    def __init__(self, stream: io.BytesIO) -> None:
        self.stream = stream
        self.stream.seek(0, io.SEEK_END)
        self.stream_len = self.stream.tell()
        self._identify_file()
        kind = (self.little_endian, self.elfclass)
        basic = self._basic.get(kind)
        if basic is None:
            basic = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
            basic.create_basic_structs()
            self._basic[kind] = basic
        self.structs = basic
        self.header = self._parse_elf_header()
        key = kind + (self["e_type"], self["e_machine"], self["e_ident"]["EI_OSABI"])
        advanced = self._advanced.get(key)
        if advanced is None:
            advanced = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
            advanced.create_basic_structs()
            advanced.create_advanced_structs(*key[2:])
            self._advanced[key] = advanced
        self.structs = advanced
        self.stream.seek(0)
        self.e_ident_raw = self.stream.read(16)
        self.stream_loader = None


def open_elf(data: bytes) -> ELFFile:
    """pyelftools' ELFFile over in-memory bytes (struct definitions shared between files)."""
    return _SharedStructsELFFile(io.BytesIO(data))


@dataclass(frozen=True)
class Hit:
    """A table word found in code."""

    encoding: Encoding
    section: str
    offset: int  # byte offset inside the section (or segment)
    file_offset: int
    address: int | None  # virtual address (executables and shared objects)
    word: int
    function: str | None  # "name+0xNN", None when no symbol covers it (e.g. stripped)


@dataclass
class ElfScan:
    """What one ELF file contributed: its code hits, size and symbol answers."""

    label: str
    elf_type: str
    code_bytes: int = 0
    code_sections: list[str] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    has_symtab: bool = False
    has_mapping_symbols: bool = False
    defined: set[str] = field(default_factory=set)  # wanted names defined as functions
    referenced: set[str] = field(default_factory=set)  # wanted names present but undefined
    defined_other: set[str] = field(default_factory=set)  # wanted names defined, not functions
    notes: list[str] = field(default_factory=list)


@dataclass
class _Symbols:
    """Mapping symbols and functions per section index, read once per file."""

    mapping: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # shndx -> (off,k)
    functions: dict[int, list[tuple[int, int, str]]] = field(default_factory=dict)
    any_mapping: bool = False

    def add(self, sym: Symbol, shndx: int, stype: str, is_symtab: bool) -> None:
        """Keep one defined symbol if it is a mapping symbol (`$x`/`$d`, from .symtab
        only) or a named function."""
        name = sym.name
        value = sym["st_value"]
        if name[:2] in ("$x", "$d") and (len(name) == 2 or name[2] == "."):
            if is_symtab:
                self.mapping.setdefault(shndx, []).append((value, name[1]))
                self.any_mapping = True
        elif stype in _FUNC_TYPES and name:
            self.functions.setdefault(shndx, []).append((value, sym["st_size"], name))

    def sort(self) -> None:
        """Order every section's entries by address (for bisection)."""
        for entries in self.mapping.values():
            entries.sort()
        for entries in self.functions.values():
            entries.sort()


def _fail(label: str, what: str, exc: BaseException | None = None) -> GateError:
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return GateError(f"{label}: malformed ELF: {what}{detail}".replace("\n", " "))


class _ElfReader:
    def __init__(self, label: str, data: bytes, want: frozenset[str]) -> None:
        self.label = label
        self.data = data
        self.want = want
        self._symbols: _Symbols | None = None
        try:
            self.elf = open_elf(data)
            header = self.elf.header
            self.machine = header["e_machine"]
            self.elf_type = str(header["e_type"])
            self.is_rel = self.elf_type == "ET_REL"
        except PARSE_ERRORS as exc:
            raise _fail(label, "unreadable header", exc) from None

    # -- header checks ------------------------------------------------------------------
    def check_header(self) -> None:
        label, elf = self.label, self.elf
        if self.machine != _AARCH64:
            if self.machine == _EM_AARCH64_BYTESWAPPED:
                raise _fail(label, "e_machine reads 0xb700: an AArch64 file whose EI_DATA byte "
                            "says big-endian (wrong endianness byte)")
            raise NotAArch64(label, str(self.machine))
        if elf.elfclass != 64:
            raise _fail(label, f"AArch64 with ELF class {elf.elfclass} (EI_CLASS): the gate "
                        "reads ELF64 (LP64) files only")
        if not elf.little_endian:
            raise _fail(label, "big-endian AArch64 (EI_DATA): the gate reads little-endian "
                        "Linux/aarch64 files only")
        h = elf.header
        size = len(self.data)
        try:
            shnum = elf.num_sections()
        except PARSE_ERRORS as exc:
            raise _fail(label, "unreadable section count", exc) from None
        if shnum:
            if h["e_shentsize"] != 64:
                raise _fail(label, f"e_shentsize {h['e_shentsize']} (ELF64 needs 64)")
            end = h["e_shoff"] + shnum * 64
            if end > size:
                raise _fail(label, f"section header table (offset {h['e_shoff']}, {shnum} "
                            f"entries) runs past the end of the file ({size} bytes)")
        if h["e_phnum"]:
            if h["e_phentsize"] != 56:
                raise _fail(label, f"e_phentsize {h['e_phentsize']} (ELF64 needs 56)")
            end = h["e_phoff"] + h["e_phnum"] * 56
            if end > size:
                raise _fail(label, f"program header table (offset {h['e_phoff']}) runs past "
                            f"the end of the file ({size} bytes)")
        self.shnum = shnum

    # -- symbols ------------------------------------------------------------------------
    def _symbol_tables(self) -> list:
        tables = []
        for sec in self.elf.iter_sections():
            if sec["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM"):
                tables.append(sec)
        return tables

    def symbols(self, scan: ElfScan) -> _Symbols:
        """Read the symbol tables once: mapping symbols, functions, and the wanted names."""
        if self._symbols is not None:
            return self._symbols
        syms = _Symbols()
        try:
            for table in self._symbol_tables():
                is_symtab = table["sh_type"] == "SHT_SYMTAB"
                scan.has_symtab |= is_symtab
                for sym in table.iter_symbols():
                    shndx = sym["st_shndx"]
                    stype = sym["st_info"]["type"]
                    self._note_wanted(scan, sym.name, shndx, stype)
                    if isinstance(shndx, int):
                        syms.add(sym, shndx, stype, is_symtab)
        except PARSE_ERRORS as exc:
            raise _fail(self.label, "unreadable symbol table", exc) from None
        syms.sort()
        scan.has_mapping_symbols = syms.any_mapping
        self._symbols = syms
        return syms

    def _note_wanted(self, scan: ElfScan, name: str, shndx: int | str, stype: str) -> None:
        """Record a wanted name as referenced (undefined), defined as a function, or
        defined as something else."""
        if name not in self.want:
            return
        if shndx == "SHN_UNDEF":
            scan.referenced.add(name)
        elif stype in _FUNC_TYPES:
            scan.defined.add(name)
        else:
            scan.defined_other.add(name)

    # -- code ---------------------------------------------------------------------------
    def _code_mask(self, syms: _Symbols, shndx: int, base: int, nwords: int) -> np.ndarray:
        """True for words inside `$x` (or unmarked) regions of one section."""
        code = np.ones(nwords, dtype=bool)
        marks = syms.mapping.get(shndx)
        if not marks:
            return code
        size = nwords * 4
        for i, (value, kind) in enumerate(marks):
            if kind != "d":
                continue
            start = value - base
            stop = marks[i + 1][0] - base if i + 1 < len(marks) else size
            lo, hi = max(start, 0) // 4, min((max(stop, 0) + 3) // 4, nwords)
            if lo < hi:
                code[lo:hi] = False
        return code

    def _function_at(self, syms: _Symbols, shndx: int, value: int) -> str | None:
        """"name+0xoff" of the function covering `value`; a size-0 symbol (hand-written
        assembly without .size) covers up to the next symbol."""
        funcs = syms.functions.get(shndx)
        if not funcs:
            return None
        i = bisect_right(funcs, (value, 1 << 64, "")) - 1
        sizeless = None
        for start, size, name in reversed(funcs[max(i - 63, 0) : i + 1]):
            if size and start <= value < start + size:
                return name if value == start else f"{name}+{value - start:#x}"
            if not size and sizeless is None:
                sizeless = (start, name)
        if sizeless is not None:
            start, name = sizeless
            return name if value == start else f"{name}+{value - start:#x}"
        return None

    def scan(self) -> ElfScan:
        self.check_header()
        scan = ElfScan(self.label, self.elf_type)
        size = len(self.data)
        try:
            sections = list(self.elf.iter_sections()) if self.shnum else []
        except PARSE_ERRORS as exc:
            raise _fail(self.label, "unreadable section headers", exc) from None
        regions: list[tuple[str, int, int, int, int | None]] = []  # name, shndx, off, size, addr
        for index, sec in enumerate(sections):
            try:
                sh_type, flags = sec["sh_type"], sec["sh_flags"]
                off, sh_size, addr = sec["sh_offset"], sec["sh_size"], sec["sh_addr"]
                name = sec.name or f"[section {index}]"
            except PARSE_ERRORS as exc:
                raise _fail(self.label, f"unreadable section {index}", exc) from None
            if sh_type == "SHT_NOBITS" or sh_size == 0:
                continue
            if off + sh_size > size:
                raise _fail(self.label, f"section {name} (offset {off}, {sh_size} bytes) "
                            f"extends past the end of the file ({size} bytes)")
            if flags & SH_FLAGS.SHF_EXECINSTR:
                regions.append((name, index, off, sh_size, None if self.is_rel else addr))
        if not sections:
            regions = self._exec_segments(scan)
        if self.want:
            self.symbols(scan)
        for name, shndx, off, nbytes, addr in regions:
            self._scan_region(scan, name, shndx, off, nbytes, addr)
        if scan.hits and not scan.has_mapping_symbols:
            scan.notes.append(
                f"{self.label}: no mapping symbols ($x/$d): every word of code sections was "
                "read as an instruction (stripped file?)"
            )
        return scan

    def _exec_segments(self, scan: ElfScan) -> list:
        regions = []
        size = len(self.data)
        try:
            for i, seg in enumerate(self.elf.iter_segments()):
                if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & P_FLAGS.PF_X:
                    off, n = seg["p_offset"], seg["p_filesz"]
                    if off + n > size:
                        raise _fail(self.label, f"segment {i} extends past the end of the file")
                    regions.append((f"[PT_LOAD {i}]", -1, off, n, seg["p_vaddr"]))
        except PARSE_ERRORS as exc:
            raise _fail(self.label, "unreadable program headers", exc) from None
        if regions:
            scan.notes.append(f"{self.label}: no section headers; scanned executable segments, "
                              "which may also hold headers and read-only data")
        return regions

    def _scan_region(self, scan: ElfScan, name: str, shndx: int, off: int, nbytes: int,
                     addr: int | None) -> None:
        scan.code_sections.append(name)
        scan.code_bytes += nbytes
        nwords = nbytes // 4
        if nbytes % 4:
            scan.notes.append(f"{self.label}: {name} is {nbytes} bytes, not a multiple of 4; "
                              f"the last {nbytes % 4} bytes are not instructions")
        if nwords == 0:
            return
        words = np.frombuffer(self.data, dtype="<u4", count=nwords, offset=off)
        if words.dtype != np.uint32:
            words = words.astype(np.uint32)
        idx, rows = classify(words.view(np.uint32))
        if idx.size == 0:
            return
        syms = self.symbols(scan)
        base = 0 if (self.is_rel or addr is None) else addr
        if shndx >= 0:
            code = self._code_mask(syms, shndx, base, nwords)
            keep = code[idx]
            idx, rows = idx[keep], rows[keep]
        for i, r in zip(idx.tolist(), rows.tolist(), strict=True):
            sec_off = i * 4
            value = sec_off if (self.is_rel or addr is None) else addr + sec_off
            scan.hits.append(Hit(
                encoding=ENCODINGS[r], section=name, offset=sec_off, file_offset=off + sec_off,
                address=None if (self.is_rel or addr is None) else addr + sec_off,
                word=int(words[i]),
                function=self._function_at(syms, shndx, value) if shndx >= 0 else None,
            ))


def scan_elf(label: str, data: bytes, want: frozenset[str] = frozenset()) -> ElfScan:
    """Scan one ELF file's code. Raises NotAArch64 for other machines, GateError if malformed."""
    reader = _ElfReader(label, data, want)
    try:
        return reader.scan()
    except GateError:
        raise
    except PARSE_ERRORS as exc:
        raise _fail(label, "unreadable structure", exc) from None

