"""GGUF files the project reads and writes: a bounded pre-reader, one way to open, one writer.

gguf-py's `GGUFReader` trusts every count in the file: a 52-byte file declaring an array of
2^40 UINT8 makes it loop past the end of the file while memory grows without bound, and it
builds a few numpy objects per array item, so even an honest count costs far more memory
than the bytes it describes. `check_gguf` walks the header, every key/value (nested arrays
and strings included) and the tensor table with plain `struct` reads, checking each count
and length against the bytes that remain, and bounds the number of objects the reader will
build (`MAX_READER_ITEMS`); `open_gguf` runs it and only then hands the file to gguf-py.
Every place that opens a user's GGUF goes through `open_gguf`.

Every GGUF this project writes goes through `SkainetGGUFWriter`, which refuses metadata of
a type SKaiNET's `GGUFReader` cannot read, naming the key (`SKAINET_VALUE_TYPES`).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ggufio.errors import GGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

#: Bytes one scalar of each fixed-size type occupies.
SCALAR_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2,
    GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4,
    GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1, GGUFValueType.UINT64: 8,
    GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}
_STRING_MIN = 8  # the u64 length of an empty string
_TENSOR_INFO_MIN = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

#: gguf-py's reader builds numpy objects per array item (measured: ~0.7 kB and ~36 us per
#: UINT8 item, ~1.3 kB and ~62 us per string item) and several per tensor. `open_gguf` lets
#: a file ask for at most this many, plus one per 64 bytes of file (a real model's
#: vocabulary of 262 144 tokens needs ~0.8 M in a ~300 MB file), so the reader's memory
#: stays below ~90 MB plus ~20x the file size. `check_gguf` itself keeps one small record
#: per key and per tensor, never per array item.
MAX_READER_ITEMS = 1 << 16
_BYTES_PER_READER_ITEM = 64
_ITEMS_PER_TENSOR = 8

#: The metadata value types SKaiNET's GGUFReader reads (it throws "readDataByType:
#: Unsupported type" on INT8, UINT16, INT16, INT64 and FLOAT64), and the array item types
#: checked against it (REFERENCE §3a).
SKAINET_VALUE_TYPES = frozenset({
    GGUFValueType.UINT8, GGUFValueType.INT32, GGUFValueType.UINT32, GGUFValueType.UINT64,
    GGUFValueType.FLOAT32, GGUFValueType.BOOL, GGUFValueType.STRING, GGUFValueType.ARRAY,
})
SKAINET_ARRAY_ITEM_TYPES = frozenset({
    GGUFValueType.STRING, GGUFValueType.FLOAT32, GGUFValueType.INT32,
})


def _size_text(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class KVInfo:
    """One metadata entry: its key, value type and, for an array, item type and length."""

    index: int
    key: str
    type: GGUFValueType
    item_type: GGUFValueType | None = None
    count: int = 1


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-table entry, with its data extent in the file."""

    name: str
    ggml_type: int
    dims: tuple[int, ...]  # ne order (fastest first), as stored
    offset: int  # relative to the data section
    n_bytes: int


@dataclass
class GGUFLayout:
    """What `check_gguf` found: every KV and tensor, checked against the file size."""

    path: str
    size: int
    version: int
    byte_order: str  # "<" or ">"
    kvs: list[KVInfo] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0
    reader_items: int = 0


class _Cursor:
    """Bounds-checked reads over the mapped file; every failure names the file and field."""

    def __init__(self, name: str, buf: bytes | mmap.mmap, order: str) -> None:
        self.name, self.buf, self.order, self.pos = name, buf, order, 0

    def fail(self, what: str, message: str) -> GGUFError:
        return GGUFError(f"{self.name}: {what}: {message}", 2)

    def need(self, what: str, n: int, described: str) -> None:
        remain = len(self.buf) - self.pos
        if n > remain:
            raise self.fail(what, f"{described} needs {_size_text(n)} but {remain} bytes "
                                  f"remain (at offset {self.pos})")

    def unpack(self, what: str, fmt: str) -> int:
        size = struct.calcsize(fmt)
        self.need(what, size, f"{size}-byte field")
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str, keep: bool) -> str | None:
        n = self.unpack(what + " length", "Q")
        self.need(what, n, f"string of {n} bytes")
        raw = bytes(self.buf[self.pos:self.pos + n]) if keep else None
        self.pos += n
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(what, "not valid UTF-8") from None


