"""kernels_ref.dense_jvm: the fp32 GEMM orders of SKaiNET's Fp32MatmulKernel implementations,
checked against a literal transcription in Python scalars, and the bound for any order."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_ref.dense_jvm import gemm, gemm_error_bound
from kernels_ref.fma import fma32
from oracle import OracleError

F32 = np.float32


def operands(m: int, k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, k)) * 2.0 ** rng.integers(-20, 20, (m, k))).astype(F32)
    b = rng.standard_normal((k, n)).astype(F32)
    return a, b


def literal_panama(a: np.ndarray, b: np.ndarray, lanes: int) -> np.ndarray:
    """PanamaVectorMatmulKernel one output at a time: lane fma, sequential reduceLanes, tail."""
    m, k = a.shape
    out = np.empty((m, b.shape[1]), F32)
    body = k - k % lanes
    for i in range(m):
        for j in range(b.shape[1]):
            acc = [F32(0)] * lanes
            for p in range(body):
                acc[p % lanes] = fma32(a[i, p], b[p, j], acc[p % lanes])
            s = F32(0)
            for v in acc:
                s = F32(s + v)
            for p in range(body, k):
                s = F32(s + F32(a[i, p] * b[p, j]))
            out[i, j] = s
    return out


def test_scalar_is_the_literal_loop() -> None:
    a, b = operands(3, 37, 5)
    want = np.empty((3, 5), F32)
    for i in range(3):
        for j in range(5):
            s = F32(0)
            for p in range(37):
                s = F32(s + F32(a[i, p] * b[p, j]))
            want[i, j] = s
    assert gemm(a, b, "skainet_scalar").tobytes() == want.tobytes()


@pytest.mark.parametrize("lanes", [4, 8])
def test_panama_is_the_literal_lane_loop(lanes: int) -> None:
    a, b = operands(2, 37, 3, seed=lanes)
    got = gemm(a, b, "skainet_panama", lanes, "sequential")
    assert got.tobytes() == literal_panama(a, b, lanes).tobytes()
    assert got.tobytes() != gemm(a, b, "skainet_scalar").tobytes()


def test_every_order_is_inside_the_bound_and_a_dropped_product_is_not() -> None:
    a, b = operands(4, 101, 7, seed=3)
    exact = gemm(a, b).astype(np.float64)
    bound = gemm_error_bound(a, b)
    for kw in ({"semantics": "skainet_scalar"},
               *({"semantics": "skainet_panama", "lanes": n, "reduction": r}
                 for n in (4, 8, 16) for r in ("sequential", "pairwise", "halving"))):
        assert (np.abs(gemm(a, b, **kw) - exact) <= bound).all(), kw
    rng = np.random.default_rng(4)  # operands of one scale: a missing product is far outside
    a, b = (rng.standard_normal(s).astype(F32) for s in ((4, 101), (101, 7)))
    exact, bound = gemm(a, b).astype(np.float64), gemm_error_bound(a, b)
    dropped = gemm(a[:, :-1], b[:-1], "skainet_scalar").astype(np.float64)
    assert (np.abs(dropped - exact) > bound).sum() > bound.size // 2


def test_bad_operands_are_one_clear_error() -> None:
    a, b = operands(2, 5, 3)
    with pytest.raises(OracleError, match="inner dimensions differ"):
        gemm(a, b[:4])
    with pytest.raises(OracleError, match="a must be a 2-D float32"):
        gemm(a.astype(np.float64), b)
    with pytest.raises(OracleError, match="unknown semantics"):
        gemm(a, b, "skainet_neon")
    with pytest.raises(OracleError, match="lanes 2/4/8/16"):
        gemm(a, b, "skainet_panama", lanes=3)


def test_b16_decoding_is_exact_and_the_outer_order_is_the_literal_loop() -> None:
    from kernels_ref.dense_jvm import decode_b16

    bits = np.array([0x3F80, 0xC000, 0x0001, 0x7F80], np.uint16)
    assert decode_b16(bits, "BF16").tolist() == [1.0, -2.0, float(np.uint32(0x10000).view(F32)),
                                                 np.inf]
    assert decode_b16(bits, "F16").tobytes() == bits.view(np.float16).astype(F32).tobytes()
    with pytest.raises(OracleError, match="codec must be one of"):
        decode_b16(bits, "F32")
    a, b = operands(2, 9, 7, seed=9)
    out = np.zeros((2, 7), F32)
    for i in range(2):
        for p in range(9):
            for j in range(7):
                prod = a[i, p] * b[p, j]
                out[i, j] = fma32(a[i, p], b[p, j], out[i, j]) if j < 4 else F32(out[i, j] + prod)
    assert gemm(a, b, "skainet_panama_outer", 4).tobytes() == out.tobytes()
