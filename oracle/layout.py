"""SKaiNET's block orders for a packed [out, in] weight matrix.

ROW_MAJOR (GGUF file order): block (o, b) at index `o*blocksPerRow + b`.
INPUT_BLOCK_MAJOR (what SKaiNET's packed matmul kernels read): block (o, b) at `b*outDim + o`.
A relayout moves whole blocks; the bytes inside a block never move. A pre-transposed view
describes the same bytes with logical shape [in, out], the marker that lets a linear layer
skip `transpose` on a packed weight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from oracle.formats import OracleError, QType, qtype

ROW_MAJOR = "row_major"
INPUT_BLOCK_MAJOR = "input_block_major"
BLOCK_ORDERS = (ROW_MAJOR, INPUT_BLOCK_MAJOR)


def check_order(order: str) -> str:
    """Validate a block-order name."""
    if order not in BLOCK_ORDERS:
        raise OracleError(
            f"unknown block order {order!r}: expected one of {', '.join(BLOCK_ORDERS)}"
        )
    return order


def _blocks(raw: np.ndarray, qt: QType, out_dim: int, blocks_per_row: int) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise OracleError(f"{qt.name}: packed data must be uint8 bytes, got dtype {raw.dtype}")
    want = out_dim * blocks_per_row * qt.nbytes
    if raw.size != want:
        raise OracleError(
            f"{qt.name}: expected {want} bytes ({out_dim} rows x {blocks_per_row} blocks x "
            f"{qt.nbytes} bytes), got {raw.size}"
        )
    return np.ascontiguousarray(raw).reshape(-1, qt.nbytes)


def to_input_block_major(raw2d: np.ndarray, qtype_name: str) -> np.ndarray:
    """GGUF row-order bytes (out, in/block*nbytes) -> flat INPUT_BLOCK_MAJOR bytes."""
    qt = qtype(qtype_name)
    raw2d = np.asarray(raw2d)
    if raw2d.ndim != 2 or raw2d.shape[1] % qt.nbytes:
        raise OracleError(
            f"{qt.name}: to_input_block_major needs 2-D bytes (out, k*{qt.nbytes}), "
            f"got shape {raw2d.shape}"
        )
    out_dim, bpr = raw2d.shape[0], raw2d.shape[1] // qt.nbytes
    b = _blocks(raw2d, qt, out_dim, bpr).reshape(out_dim, bpr, qt.nbytes)
    return np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(-1)


def to_row_major(ibm: np.ndarray, qtype_name: str, out_dim: int) -> np.ndarray:
    """Flat INPUT_BLOCK_MAJOR bytes -> GGUF row-order bytes (out_dim, in/block*nbytes)."""
    qt = qtype(qtype_name)
    ibm = np.asarray(ibm)
    if isinstance(out_dim, bool) or not isinstance(out_dim, int | np.integer):
        raise OracleError(f"{qt.name}: to_row_major: out_dim must be an int, got "
                          f"{type(out_dim).__name__} {out_dim!r}")
    out_dim = int(out_dim)
    if out_dim <= 0 or ibm.size % (qt.nbytes * out_dim):
        raise OracleError(
            f"{qt.name}: {ibm.size} bytes are not whole blocks of {qt.nbytes} bytes for "
            f"out_dim={out_dim} rows"
        )
    bpr = ibm.size // (qt.nbytes * out_dim)
    b = _blocks(ibm, qt, out_dim, bpr).reshape(bpr, out_dim, qt.nbytes)
    return np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(out_dim, bpr * qt.nbytes)


def block_index(order: str, o: int, b: int, out_dim: int, blocks_per_row: int) -> int:
    """Index of block (output row o, input block b) in the flat block array of `order`."""
    if check_order(order) == ROW_MAJOR:
        return o * blocks_per_row + b
    return b * out_dim + o


@dataclass(frozen=True)
class PackedMatrix:
    """Packed bytes of a weight W[out, in] plus the facts needed to read them.

    `pretransposed` is the marker: the same bytes, described with logical shape [in, out],
    so that x @ view is x @ W^T without moving or dequantizing anything.
    """

    raw: np.ndarray
    qtype: str
    out_dim: int
    in_dim: int
    order: str = ROW_MAJOR
    pretransposed: bool = False

    def __post_init__(self) -> None:
        qt = qtype(self.qtype)
        check_order(self.order)
        bpr = qt.blocks_in(self.in_dim)
        raw = np.asarray(self.raw)
        _blocks(raw, qt, self.out_dim, bpr)
        object.__setattr__(self, "raw", np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1))
        object.__setattr__(self, "qtype", qt.name)

    @property
    def blocks_per_row(self) -> int:
        return qtype(self.qtype).blocks_in(self.in_dim)

    @property
    def logical_shape(self) -> tuple[int, int]:
        """[out, in] normally; [in, out] for the pre-transposed view of the same bytes."""
        return (self.in_dim, self.out_dim) if self.pretransposed else (self.out_dim, self.in_dim)

    def transposed(self) -> PackedMatrix:
        """The pre-transposed view (or back): same bytes, same order, swapped logical shape."""
        return replace(self, pretransposed=not self.pretransposed)

    def to_order(self, order: str) -> PackedMatrix:
        """The same matrix with its blocks moved into `order`."""
        if check_order(order) == self.order:
            return self
        if order == INPUT_BLOCK_MAJOR:
            raw = to_input_block_major(self.row_major_bytes(), self.qtype)
        else:
            raw = to_row_major(self.raw, self.qtype, self.out_dim)
        return replace(self, raw=raw, order=order)

    def row_major_bytes(self) -> np.ndarray:
        """The bytes in GGUF row order, shape (out, in/block*nbytes)."""
        if self.order == ROW_MAJOR:
            return self.raw.reshape(self.out_dim, -1)
        return to_row_major(self.raw, self.qtype, self.out_dim)

    def block(self, o: int, b: int) -> np.ndarray:
        """The packed bytes of block (output row o, input block b)."""
        qt = qtype(self.qtype)
        i = block_index(self.order, o, b, self.out_dim, self.blocks_per_row)
        return self.raw[i * qt.nbytes : (i + 1) * qt.nbytes]