def _value_type(cur: _Cursor, what: str, raw: int) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cur.fail(what, f"unknown value type {raw}") from None


def _skip_value(cur: _Cursor, what: str, vtype: GGUFValueType, depth: int = 0) -> tuple[
        GGUFValueType | None, int, int]:
    """Step over one value; returns (item type, count, reader items it will cost)."""
    if vtype == GGUFValueType.STRING:
        cur.string(what, keep=False)
        return None, 1, 1
    if vtype in SCALAR_SIZES:
        n = SCALAR_SIZES[vtype]
        cur.need(what, n, f"{vtype.name} value")
        cur.pos += n
        return None, 1, 1
    # ARRAY
    itype = _value_type(cur, what + " item type", cur.unpack(what + " item type", "I"))
    count = cur.unpack(what + " length", "Q")
    item_min = SCALAR_SIZES.get(itype, _STRING_MIN if itype == GGUFValueType.STRING else 12)
    cur.need(what, count * item_min, f"array of {count} {itype.name}")
    if itype in SCALAR_SIZES:
        cur.pos += count * item_min
        return itype, count, count
    if itype == GGUFValueType.ARRAY and depth >= 2:
        raise cur.fail(what, "arrays nested more than two deep")
    items = 0
    for i in range(count):
        items += _skip_value(cur, f"{what} item {i}", itype, depth + 1)[2]
    return itype, count, items + 2


def _unique_name(cur: _Cursor, entry: str, field_name: str, seen: set[str]) -> tuple[str, str]:
    """Read a key or tensor name, refusing a repeat; returns it and how messages name it."""
    name = cur.string(f"{entry} {field_name}", keep=True)
    what = f"{entry} {name!r}"
    if name in seen:
        raise cur.fail(what, f"duplicate {field_name}")
    seen.add(name)
    return name, what


