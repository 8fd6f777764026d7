"""kernels_ref: API, block orders, chunking, gather_rows, error_bound on adversarial data."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import kernels_ref.matmul as kmatmul
from kernels_ref import SEMANTICS, error_bound, gather_rows, matmul_wt
from kernels_ref.semantics import REGISTRY
from oracle import OracleError, dequantize, qtype, quantize, to_input_block_major

F = np.float32
FORMATS = [("Q8_0", 96), ("Q4_0", 96), ("Q5_0", 96), ("Q5_1", 96), ("Q4_K", 512),
           ("Q5_K", 512), ("Q6_K", 512)]
VARIANTS = [("exact", {}), ("skainet_scalar", {}), ("skainet_panama", {}),
            ("skainet_panama", {"lanes": 4, "reduction": "pairwise"}),
            ("skainet_panama", {"lanes": 16}), ("skainet_neon", {}),
            ("skainet_neon", {"fused_final": False}), ("skainet_neon", {"kernel_order": "rm"}),
            ("ggml", {}), ("ggml", {"rounding": "even"})]


def runs(fmt: str, sem: str) -> bool:
    return True  # every semantics models every packed format


def data(fmt: str, n: int, out: int = 9, batch: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, n)).astype(F)
    x = rng.standard_normal((batch, n)).astype(F)
    return quantize(fmt, w), x


def bits(a) -> list:
    return np.asarray(a, dtype=F).view(np.uint32).tolist()


# ------------------------------------------------------------------------------ API

def test_semantics_table() -> None:
    assert set(SEMANTICS) == {"exact", "skainet_scalar", "skainet_neon", "skainet_panama",
                              "ggml", "skainet_q8_reference", "skainet_x86"}
    for name, line in SEMANTICS.items():
        assert line and "\n" not in line, name
        assert REGISTRY[name].__doc__  # names the source functions modelled


def test_neon_kernel_orders_differ_only_for_q5_1() -> None:
    """The `_rm` entry differs from the feed-order one where gcc contracts differently
    (Q5_1, fused); everywhere else the two entries give the same bits."""
    for fmt, n in FORMATS:
        raw, x = data(fmt, n)
        for fused in (True, False):
            feed, rm = (bits(matmul_wt(x, raw, fmt, 9, n, semantics="skainet_neon",
                                       fused_final=fused, kernel_order=k)) for k in ("feed", "rm"))
            assert (feed != rm) == (fmt == "Q5_1" and fused), (fmt, fused)


@pytest.mark.parametrize("kwargs,match", [
    ({"semantics": "nope"}, "unknown semantics 'nope'"),
    ({"semantics": "skainet_panama", "lanes": 3}, "lanes must be"),
    ({"semantics": "skainet_panama", "reduction": "tree"}, "reduction must be"),
    ({"semantics": "ggml", "rounding": "up"}, "rounding must be"),
    ({"semantics": "skainet_neon", "fused_final": "yes"}, "fused_final must be"),
    ({"semantics": "skainet_neon", "kernel_order": "row_major"}, "kernel_order must be one of"),
    ({"semantics": "skainet_scalar", "lanes": 4}, "unknown option"),
    ({"order": "column_major"}, "unknown block order"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    raw, x = data("Q8_0", 64)
    with pytest.raises(OracleError, match=match):
        matmul_wt(x, raw, "Q8_0", 9, 64, **kwargs)


def test_bad_inputs() -> None:
    raw, x = data("Q8_0", 64)
    with pytest.raises(OracleError, match="expected 612"):
        matmul_wt(x, raw[:-1], "Q8_0", 9, 64)
    with pytest.raises(OracleError, match="float32"):
        matmul_wt(x.astype(np.float64), raw, "Q8_0", 9, 64)
    with pytest.raises(OracleError, match="shape"):
        matmul_wt(x[:, :32], raw, "Q8_0", 9, 64)
    bad = x.copy()
    bad[1, 5] = np.nan
    with pytest.raises(OracleError, match=r"finite.*\(1, 5\)"):
        matmul_wt(bad, raw, "Q8_0", 9, 64)
    with pytest.raises(OracleError, match="multiple of 32"):
        matmul_wt(np.zeros(48, F), np.zeros(9 * 34 * 2, np.uint8), "Q8_0", 9, 48)
    with pytest.raises(OracleError, match="not a packed block format"):
        matmul_wt(x, raw, "F32", 9, 64)
    with pytest.raises(OracleError, match="out_dim"):
        matmul_wt(x, raw, "Q8_0", 0, 64)
    with pytest.raises(OracleError, match="uint8"):
        matmul_wt(x, raw.astype(np.int16), "Q8_0", 9, 64)


def test_accepts_bytes_and_1d() -> None:
    raw, x = data("Q8_0", 64)
    y2 = matmul_wt(x, raw, "Q8_0", 9, 64)
    y1 = matmul_wt(x[1], raw.tobytes(), "Q8_0", 9, 64)
    assert y2.shape == (3, 9) and y1.shape == (9,) and y1.dtype == F
    assert bits(y1) == bits(y2[1])


# ------------------------------------------------------------------------------ orders, chunks

@pytest.mark.parametrize("fmt,n", FORMATS)
def test_block_orders_and_chunking_do_not_change_bits(fmt: str, n: int) -> None:
    raw, x = data(fmt, n, out=13)
    ibm = to_input_block_major(raw, fmt)
    for sem, opts in VARIANTS:
        if not runs(fmt, sem):
            continue
        base = matmul_wt(x, raw, fmt, 13, n, semantics=sem, **opts)
        other = matmul_wt(x, ibm, fmt, 13, n, order="input_block_major", semantics=sem,
                          chunk_elements=n * 3 * 2, **opts)  # chunks of two rows
        assert bits(base) == bits(other), (sem, opts)
        # each batch row is its own GEMV
        assert bits(matmul_wt(x[2], raw, fmt, 13, n, semantics=sem, **opts)) == bits(base[2])


@pytest.mark.parametrize("fmt,n", FORMATS)
def test_exact_is_the_correctly_rounded_float64_sum(fmt: str, n: int) -> None:
    raw, x = data(fmt, n, out=6, batch=2, seed=3)
    w = dequantize(fmt, raw)
    y = matmul_wt(x, raw, fmt, 6, n)
    for b in range(2):
        for o in range(6):
            s = math.fsum(float(a) * float(c) for a, c in zip(x[b], w[o], strict=True))
            exact = sum((Fraction(float(a)) * Fraction(float(c))
                         for a, c in zip(x[b], w[o], strict=True)), Fraction(0))
            # the float64 sum is within a few float64 ulps of the rational one, and its
            # float32 rounding is within half a float32 ulp (one ulp at most, at a tie)
            tol = abs(exact) * Fraction(1, 2**52) + Fraction(1, 2**1000)
            assert abs(Fraction(s) - exact) <= tol
            assert abs(float(y[b, o]) - s) <= float(np.spacing(np.abs(y[b, o])))


@pytest.mark.parametrize("fmt,n", FORMATS)
def test_semantics_differ_where_orders_differ(fmt: str, n: int) -> None:
    """Each modelled order is observable: on wide-range data the variants disagree."""
    raw, _ = data(fmt, n, out=64, batch=1, seed=5)
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n))).astype(F)
    got = {}
    for sem, opts in VARIANTS:
        if runs(fmt, sem):
            got[(sem, tuple(opts.items()))] = bits(matmul_wt(x, raw, fmt, 64, n, semantics=sem,
                                                             **opts))
    scalar = got[("skainet_scalar", ())]
    assert scalar != got[("exact", ())]
    assert scalar != got[("skainet_panama", ())]
    assert got[("skainet_panama", ())] != got[("skainet_panama", (("lanes", 16),))]
    fused = got[("skainet_neon", ())]
    assert fused != got[("skainet_neon", (("fused_final", False),))]


def test_ggml_rounding_variants_differ_on_ties() -> None:
    """x*id lands exactly on k + 0.5: roundf goes away from zero, NEON's vcvtnq to even."""
    n = 64
    x = np.zeros((1, n), F)
    x[0, 0] = 127.0  # amax 127 -> d = 1, id = 1
    x[0, 1:32] = np.arange(1, 32) % 9 + F(0.5)
    x[0, 32] = -127.0
    x[0, 33:] = -(np.arange(1, 32) % 4 + F(0.5))  # fewer even-k ties: no cancellation
    raw = quantize("Q8_0", np.ones((4, n), F))
    a = matmul_wt(x, raw, "Q8_0", 4, n, semantics="ggml")
    b = matmul_wt(x, raw, "Q8_0", 4, n, semantics="ggml", rounding="even")
    assert bits(a) != bits(b)


