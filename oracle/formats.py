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
    packed: bool  # SKaiNET's kernels take it packed (False: read by dequantizing, or a float)
    kquant: bool = False  # a K-quant super-block of QK_K elements
    summary: str = ""

    @property
    def is_float(self) -> bool:
        """A plain float type (one element per "block"), not a quantized block format."""
        return self.block == 1

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
        # read by SKaiNET's GGUF layer (dequantized on load), not packed for its kernels
        QType("Q4_1", 3, 32, 20, False, summary="half d; half m; u8 qs[16]; q*d+m"),
        QType("Q8_1", 9, 32, 36, False, summary="half d; half s (= d*sum q); i8 qs[32]; q*d"),
        QType("Q2_K", 10, QK_K, 84, False, True, "u8 scales[16]; u8 qs[64]; half d, dmin"),
        QType("Q3_K", 11, QK_K, 110, False, True, "u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d"),
        QType("Q8_K", 15, QK_K, 292, False, True, "float d; i8 qs[256]; i16 bsums[16]"),
        QType("IQ4_NL", 20, 32, 18, False, summary="half d; u8 qs[16]; d*kvalues_iq4nl[q]"),
        QType("IQ4_XS", 23, QK_K, 136, False,
              summary="half d; u16 scales_h; u8 scales_l[4]; u8 qs[128]"),
        QType("TQ1_0", 34, QK_K, 54, False, summary="u8 qs[48] (5 trits/byte); u8 qh[4]; half d"),
        QType("TQ2_0", 35, QK_K, 66, False, summary="u8 qs[64] (4 trits/byte); half d"),
    )
}

#: The block formats SKaiNET packs for its kernels (kernels_ref, relayout, fixtures, footprint).
PACKED_TYPES: tuple[str, ...] = tuple(n for n, q in QTYPES.items() if q.packed)
#: The plain float types (F32, F16, BF16).
FLOAT_TYPES: tuple[str, ...] = tuple(n for n, q in QTYPES.items() if q.is_float)
#: Every quantized block format the oracle quantizes and dequantizes bit-exactly.
BLOCK_TYPES: tuple[str, ...] = tuple(n for n, q in QTYPES.items() if not q.is_float)
#: The block formats SKaiNET's GGUF layer only dequantizes (not packed for its kernels).
READ_TYPES: tuple[str, ...] = tuple(n for n in BLOCK_TYPES if not QTYPES[n].packed)


def qtype(name: str) -> QType:
    """Look a type up by name (case-insensitive), raising OracleError for an unknown one."""
    try:
        return QTYPES[str(name).upper()]
    except KeyError:
        raise OracleError(
            f"unknown type {name!r}: expected one of {', '.join(QTYPES)}"
        ) from None
