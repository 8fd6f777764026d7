"""kernels_ref's model of SKaiNET's Q8-activation reference kernels (skainet_q8_reference):
their activation quantizer, bit for bit, on the inputs where it differs from ggml's Q8_K and
the native C quantizer, and its place among the semantics and the bound."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_ref import SEMANTICS, error_bound, matmul_wt
from kernels_ref.activations import ggml_q8_k, skainet_native_q8
from kernels_ref.q8reference import skainet_jvm_q8
from oracle import OracleError, quantize

F32 = np.float32


def block(*values: float, fill: float = 0.0) -> np.ndarray:
    """One 256-block: max |x| 127 (so inv = 127/127 = 1 and x*inv = x), then `values`."""
    x = np.full(256, fill, F32)
    x[0] = 127.0
    x[1:1 + len(values)] = values
    return x


def test_rounding_is_half_away_through_a_float32_add() -> None:
    below_half = np.nextafter(F32(0.5), F32(0))  # 0.49999997: + 0.5f rounds up to 1.0f
    x = block(below_half, -below_half, 2.5, -2.5, 1.5, -0.5, 126.5, 0.25)[None]
    q = skainet_jvm_q8(x)["qs"][0, 0, :9].tolist()
    assert q == [127, 1, -1, 3, -3, 2, -1, 127, 0]
    native = skainet_native_q8(x, fast_math=False)["qs"][0, 0, :9].tolist()
    assert native == [127, 0, 0, 2, -2, 2, 0, 126, 0]  # lrintf: ties to even
    ggml = ggml_q8_k(x)["qs"][0, 0, :9].tolist()
    assert ggml != q


def test_scale_is_a_true_division_and_degenerate_blocks() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 512)).astype(F32)
    x[1, :256] = 0.0  # all zero: d = 0, codes 0
    x[2, 256:] = 0.0
    x[2, 300] = np.float32(1e-45)  # the smallest subnormal: 127/maxAbs overflows to inf
    a = skainet_jvm_q8(x)
    maxabs = np.abs(x.reshape(3, 2, 256)).max(-1)
    want_d = np.where(maxabs == 0, F32(0), (maxabs / F32(127)).astype(F32))
    assert a["d"].tobytes() == want_d.astype(F32).tobytes()
    assert not a["qs"][1, 0].any()
    tiny = a["qs"][2, 1]
    assert tiny[300 - 256] == 127 and np.count_nonzero(tiny) == 1  # 0 * inf is NaN -> 0
    assert a["d"][2, 1] == 0.0  # 1e-45 / 127 underflows


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K"])
def test_model_is_inside_its_bound_and_differs_from_the_native_order_on_ties(fmt: str) -> None:
    rng = np.random.default_rng(1)
    raw = quantize(fmt, rng.standard_normal((9, 768)).astype(F32))
    x = rng.standard_normal((3, 768)).astype(F32)
    y = matmul_wt(x, raw, fmt, 9, 768, semantics="skainet_q8_reference")
    exact = matmul_wt(x, raw, fmt, 9, 768).astype(np.float64)
    bound = error_bound(x, raw, fmt, 9, 768, semantics="skainet_q8_reference")
    assert (np.abs(y - exact) <= bound).all()
    plain = error_bound(x, raw, fmt, 9, 768)
    assert (np.abs(y - exact) > plain).any()  # the float-only bound cannot judge it
    # on ties (x*inv = k + 0.5) the native order's lrintf gives other codes
    ties = np.tile(block(*(np.arange(-40, 40, dtype=F32) + F32(0.5))), 3)[None]
    y = matmul_wt(ties, raw, fmt, 9, 768, semantics="skainet_q8_reference")
    neon = matmul_wt(ties, raw, fmt, 9, 768, semantics="skainet_neon", fused_final=False)
    assert y.tobytes() != neon.tobytes()


def test_registered_and_refuses_other_formats() -> None:
    assert "skainet_q8_reference" in SEMANTICS
    raw = quantize("Q8_0", np.ones((1, 32), F32))
    with pytest.raises(OracleError, match="Q4_K and Q6_K only"):
        matmul_wt(np.ones((1, 32), F32), raw, "Q8_0", 1, 32, semantics="skainet_q8_reference")
    with pytest.raises(OracleError, match="unknown option"):
        matmul_wt(np.ones((1, 256), F32), quantize("Q4_K", np.ones((1, 256), F32)), "Q4_K",
                  1, 256, semantics="skainet_q8_reference", lanes=4)