# ------------------------------------------------------------------------------ gather_rows

@pytest.mark.parametrize("fmt,n", FORMATS)
@pytest.mark.parametrize("order", ["row_major", "input_block_major"])
def test_gather_rows_equals_full_dequantize(fmt: str, n: int, order: str) -> None:
    raw, _ = data(fmt, n, out=20, seed=7)
    table = dequantize(fmt, raw)
    packed = raw if order == "row_major" else to_input_block_major(raw, fmt)
    ids = np.array([[3, 0, 19], [3, 3, 7]])
    got = gather_rows(packed, fmt, 20, n, ids, order=order)
    assert got.shape == (2, 3, n) and got.dtype == F
    assert bits(got) == bits(table[ids])
    s = F(math.sqrt(640))
    scaled = gather_rows(packed, fmt, 20, n, ids, scale=s, order=order)
    assert bits(scaled) == bits(table[ids] * s)


def test_gather_rows_dequantizes_only_distinct_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _ = data("Q8_0", 64, out=1000, seed=8)
    seen = []

    def counting(fmt, packed):
        seen.append(np.asarray(packed).shape[0])
        return dequantize(fmt, packed)

    monkeypatch.setattr(kmatmul, "dequantize", counting)
    out = gather_rows(raw, "Q8_0", 1000, 64, [5, 999, 5, 5, 42])
    assert seen == [3]
    assert bits(out) == bits(dequantize("Q8_0", raw)[[5, 999, 5, 5, 42]])


