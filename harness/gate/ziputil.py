"""Zip containers (klib, jar) read with bounded memory: members stream in chunks, the total
decompressed per artifact is capped, and entries that share bytes are refused.

Two known zip bombs and what stops them:

- a small zip holding one huge member (a 1 MB zip inflating to 1 GiB): decompression runs
  in `CHUNK` steps against an `UnpackBudget` (default `DEFAULT_MAX_UNPACKED` per artifact,
  `--max-unpacked SIZE` raises it) and stops as soon as the budget is spent, before the
  member is joined in memory; a member whose declared size alone exceeds what is left is
  refused before any byte is inflated;
- overlapping entries (many central-directory entries pointing into the same compressed
  bytes, so 256 kB decompress to 4 GiB): every entry's extent (local header, name, extra
  field and compressed data) is computed from its local header and checked against the
  others and the end of the file before anything is read.

The ELF scanner and the ar reader need a member in memory; a member's bytes therefore exist
once as chunks and once joined, so the peak is about twice the largest member, and never
more than twice the budget.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from harness.gate.errors import GateError, one_line

DEFAULT_MAX_UNPACKED = 512 << 20
MAX_UNPACKED_TEXT = "512MiB"  # the default as the CLIs show it
CHUNK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zipfile's structFileHeader (30 bytes)
_LOCAL_MAGIC = b"PK\x03\x04"
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError,
                RuntimeError, OSError, ValueError, EOFError, OverflowError, KeyError, IndexError,
                UnicodeDecodeError, struct.error)


@dataclass
class UnpackBudget:
    """Decompressed bytes one artifact may produce, shared by every zip nested inside it."""

    limit: int = DEFAULT_MAX_UNPACKED
    used: int = 0

    @property
    def left(self) -> int:
        return self.limit - self.used

    def exceeded(self, label: str) -> GateError:
        return GateError(f"{label}: decompressed zip members exceed the {self.limit}-byte "
                         f"limit for one artifact (zip bomb? --max-unpacked SIZE raises it)")


def _extents(label: str, data: bytes | memoryview, infos: list[zipfile.ZipInfo]
             ) -> list[tuple[int, int, str]]:
    """(start, end, name) of every entry's local header + compressed data."""
    out = []
    size = len(data)
    for info in infos:
        start = info.header_offset
        head = bytes(data[start:start + _LOCAL_HEADER.size])
        if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_MAGIC:
            raise GateError(f"{label}: corrupt zip container: entry {info.filename!r} has no "
                            f"local header at offset {start}")
        fields = _LOCAL_HEADER.unpack(head)
        name_len, extra_len = fields[-2], fields[-1]
        end = start + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > size:
            raise GateError(f"{label}: corrupt zip container: entry {info.filename!r} runs to "
                            f"byte {end}, past the end of the {size}-byte file")
        out.append((start, end, info.filename))
    return out


def check_overlaps(label: str, data: bytes | memoryview, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip whose entries share bytes (the overlapping-entry zip bomb)."""
    spans = sorted(_extents(label, data, infos))
    for (s1, e1, n1), (s2, e2, n2) in pairwise(spans):
        if s2 < e1:
            raise GateError(
                f"{label}: corrupt zip container: entries {n1!r} (bytes {s1}-{e1}) and "
                f"{n2!r} (bytes {s2}-{e2}) overlap; a zip whose members share compressed "
                "data is refused (zip bomb)")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, mlabel: str,
                 budget: UnpackBudget) -> bytes:
    if info.file_size > budget.left:
        raise budget.exceeded(mlabel)
    chunks = []
    try:
        with zf.open(info) as stream:
            while True:
                chunk = stream.read(min(CHUNK, budget.left + 1))
                if not chunk:
                    break
                budget.used += len(chunk)
                if budget.used > budget.limit:
                    raise budget.exceeded(mlabel)
                chunks.append(chunk)
    except GateError:
        raise
    except _READ_ERRORS as exc:
        raise GateError(f"{mlabel}: unreadable zip member: {exc}") from None
    return b"".join(chunks)


def _open_checked(label: str, data: bytes | memoryview
                  ) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The zip and its entries, every entry's extent checked against the others
    (GateError naming the container, else)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except _READ_ERRORS as exc:
        raise GateError(f"{label}: corrupt zip container: {exc}") from None
    try:
        check_overlaps(label, data, infos)
    except GateError:
        zf.close()
        raise
    return zf, infos


def zip_members(label: str, data: bytes | memoryview, budget: UnpackBudget | None = None
                ) -> Iterator[tuple[str, bytes]]:
    """Yield (container path, decompressed bytes) of every file in a zip; the zip module
    checks each member's CRC-32. Any defect, an overlap or a spent budget becomes a
    GateError naming the member."""
    budget = budget if budget is not None else UnpackBudget()
    zf, infos = _open_checked(label, data)
    with zf:
        for index, info in enumerate(infos):
            if not info.filename:
                raise GateError(f"{label}: corrupt zip container: entry {index} has no name")
            if info.filename.endswith("/"):
                continue
            mlabel = f"{label}!/{one_line(info.filename)}"
            yield mlabel, _read_member(zf, info, mlabel, budget)


def zip_member(label: str, data: bytes | memoryview, name: str,
               budget: UnpackBudget | None = None) -> bytes | None:
    """The decompressed bytes of the member `name` (None when the zip has none), read under
    the same checks as zip_members (overlaps, CRC-32, the budget) without inflating the
    other members."""
    budget = budget if budget is not None else UnpackBudget()
    zf, infos = _open_checked(label, data)
    with zf:
        info = next((i for i in infos if i.filename == name), None)
        return None if info is None else _read_member(zf, info, f"{label}!/{name}", budget)


__all__ = ["CHUNK", "DEFAULT_MAX_UNPACKED", "MAX_UNPACKED_TEXT", "UnpackBudget", "check_overlaps",
           "zip_member", "zip_members"]
