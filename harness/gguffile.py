"""The checked GGUF reader and writer (ggufio.checked) as the harness uses them: the same
functions, with ggufio's GGUFError raised as the harness's HarnessError (exit 2), so that
every harness caller, and the fuzzer counting error types, sees the one harness type."""

from __future__ import annotations

import os

import gguf

from ggufio import checked
from ggufio.checked import (
    DEFAULT_ALIGNMENT,
    MAX_READER_ITEMS,
    SKAINET_VALUE_TYPES,
    GGUFLayout,
    KVInfo,
    SkainetGGUFWriter,
    TensorInfo,
    skainet_type_problem,
    skainet_unreadable,
)
from harness.errors import as_harness_error

__all__ = ["DEFAULT_ALIGNMENT", "MAX_READER_ITEMS", "SKAINET_VALUE_TYPES", "GGUFLayout",
           "KVInfo", "SkainetGGUFWriter", "TensorInfo", "check_gguf", "open_gguf",
           "skainet_type_problem", "skainet_unreadable"]


def check_gguf(path: str | os.PathLike[str], max_items: int | None = None) -> GGUFLayout:
    """ggufio.checked.check_gguf, raising HarnessError."""
    with as_harness_error():
        return checked.check_gguf(path, max_items)


def open_gguf(path: str | os.PathLike[str], reader: type[gguf.GGUFReader] = gguf.GGUFReader
              ) -> tuple[gguf.GGUFReader, GGUFLayout]:
    """ggufio.checked.open_gguf, raising HarnessError."""
    with as_harness_error():
        return checked.open_gguf(path, reader)
