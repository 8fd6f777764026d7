"""The one table of block-format geometry.

Every other module (quantize, dequantize, relayout, kernels, fixtures, footprint) reads a
format's block size and byte size from here; adding a format means adding one row.
"""

from __future__ import annotations

from dataclasses import dataclass

QK_K = 256


class OracleError(ValueError):
    """Bad input to the oracle: unknown type, wrong size, non-finite value."""


@dataclass(frozen=True)
class QType:
    """Geometry of one GGUF tensor type: `block` elements are stored in `nbytes` bytes."""

    name: str
    ggml_type: int  # value of gguf.GGMLQuantizationType / enum ggml_type
    block: int
    nbytes: int
    packed: bool  # a quantized block format (False: plain float pass-through)
    kquant: bool = False
    summary: str = ""

    def blocks_in(self, n: int) -> int:
        """Whole blocks in a row of `n` elements; raises OracleError if `n` is not a multiple."""
        if n % self.block:
            raise OracleError(
                f"{self.name}: row length must be a multiple of {self.block} elements, got {n}"
            )
        return n // self.block

    def row_bytes(self, n: int) -> int:
        """Packed bytes of a row of `n` elements."""
        return self.blocks_in(n) * self.nbytes


QTYPES: dict[str, QType] = {
    q.name: q
    for q in (
        QType("F32", 0, 1, 4, False, summary="float32, pass-through"),
        QType("F16", 1, 1, 2, False, summary="IEEE binary16, round-to-nearest-even"),
        QType("BF16", 30, 1, 2, False, summary="bfloat16, nearest-even, NaN quieted"),
        QType("Q4_0", 2, 32, 18, True, summary="half d; u8 qs[16]; (q-8)*d"),
        QType("Q5_0", 6, 32, 22, True, summary="half d; u8 qh[4]; u8 qs[16]; (q-16)*d"),
        QType("Q5_1", 7, 32, 24, True, summary="half d; half m; u8 qh[4]; u8 qs[16]; q*d+m"),
        QType("Q8_0", 8, 32, 34, True, summary="half d; i8 qs[32]; q*d"),
        QType("Q4_K", 12, QK_K, 144, True, True, "half d, dmin; u8 scales[12]; u8 qs[128]"),
        QType("Q5_K", 13, QK_K, 176, True, True, "half d, dmin; scales[12]; qh[32]; qs[128]"),
        QType("Q6_K", 14, QK_K, 210, True, True, "u8 ql[128]; u8 qh[64]; i8 scales[16]; half d"),
    )
}

#: The block formats SKaiNET packs (the oracle's bit-exact scope).
PACKED_TYPES: tuple[str, ...] = tuple(n for n, q in QTYPES.items() if q.packed)


def qtype(name: str) -> QType:
    """Look a type up by name (case-insensitive), raising OracleError for an unknown one."""
    try:
        return QTYPES[str(name).upper()]
    except KeyError:
        raise OracleError(
            f"unknown type {name!r}: expected one of {', '.join(QTYPES)}"
        ) from None
