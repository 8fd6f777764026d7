"""A small reader for Unix `ar` archives (static libraries), GNU and BSD flavours.

Python's standard library has no ar reader. This one walks the archive member by member and
reports every structural problem as an `ArchiveError` naming the member and byte offset:

- GNU: symbol table `/` (and `/SYM64/`), long-name table `//`, names `name/` and `/<offset>`;
- BSD: symbol table `__.SYMDEF[ SORTED]` / `__.SYMDEF_64[ SORTED]`, long names `#1/<len>`
  stored at the start of the member data;
- thin archives (`!<thin>`) keep members outside the file and are refused.

Layout (both flavours): the 8-byte magic, then per member a 60-byte header (name 16, mtime
12, uid 6, gid 6, mode 8, size 10, terminator 2 = "`\\n") followed by `size` bytes padded
to an even offset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from harness.gate.errors import GateError

AR_MAGIC = b"!<arch>\n"
THIN_MAGIC = b"!<thin>\n"
HEADER_SIZE = 60
_TERMINATOR = b"`\n"
_GNU_SYMTABS = ("/", "/SYM64/")
_BSD_SYMTABS = ("__.SYMDEF", "__.SYMDEF SORTED", "__.SYMDEF_64", "__.SYMDEF_64 SORTED")


class ArchiveError(GateError):
    """A malformed archive (exit code 2)."""


@dataclass(frozen=True)
class ArMember:
    """One member: its resolved name, header offset and data (a view into the archive)."""

    name: str
    offset: int
    data: memoryview
    symbol_table: bool = False  # the archive index (GNU `/`, BSD `__.SYMDEF`)
    name_table: bool = False  # the GNU long-name table `//`

    @property
    def special(self) -> bool:
        return self.symbol_table or self.name_table


def is_archive(data: bytes | memoryview) -> bool:
    return bytes(data[:8]) in (AR_MAGIC, THIN_MAGIC)


def _field_int(raw: bytes, what: str, base: int, where: str) -> int:
    text = raw.decode("ascii", "replace").strip()
    if text == "":
        return 0
    try:
        value = int(text, base)
    except ValueError:
        raise ArchiveError(f"{where}: {what} field is not a number: {text!r}") from None
    if value < 0:
        raise ArchiveError(f"{where}: negative {what}: {text!r}")
    return value


def iter_members(data: bytes | memoryview, label: str = "archive") -> Iterator[ArMember]:
    """Yield every member in file order, including the symbol and long-name tables."""
    buf = memoryview(data)
    _check_magic(buf, label)
    pos = len(AR_MAGIC)
    names = _MemberNames()
    end = len(buf)
    while pos < end:
        if pos == end - 1 and bytes(buf[pos : pos + 1]) == b"\n":
            break  # tolerate a final pad byte after an odd-sized last member
        where = f"{label}: member header at offset {pos}"
        raw_name, size = _read_header(buf, pos, where)
        data_start = pos + HEADER_SIZE
        body = buf[data_start : data_start + size]
        name, body, symtab, nametab = names.resolve(raw_name, body, size, where)
        if not name:
            raise ArchiveError(f"{where}: empty member name")
        yield ArMember(name, pos, body, symbol_table=symtab, name_table=nametab)
        pos = data_start + size + (size & 1)


def _check_magic(buf: memoryview, label: str) -> None:
    """Refuse a thin archive or anything without the `!<arch>` magic."""
    if bytes(buf[:8]) == THIN_MAGIC:
        raise ArchiveError(f"{label}: thin archive: its members live outside the file")
    if bytes(buf[:8]) != AR_MAGIC:
        raise ArchiveError(f"{label}: not an ar archive (no !<arch> magic)")


def _read_header(buf: memoryview, pos: int, where: str) -> tuple[str, int]:
    """The raw name and data size of the member header at `pos`, checked to fit the archive."""
    end = len(buf)
    if end - pos < HEADER_SIZE:
        raise ArchiveError(f"{where}: truncated ({end - pos} of {HEADER_SIZE} header bytes)")
    header = bytes(buf[pos : pos + HEADER_SIZE])
    if header[58:60] != _TERMINATOR:
        raise ArchiveError(f"{where}: bad header terminator {header[58:60]!r}")
    raw_name = header[0:16].decode("latin-1").rstrip(" ")
    size = _field_int(header[48:58], "size", 10, where)
    data_start = pos + HEADER_SIZE
    if data_start + size > end:
        raise ArchiveError(
            f"{where}: member of {size} bytes runs past the end of the archive "
            f"({end - data_start} bytes left)"
        )
    return raw_name, size


class _MemberNames:
    """Turns raw header names into member names, remembering the GNU long-name table."""

    def __init__(self) -> None:
        self.long_names: bytes | None = None

    def resolve(self, raw_name: str, body: memoryview, size: int, where: str
                ) -> tuple[str, memoryview, bool, bool]:
        """(name, data without a BSD name prefix, is symbol table, is name table)."""
        if raw_name in _GNU_SYMTABS:
            return raw_name, body, True, False
        if raw_name == "//":
            self.long_names = bytes(body)
            return raw_name, body, False, True
        if raw_name.startswith("#1/"):  # BSD: the name is the first N bytes of the data
            name, body = _bsd_name(raw_name, body, size, where)
            return name, body, name in _BSD_SYMTABS, False
        if raw_name.startswith("/") and raw_name[1:].isdigit():  # GNU long name
            return self._gnu_long_name(raw_name, where), body, False, False
        name = raw_name[:-1] if raw_name.endswith("/") else raw_name
        return name, body, name in _BSD_SYMTABS, False

    def _gnu_long_name(self, raw_name: str, where: str) -> str:
        """The name `/<offset>` points at in the `//` table."""
        long_names = self.long_names
        if long_names is None:
            raise ArchiveError(f"{where}: long name {raw_name!r} before the // name table")
        off = int(raw_name[1:])
        if off >= len(long_names):
            raise ArchiveError(
                f"{where}: long-name offset {off} outside the {len(long_names)}-byte table"
            )
        stop = long_names.find(b"/\n", off)
        if stop < 0:
            stop = long_names.find(b"\n", off)
        return long_names[off : stop if stop >= 0 else len(long_names)].decode(
            "utf-8", "replace"
        )


def _bsd_name(raw_name: str, body: memoryview, size: int, where: str) -> tuple[str, memoryview]:
    """A BSD `#1/<len>` name read from the start of the data, and the data after it."""
    n = _field_int(raw_name[3:].encode(), "BSD name length", 10, where)
    if n > size:
        raise ArchiveError(f"{where}: BSD name length {n} exceeds member size {size}")
    name = bytes(body[:n]).rstrip(b"\0").decode("utf-8", "replace")
    return name, body[n:]
