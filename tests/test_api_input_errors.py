"""The Python API on odd input: an empty batch is an empty result; a wrong type, a shape
mismatch or an input too large for memory is one clear OracleError naming what is wrong,
raised before any work (never a NumPy traceback from deep inside, never a MemoryError)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_ref import SEMANTICS, error_bound, matmul_wt, ulp_distance
from oracle import QTYPES, OracleError, quantize, to_input_block_major, to_row_major
from oracle import quants as Q


@pytest.mark.parametrize("semantics", sorted(SEMANTICS))
@pytest.mark.parametrize("qt, in_dim", [("Q8_0", 64), ("Q6_K", 256)])
def test_matmul_of_a_zero_row_batch_is_empty(semantics: str, qt: str, in_dim: int) -> None:
    w = quantize(qt, np.random.default_rng(0).standard_normal((5, in_dim)).astype(np.float32))
    x = np.zeros((0, in_dim), np.float32)
    try:
        y = matmul_wt(x, w, qt, 5, in_dim, semantics=semantics)
    except OracleError as exc:  # a semantics without a kernel for this format says so
        assert "Traceback" not in str(exc) and qt in str(exc)
        return
    assert y.shape == (0, 5) and y.dtype == np.float32
    b = error_bound(x, w, qt, 5, in_dim)
    assert b.shape == (0, 5)


@pytest.mark.parametrize("out_dim", [3.0, "3", None, True, np.float32(3)])
def test_to_row_major_names_a_non_integer_out_dim(out_dim: object) -> None:
    raw = quantize("Q8_0", np.ones((3, 64), np.float32))
    ibm = to_input_block_major(raw, "Q8_0")
    with pytest.raises(OracleError, match=r"to_row_major: out_dim must be an int, got "):
        to_row_major(ibm, "Q8_0", out_dim=out_dim)  # type: ignore[arg-type]
    assert np.array_equal(to_row_major(ibm, "Q8_0", out_dim=np.int64(3)), raw)


@pytest.mark.parametrize("a, b", [((3,), (4,)), ((2, 3), (3, 2)), ((1, 4), (4,)),
                                  ((4, 1), (1, 4))])
def test_ulp_distance_refuses_different_shapes(a: tuple, b: tuple) -> None:
    with pytest.raises(OracleError, match=rf"same shape, got \({a[0]},.*and \({b[0]},"):
        ulp_distance(np.zeros(a, np.float32), np.zeros(b, np.float32))


@pytest.mark.parametrize("qt, dtype", [("Q8_0", np.float32), ("Q4_K", np.float64),
                                       ("F16", np.float32)])
def test_quantize_too_large_for_memory_is_refused_up_front(qt: str, dtype: type) -> None:
    avail = Q.available_memory()
    assert avail is not None and avail > 0
    n = (avail // 4 + (1 << 20)) // 256 * 256  # more float32 elements than memory holds
    x = np.broadcast_to(dtype(1), (n,))  # a view: the test itself allocates nothing
    with pytest.raises(OracleError, match=rf"{qt}: quantize of {n} elements .* GiB of working "
                                          r"memory, .* GiB is available"):
        quantize(qt, x)


def test_every_format_has_a_working_memory_estimate() -> None:
    assert set(Q.WORK_PER_ELEMENT_F32) == set(QTYPES)  # bench/bench_quantize_memory.py checks


def test_quantize_checks_against_the_budget_it_is_given() -> None:
    n = (64 << 20) // 4 // 256 * 256  # 64 MiB of float32: over the size worth checking
    x = np.broadcast_to(np.float32(1), (n,))
    with pytest.raises(OracleError, match=r"Q8_0: quantize of .* 0\.0 GiB is available"):
        quantize("Q8_0", x, memory_budget=1 << 20)