def test_gather_rows_errors() -> None:
    raw, _ = data("Q8_0", 64, out=10)
    with pytest.raises(OracleError, match="id 10 is out of range"):
        gather_rows(raw, "Q8_0", 10, 64, [1, 10])
    with pytest.raises(OracleError, match="id -1"):
        gather_rows(raw, "Q8_0", 10, 64, [-1])
    with pytest.raises(OracleError, match="integers"):
        gather_rows(raw, "Q8_0", 10, 64, [1.0])
    with pytest.raises(OracleError, match="scale must be finite"):
        gather_rows(raw, "Q8_0", 10, 64, [1], scale=float("inf"))
    with pytest.raises(OracleError, match="expected"):
        gather_rows(raw[:-34], "Q8_0", 10, 64, [1])
    assert gather_rows(raw, "Q8_0", 10, 64, np.zeros((0,), np.int64)).shape == (0, 64)


# ------------------------------------------------------------------------------ error_bound

def adversarial_weights(fmt: str, n: int, out: int, rng: np.random.Generator) -> np.ndarray:
    """Quantized rows with constant blocks, zeros, huge and tiny ranges, plus raw blocks with
    fp16 extreme scales (max 65504, subnormal) written straight into the bytes."""
    w = rng.standard_normal((out, n)).astype(F)
    w[0] = 0.0
    w[1] = 3.0
    w[2] *= F(1e4)
    w[3] *= F(1e-6)
    w[4, ::2] = F(0.5)
    raw = quantize(fmt, w)
    qt = qtype(fmt)
    blocks = raw.reshape(out, -1, qt.nbytes)
    d_at = qt.nbytes - 2 if fmt == "Q6_K" else 0
    blocks[5, :, d_at : d_at + 2] = np.frombuffer(np.float16(65504).tobytes(), np.uint8)
    blocks[6, :, d_at : d_at + 2] = np.frombuffer(np.uint16(0x0003).tobytes(), np.uint8)
    if fmt in ("Q4_K", "Q5_K", "Q5_1"):
        blocks[7, :, 2:4] = np.frombuffer(np.float16(-60000).tobytes(), np.uint8)
    return raw


