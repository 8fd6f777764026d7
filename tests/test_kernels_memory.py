"""Bounded memory on the FunctionGemma lm_head shape: 262144 x 640 Q8_0 (~178 MB packed).

One token through matmul_wt(semantics="exact") must stay under 64 MiB of extra peak memory
(tracemalloc counts NumPy's buffers), where dequantizing the matrix would take 671 MB.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from kernels_ref import gather_rows, matmul_wt
from oracle import dequantize
from oracle.samples import random_q8_0_matrix

VOCAB, N_EMBD = 262144, 640
LIMIT = 64 * 2**20


@pytest.fixture(scope="module")
def lm_head() -> np.ndarray:
    """Random Q8_0 blocks (valid fp16 scales, any int8 codes), GGUF row order."""
    return random_q8_0_matrix(np.random.default_rng(0), VOCAB, N_EMBD)


def peak_of(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lm_head_exact_single_token_peak(lm_head: np.ndarray) -> None:
    x = np.random.default_rng(1).standard_normal(N_EMBD).astype(np.float32)
    y, peak = peak_of(lambda: matmul_wt(x, lm_head, "Q8_0", VOCAB, N_EMBD))
    assert y.shape == (VOCAB,)
    assert peak < LIMIT, f"peak {peak / 2**20:.1f} MiB"
    # spot-check rows against a full dequantize of those rows only
    rows = np.array([0, 1, 77777, VOCAB - 1])
    w = dequantize("Q8_0", lm_head[rows]).astype(np.float64)
    np.testing.assert_array_equal(y[rows], (w @ x.astype(np.float64)).astype(np.float32))


def test_lm_head_gather_peak(lm_head: np.ndarray) -> None:
    ids = np.array([2, 262143, 2, 105])
    e, peak = peak_of(lambda: gather_rows(lm_head, "Q8_0", VOCAB, N_EMBD, ids,
                                          scale=np.float32(np.sqrt(N_EMBD))))
    assert e.shape == (4, N_EMBD)
    assert peak < 2**20  # the touched rows only, never the table
