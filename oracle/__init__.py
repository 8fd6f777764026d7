"""Bit-exact NumPy oracle for the GGUF block formats SKaiNET reads and packs, and its block orders.

    raw = quantize("Q4_K", x)                     # == ggml quantize_row_q4_K_ref, byte for byte
    y   = dequantize("Q4_K", raw)                 # == ggml dequantize_row_q4_K, bit for bit
    ibm = to_input_block_major(raw2d, "Q8_0")     # SKaiNET's kernel order
    rm  = to_row_major(ibm, "Q8_0", out_dim=o)    # exact inverse
"""

from oracle.formats import (
    BLOCK_TYPES,
    FLOAT_TYPES,
    PACKED_TYPES,
    QK_K,
    QTYPES,
    READ_TYPES,
    OracleError,
    QType,
    qtype,
)
from oracle.layout import (
    BLOCK_ORDERS,
    INPUT_BLOCK_MAJOR,
    ROW_MAJOR,
    PackedMatrix,
    block_index,
    to_input_block_major,
    to_row_major,
)
from oracle.quants import FORMATS, dequantize, quantize, unpack

__all__ = [
    "BLOCK_ORDERS",
    "BLOCK_TYPES",
    "FLOAT_TYPES",
    "FORMATS",
    "INPUT_BLOCK_MAJOR",
    "PACKED_TYPES",
    "QK_K",
    "QTYPES",
    "READ_TYPES",
    "ROW_MAJOR",
    "OracleError",
    "PackedMatrix",
    "QType",
    "block_index",
    "dequantize",
    "qtype",
    "quantize",
    "to_input_block_major",
    "to_row_major",
    "unpack",
]
