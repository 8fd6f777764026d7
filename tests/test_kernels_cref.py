"""`ggml` semantics against ggml's own C library (generic C order, x86 build without SIMD):
activation quantizers byte for byte, matmul results bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_ref import matmul_wt
from kernels_ref.activations import ggml_q8_0, ggml_q8_1, ggml_q8_k
from oracle import QK_K, qtype, quantize

pytestmark = pytest.mark.cref

F = np.float32
FORMATS = [("Q8_0", 128), ("Q4_0", 128), ("Q5_0", 128), ("Q5_1", 128), ("Q4_K", 512),
           ("Q5_K", 512), ("Q6_K", 512)]


def adversarial_x(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [
        rng.standard_normal(n),
        rng.standard_normal(n) * np.exp(rng.uniform(-12, 12, n)),
        np.where(np.arange(n) % 3 == 0, 127.0, (np.arange(n) % 9) + 0.5),  # roundf ties
        np.zeros(n),
        np.concatenate([np.zeros(n // 2), rng.standard_normal(n - n // 2)]),  # zero blocks
        np.full(n, -3.25),  # constant
        rng.standard_normal(n) * 1e7,  # d = amax/127 beyond fp16: Inf scale
        rng.standard_normal(n) * 1e-38,  # tiny: 1/d overflows
        np.where(np.arange(n) % 2, 1e-30, -2e-30),
    ]
    return np.array(rows, dtype=F)


def test_activation_quantizers_match_from_float(cref) -> None:
    n = 512
    x = adversarial_x(n, 1)
    for i in range(x.shape[0]):
        row = x[i]
        raw8 = cref.from_float("Q8_0", row).reshape(-1, qtype("Q8_0").nbytes)
        a = ggml_q8_0(row[None])
        assert raw8[:, 2:].view(np.int8).tolist() == a["qs"][0].tolist(), i
        d16 = raw8[:, :2].copy().view(np.float16)[:, 0].astype(F)
        np.testing.assert_array_equal(d16.view(np.uint32), a["d"][0].view(np.uint32))

        raw1 = cref.from_float("Q5_1", row).reshape(-1, 36)  # Q8_1: d, s, qs[32]
        b = ggml_q8_1(row[None])
        assert raw1[:, 4:].view(np.int8).tolist() == b["qs"][0].tolist(), i
        s16 = raw1[:, 2:4].copy().view(np.float16)[:, 0].astype(F)
        np.testing.assert_array_equal(s16.view(np.uint32), b["s"][0].view(np.uint32))

        rawk = cref.from_float("Q4_K", row).reshape(-1, 4 + QK_K + 32)  # Q8_K
        k = ggml_q8_k(row[None])
        assert rawk[:, 4 : 4 + QK_K].view(np.int8).tolist() == k["qs"][0].tolist(), i
        dk = rawk[:, :4].copy().view(np.float32)[:, 0]
        np.testing.assert_array_equal(dk.view(np.uint32), k["d"][0].view(np.uint32))
        bs = rawk[:, 4 + QK_K :].copy().view(np.int16)
        written = dk != 0  # an all-zero block's bsums are left unwritten by the C code
        assert bs[written].tolist() == k["bsums"][0][written].tolist(), i


@pytest.mark.parametrize("fmt,n", FORMATS)
def test_ggml_semantics_equal_ggml_vec_dot(cref, fmt: str, n: int) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((12, n)).astype(F)
    w[1] = 0.0
    w[2] *= F(1e3)
    w[3, : n // 2] = 7.0
    raw = quantize(fmt, w)
    x = adversarial_x(n, 3)
    got = matmul_wt(x, raw, fmt, 12, n, semantics="ggml")
    for i in range(x.shape[0]):
        want = cref.matvec(fmt, raw, x[i])
        assert got[i].view(np.uint32).tolist() == want.view(np.uint32).tolist(), (fmt, i)


def test_even_rounding_is_not_what_the_reference_build_runs(cref) -> None:
    """The ARM variant is observably different from the x86 reference on ties."""
    n = 128
    x = adversarial_x(n, 4)[2]
    raw = quantize("Q8_0", np.random.default_rng(5).standard_normal((8, n)).astype(F))
    want = cref.matvec("Q8_0", raw, x).view(np.uint32).tolist()
    assert matmul_wt(x, raw, "Q8_0", 8, n, semantics="ggml").view(np.uint32).tolist() == want
    even = matmul_wt(x, raw, "Q8_0", 8, n, semantics="ggml", rounding="even")
    assert even.view(np.uint32).tolist() != want