def check_gguf(path: str | os.PathLike[str], max_items: int | None = None) -> GGUFLayout:
    """Walk a GGUF file's header, metadata and tensor table without trusting any count.

    Raises GGUFError (exit 2) naming the file and the field when a count or length does
    not fit in the bytes that remain, a type or tensor is malformed, a tensor's data runs
    past the end, or (with `max_items`) gguf-py's reader would build more objects than that.
    """
    p = Path(path)
    name = os.fspath(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise GGUFError(f"{name}: not a readable GGUF file: empty", 2)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _walk(name, str(p), buf, size, max_items)
    except (OSError, ValueError) as exc:  # ValueError: mmap of a special file
        raise GGUFError(f"{p}: cannot read: {getattr(exc, 'strerror', None) or exc}",
                           2) from None


def _walk(name: str, path: str, buf: mmap.mmap, size: int, max_items: int | None
          ) -> GGUFLayout:
    """Check header, metadata, tensor table and tensor data extents, in file order."""
    cur, version, n_tensors, n_kv = _read_header(name, buf)
    layout = GGUFLayout(path, size, version, cur.order)
    budget = max_items if max_items is not None else float("inf")
    items = _read_kvs(cur, layout, n_kv, budget)
    cur.need("tensor count", n_tensors * _TENSOR_INFO_MIN, f"{n_tensors} tensor entries")
    items += n_tensors * _ITEMS_PER_TENSOR
    if items > budget:
        raise cur.fail("tensor count", f"{n_tensors} tensors exceed the reader's limit for a "
                                       f"file of {size} bytes")
    names: set[str] = set()
    for i in range(n_tensors):
        layout.tensors.append(_read_tensor_info(cur, i, names))
    layout.data_offset = -(-cur.pos // layout.alignment) * layout.alignment
    _check_tensor_data(name, layout)
    layout.reader_items = items
    return layout


def _read_header(name: str, buf: mmap.mmap) -> tuple[_Cursor, int, int, int]:
    """Magic, version (which fixes the byte order) and the two counts; returns a cursor
    past them with the version, tensor count and KV count."""
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFError(f"{name}: not a readable GGUF file: magic {bytes(buf[:4])!r}, "
                          f"expected {GGUF_MAGIC!r}", 2)
    cur = _Cursor(name, buf, "<")
    cur.pos = 4
    version = cur.unpack("version", "I")
    if version & 0xFFFF == 0 and version:
        cur.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail("version", f"GGUF version {version} (readable: 2, 3)")
    n_tensors = cur.unpack("tensor count", "Q")
    n_kv = cur.unpack("KV count", "Q")
    cur.need("KV count", n_kv * (_STRING_MIN + 4 + 1), f"{n_kv} key/value pairs")
    return cur, version, n_tensors, n_kv


def _read_kvs(cur: _Cursor, layout: GGUFLayout, n_kv: int, budget: float) -> int:
    """Step over every key/value into `layout.kvs`; returns the reader items they cost."""
    items = 0
    keys: set[str] = set()
    for i in range(n_kv):
        key, what = _unique_name(cur, f"KV #{i}", "key", keys)
        vtype = _value_type(cur, what, cur.unpack(what + " type", "I"))
        start = cur.pos
        itype, count, cost = _skip_value(cur, what, vtype)
        items += cost + 3
        if items > budget:
            raise cur.fail(what, f"metadata of {items} items exceeds the reader's limit of "
                                 f"{budget} for a file of {layout.size} bytes")
        layout.kvs.append(KVInfo(i, key, vtype, itype, count))
        if key == "general.alignment":
            layout.alignment = _alignment_value(cur, what, vtype, start)
    return items


def _alignment_value(cur: _Cursor, what: str, vtype: GGUFValueType, start: int) -> int:
    """The `general.alignment` value at `start`: a UINT32 power of two."""
    if vtype != GGUFValueType.UINT32:
        raise cur.fail(what, f"must be UINT32, is {vtype.name}")
    (align,) = struct.unpack_from(cur.order + "I", cur.buf, start)
    if align == 0 or align & (align - 1):
        raise cur.fail(what, f"{align} is not a power of two")
    return align


def _read_tensor_info(cur: _Cursor, index: int, names: set[str]) -> TensorInfo:
    """One tensor-table entry: unique name, at most MAX_DIMS dims, a known type whose
    blocks divide the row."""
    tname, what = _unique_name(cur, f"tensor #{index}", "name", names)
    n_dims = cur.unpack(what + " n_dims", "I")
    if n_dims > MAX_DIMS:
        raise cur.fail(what, f"{n_dims} dimensions (at most {MAX_DIMS})")
    dims = tuple(cur.unpack(f"{what} dim {d}", "Q") for d in range(n_dims))
    raw_type = cur.unpack(what + " type", "I")
    offset = cur.unpack(what + " offset", "Q")
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
    except (ValueError, KeyError):
        raise cur.fail(what, f"unknown GGML type {raw_type}") from None
    if dims and dims[0] % block:
        raise cur.fail(what, f"row of {dims[0]} elements is not whole "
                             f"{GGMLQuantizationType(raw_type).name} blocks of {block}")
    n_elements = 1
    for d in dims:
        n_elements *= d
    return TensorInfo(tname, raw_type, dims, offset, n_elements // block * type_size)


def _check_tensor_data(name: str, layout: GGUFLayout) -> None:
    """Refuse a tensor whose data runs past the end of the file."""
    size = layout.size
    for i, t in enumerate(layout.tensors):
        end = layout.data_offset + t.offset + t.n_bytes
        if end > size:
            remain = max(size - layout.data_offset - t.offset, 0)
            raise GGUFError(
                f"{name}: tensor #{i} {t.name!r}: data of {_size_text(t.n_bytes)} at data "
                f"offset {t.offset} needs bytes up to {end} but {remain} bytes remain "
                f"(file of {size} bytes)", 2)


def open_gguf(path: str | os.PathLike[str], reader: type[gguf.GGUFReader] = gguf.GGUFReader
              ) -> tuple[gguf.GGUFReader, GGUFLayout]:
    """Check a user's GGUF file (`check_gguf`), then open it with gguf-py's reader (or a
    subclass of it, such as refmodel's lean reader).

    Any error the reader still raises becomes a GGUFError (exit 2) naming the file.
    """
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    layout = check_gguf(path, MAX_READER_ITEMS + size // _BYTES_PER_READER_ITEM)
    try:
        return reader(path, "r"), layout
    except Exception as exc:  # a third-party parser on untrusted bytes: report, never trace
        raise GGUFError(f"{os.fspath(path)}: not a readable GGUF file "
                           f"({type(exc).__name__}: {exc})", 2) from None


# --- what SKaiNET's reader can read ---------------------------------------------------------


def skainet_type_problem(vtype: GGUFValueType, item_type: GGUFValueType | None) -> str | None:
    """Why SKaiNET's GGUFReader cannot read a value of this type (None: it can)."""
    if vtype not in SKAINET_VALUE_TYPES:
        return (f"{vtype.name}: SKaiNET's GGUFReader throws on it (it reads "
                f"{_names(SKAINET_VALUE_TYPES - {GGUFValueType.ARRAY})} and arrays of "
                f"{_names(SKAINET_ARRAY_ITEM_TYPES)})")
    if vtype == GGUFValueType.ARRAY and item_type not in SKAINET_ARRAY_ITEM_TYPES:
        got = item_type.name if item_type is not None else "unknown"
        return (f"array of {got}: not an array type SKaiNET's GGUFReader is known to read "
                f"(arrays of {_names(SKAINET_ARRAY_ITEM_TYPES)})")
    return None


def _names(types: frozenset[GGUFValueType]) -> str:
    return ", ".join(t.name for t in sorted(types))


def skainet_unreadable(layout: GGUFLayout) -> list[str]:
    """One line per metadata entry SKaiNET's GGUFReader cannot read, naming the key."""
    out = []
    for kv in layout.kvs:
        problem = skainet_type_problem(kv.type, kv.item_type)
        if problem is not None:
            out.append(f"KV #{kv.index} {kv.key!r}: {problem}")
    return out


class SkainetGGUFWriter(gguf.GGUFWriter):
    """gguf-py's writer restricted to metadata types SKaiNET's GGUFReader reads.

    Every `add_*` call of GGUFWriter goes through `add_key_value`; a forbidden type (say
    `add_int64`, or an array whose items gguf-py would store as INT64) raises ValueError
    naming the key before anything is written. Python ints in arrays are INT32 unless the
    caller passes `sub_type`.
    """

    def add_key_value(self, key: str, val: Any, vtype: GGUFValueType,
                      sub_type: GGUFValueType | None = None) -> None:
        item_type = sub_type
        if vtype == GGUFValueType.ARRAY and item_type is None:
            item_type = _array_item_type(val)
        problem = skainet_type_problem(vtype, item_type)
        if problem is not None:
            raise ValueError(f"GGUF key {key!r}: {problem}")
        super().add_key_value(key, val, vtype, sub_type=sub_type)


def _array_item_type(val: Any) -> GGUFValueType | None:
    """The item type gguf-py's writer picks for an array without `sub_type`."""
    if isinstance(val, (bytes, bytearray)):
        return GGUFValueType.UINT8
    if isinstance(val, Sequence) and len(val) > 0:
        try:
            return GGUFValueType.get_type(val[0])
        except ValueError:
            return None
    return None


__all__ = ["GGUFLayout", "KVInfo", "MAX_READER_ITEMS", "SKAINET_ARRAY_ITEM_TYPES",
           "SKAINET_VALUE_TYPES", "SkainetGGUFWriter", "TensorInfo", "check_gguf", "open_gguf",
           "skainet_type_problem", "skainet_unreadable"]
