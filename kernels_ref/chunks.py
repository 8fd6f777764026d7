"""Reading a packed weight matrix a bounded chunk of output rows at a time.

A packed [out, in] weight arrives as flat bytes in one of SKaiNET's two block orders
(`oracle.layout`). The kernels here never expand the whole matrix: they take up to
`rows_per_chunk` output rows, unpack or dequantize just those, and move on, so the extra
memory is a few chunk-sized arrays whatever the matrix size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from oracle import INPUT_BLOCK_MAJOR, PACKED_TYPES, OracleError, QType, qtype
from oracle.layout import check_order

#: Weights (elements) one chunk covers, times the batch size; the kernels' temporaries are
#: a small multiple of this many float32/float64 values.
CHUNK_ELEMENTS = 1 << 19


def as_packed_bytes(w_raw: object, qt: QType, out_dim: int, in_dim: int) -> np.ndarray:
    """`w_raw` (bytes, bytearray, memoryview or uint8 array of any shape) as a flat uint8
    view, checked against the [out_dim, in_dim] geometry of `qt`. No copy for arrays."""
    if isinstance(out_dim, bool) or not isinstance(out_dim, int | np.integer) or out_dim <= 0:
        raise OracleError(f"{qt.name}: out_dim must be a positive int, got {out_dim!r}")
    if isinstance(in_dim, bool) or not isinstance(in_dim, int | np.integer) or in_dim <= 0:
        raise OracleError(f"{qt.name}: in_dim must be a positive int, got {in_dim!r}")
    if isinstance(w_raw, bytes | bytearray | memoryview):
        flat = np.frombuffer(w_raw, dtype=np.uint8)
    else:
        arr = np.asarray(w_raw)
        if arr.dtype != np.uint8:
            raise OracleError(
                f"{qt.name}: packed weight must be uint8 bytes, got dtype {arr.dtype}")
        flat = arr.reshape(-1)
    want = int(out_dim) * qt.row_bytes(int(in_dim))
    if flat.size != want:
        raise OracleError(
            f"{qt.name}: packed weight has {flat.size} bytes, expected {want} for "
            f"[{out_dim} x {in_dim}] ({out_dim} rows x {qt.blocks_in(int(in_dim))} blocks x "
            f"{qt.nbytes} bytes)"
        )
    return flat


def rows_per_chunk(in_dim: int, batch: int = 1, budget: int = CHUNK_ELEMENTS) -> int:
    """How many output rows one chunk holds so that rows*in_dim*batch stays near `budget`."""
    return max(1, budget // max(1, in_dim * batch))


def row_chunk(flat: np.ndarray, qt: QType, out_dim: int, in_dim: int, order: str,
              start: int, stop: int) -> np.ndarray:
    """Packed bytes of output rows [start, stop) in GGUF row order, shape (rows, row_bytes).

    Row-major input gives a view; input-block-major gathers the rows' blocks (a
    chunk-sized copy): block (o, b) sits at index b*out_dim + o.
    """
    nbytes = qt.nbytes
    bpr = qt.blocks_in(in_dim)
    if order == INPUT_BLOCK_MAJOR:
        blocks = flat.reshape(bpr, out_dim, nbytes)[:, start:stop, :]
        return np.ascontiguousarray(blocks.transpose(1, 0, 2)).reshape(stop - start, bpr * nbytes)
    return flat.reshape(out_dim, bpr * nbytes)[start:stop]


def iter_row_chunks(flat: np.ndarray, qt: QType, out_dim: int, in_dim: int, order: str,
                    rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, row-order bytes) for consecutive chunks of at most `rows` output rows."""
    for start in range(0, out_dim, rows):
        stop = min(out_dim, start + rows)
        yield start, stop, row_chunk(flat, qt, out_dim, in_dim, order, start, stop)


def packed_type(name: str) -> QType:
    """The QType of a block format the kernels accept (not the plain float types)."""
    qt = qtype(name)
    if not qt.packed:
        raise OracleError(f"{qt.name} is not a packed block format; the kernels take "
                          f"{', '.join(PACKED_TYPES)}")
    return qt


def checked_order(order: str) -> str:
    """Validate a block-order name (OracleError naming the valid ones)."""
    return check_order(order)
