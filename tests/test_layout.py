"""SKaiNET block orders: index mapping, round trips on non-square shapes, and the
pre-transposed view (same bytes, logical shape [in, out])."""

from __future__ import annotations

import numpy as np
import pytest

from oracle import (
    INPUT_BLOCK_MAJOR,
    PACKED_TYPES,
    ROW_MAJOR,
    OracleError,
    PackedMatrix,
    block_index,
    dequantize,
    qtype,
    quantize,
    to_input_block_major,
    to_row_major,
)

SHAPES = [(1, 1), (3, 5), (7, 2), (13, 3), (4, 4)]  # (out, blocks per row)


def _matrix(qt: str, out: int, bpr: int, seed: int = 0) -> np.ndarray:
    q = qtype(qt)
    x = np.random.default_rng(seed).standard_normal((out, bpr * q.block)).astype(np.float32)
    return quantize(qt, x)


@pytest.mark.parametrize("out,bpr", SHAPES)
@pytest.mark.parametrize("qt", PACKED_TYPES)
def test_round_trip_and_index_mapping(qt, out, bpr):
    q = qtype(qt)
    rm = _matrix(qt, out, bpr)
    ibm = to_input_block_major(rm, qt)
    assert ibm.shape == (out * bpr * q.nbytes,)
    assert np.array_equal(to_row_major(ibm, qt, out_dim=out), rm)
    blocks_rm = rm.reshape(out, bpr, q.nbytes)
    blocks_ibm = ibm.reshape(-1, q.nbytes)
    for o in range(out):
        for b in range(bpr):
            i = block_index(INPUT_BLOCK_MAJOR, o, b, out, bpr)
            assert i == b * out + o
            assert block_index(ROW_MAJOR, o, b, out, bpr) == o * bpr + b
            assert np.array_equal(blocks_ibm[i], blocks_rm[o, b])  # whole blocks, bytes unmoved


def test_input_block_major_is_not_identity_on_non_square():
    rm = _matrix("Q8_0", 3, 2)
    assert not np.array_equal(to_input_block_major(rm, "Q8_0"), rm.reshape(-1))


@pytest.mark.parametrize("qt", ("Q8_0", "Q4_K"))
def test_packed_matrix_orders_and_pretransposed_view(qt):
    q = qtype(qt)
    out, bpr = 5, 3
    rm = _matrix(qt, out, bpr, seed=1)
    w = PackedMatrix(rm, qt, out_dim=out, in_dim=bpr * q.block)
    ibm = w.to_order(INPUT_BLOCK_MAJOR)
    assert ibm.order == INPUT_BLOCK_MAJOR and ibm.to_order(ROW_MAJOR).raw.tobytes() == rm.tobytes()
    for o in range(out):
        for b in range(bpr):
            assert np.array_equal(w.block(o, b), ibm.block(o, b))
    view = ibm.transposed()
    assert view.pretransposed and view.logical_shape == (bpr * q.block, out)
    assert np.shares_memory(view.raw, ibm.raw)  # the marker copies and moves no bytes
    assert np.array_equal(dequantize(qt, view.row_major_bytes()), dequantize(qt, rm))
    assert view.transposed().logical_shape == (out, bpr * q.block)


def test_relayout_errors_name_type_and_sizes():
    rm = _matrix("Q8_0", 2, 2)
    with pytest.raises(OracleError, match=r"Q8_0.*34"):
        to_input_block_major(rm[:, :-1], "Q8_0")
    with pytest.raises(OracleError, match=r"Q8_0.*out_dim=3"):
        to_row_major(to_input_block_major(rm, "Q8_0"), "Q8_0", out_dim=3)
    with pytest.raises(OracleError, match="unknown block order"):
        PackedMatrix(rm, "Q8_0", 2, 64, order="column_major")
    with pytest.raises(OracleError, match=r"expected 136 bytes.*got 135"):
        PackedMatrix(rm.reshape(-1)[:-1], "Q8_0", 2, 64)
    with pytest.raises(OracleError, match=r"Q4_K.*multiple of 256.*640"):
        PackedMatrix(np.zeros(10, np.uint8), "Q4_K", 1, 640)