def adversarial_x(n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.empty((5, n), F)
    x[0] = rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))
    x[1] = np.where(np.arange(n) % 2, 1e20, -1e20).astype(F)  # cancelling huge pairs
    x[1, ::5] = 1.0
    x[2] = (np.arange(n) % 5 - 2) * F(0.5)  # ties and zeros
    x[3] = F(1e-40) * (rng.standard_normal(n) > 0)  # subnormal activations
    x[4] = rng.standard_normal(n) * 1e6
    return x


@pytest.mark.parametrize("fmt,n", FORMATS)
def test_every_semantics_stays_inside_error_bound(fmt: str, n: int) -> None:
    rng = np.random.default_rng(11)
    out = 8
    raw = adversarial_weights(fmt, n, out, rng)
    x = adversarial_x(n, rng)
    exact = matmul_wt(x, raw, fmt, out, n).astype(np.float64)
    finite = np.isfinite(exact)
    assert finite.mean() > 0.8
    plain = error_bound(x, raw, fmt, out, n)
    for sem, opts in VARIANTS:
        if not runs(fmt, sem):
            continue
        y = matmul_wt(x, raw, fmt, out, n, semantics=sem, **opts).astype(np.float64)
        bound = error_bound(x, raw, fmt, out, n, semantics=sem, **opts)
        ok = np.isfinite(bound) & finite & np.isfinite(y)
        err = np.abs(y - exact)
        assert np.all(err[ok] <= bound[ok]), (sem, opts, np.max(err[ok] / bound[ok]))
        if sem in ("skainet_scalar", "skainet_panama", "exact") or (
                sem == "skainet_neon" and fmt not in ("Q4_K", "Q6_K")):
            # float kernels: the activation-free bound already covers them
            assert np.all(err[ok] <= plain[ok]), (sem, opts)


def test_error_bound_is_tight_enough_to_catch_a_wrong_order() -> None:
    """Summing in float16 instead of float32 breaks the bound; the bound is near gamma*S."""
    rng = np.random.default_rng(12)
    n = 256
    raw = quantize("Q8_0", rng.standard_normal((16, n)).astype(F))
    x = rng.standard_normal(n).astype(F)
    bound = error_bound(x, raw, "Q8_0", 16, n)
    exact = matmul_wt(x, raw, "Q8_0", 16, n).astype(np.float64)
    w = dequantize("Q8_0", raw)
    half = np.zeros(16, np.float16)
    for k in range(n):
        half = (half + (x[k] * w[:, k]).astype(np.float16)).astype(np.float16)
    assert np.any(np.abs(half.astype(np.float64) - exact) > bound)
    s = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    assert np.all(bound <= 1.1 * (2 * n + 8) * 2.0**-24 * s + 2.0**-23 * np.abs(exact) + 1e-30)


def test_error_sizes_are_read_against_the_output_scale() -> None:
    """A big ulp count on a near-zero output is small at the output's scale; a bound is
    judged by how it compares with the outputs (tightness, outputs a sign flip passes)."""
    from kernels_ref.compare import (
        bound_tightness,
        bound_usage,
        error_at_scale,
        sign_blind,
        ulp_distance,
    )

    ref = np.array([[1024.0, 1e-5, -3.0]], F)
    y = ref.copy()
    y[0, 1] = F(-1e-5)  # a sign flip on the tiny output: huge per-element ulp distance
    assert ulp_distance(y, ref).max() > 10**9
    assert error_at_scale(y, ref) == pytest.approx(2e-5 / np.spacing(F(1024)), rel=1e-3)
    assert error_at_scale(ref, ref) == 0.0
    y[0, 0] = np.nextafter(F(1024), F(2048))
    assert error_at_scale(y, ref) == pytest.approx(1.0, abs=1e-3)
    bound = np.array([[1e-3, 1e-3, 1e-3]])
    assert bound_usage(y, ref, bound) == pytest.approx(0.122, rel=0.05)
    assert bound_tightness(bound, ref) == pytest.approx(1e-3 / 1024)
    assert sign_blind(bound, ref) == 1  # only the 1e-5 output: 1e-3 >= 2e-5
    assert error_at_scale(np.array([np.inf], F), np.array([1.0], F)) == float("inf")
