"""fma32 against exact rational arithmetic: every result must be the correctly rounded one."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from kernels_ref.fma import fma32

F32_MAX = float(np.finfo(np.float32).max)
TINY = float(np.finfo(np.float32).smallest_subnormal)


def round_f32(q: Fraction) -> float:
    """Round a nonzero rational to float32, nearest-even, with subnormals and overflow."""
    sign = -1.0 if q < 0 else 1.0
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, -126)
    quantum = Fraction(2) ** (e - 23)
    m = a / quantum
    fl = m.numerator // m.denominator
    rem = m - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    value = fl * quantum
    if value >= Fraction(2) ** 128:
        return sign * math.inf
    return sign * float(value)


def reference_fma(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """IEEE 754 fusedMultiplyAdd(a, b, c) in float32 via Fraction for finite operands."""
    fa, fb, fc = float(a), float(b), float(c)
    if not all(math.isfinite(v) for v in (fa, fb, fc)):
        # Non-finite operands: the float64 expression is exact enough (no rounding occurs).
        return np.float32(fa * fb + fc)
    exact = Fraction(fa) * Fraction(fb) + Fraction(fc)
    if exact == 0:
        prod_neg = math.copysign(1.0, fa) * math.copysign(1.0, fb) < 0
        both_neg = prod_neg and math.copysign(1.0, fc) < 0
        return np.float32(-0.0 if both_neg else 0.0)
    return np.float32(round_f32(exact))


def check(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    got = fma32(a, b, c)
    want = np.array([reference_fma(x, y, z) for x, y, z in zip(a, b, c, strict=True)],
                    dtype=np.float32)
    nan_both = np.isnan(got) & np.isnan(want)
    same = (got.view(np.uint32) == want.view(np.uint32)) | nan_both
    bad = np.flatnonzero(~same)
    assert bad.size == 0, [(a[i], b[i], c[i], got[i], want[i]) for i in bad[:5]]


def f32(*vals: float) -> np.ndarray:
    return np.array(vals, dtype=np.float32)


def test_random_wide_exponents() -> None:
    rng = np.random.default_rng(1)
    n = 20000
    bits = rng.integers(0, 2**32, size=(3, n), dtype=np.uint64).astype(np.uint32)
    a, b, c = (bits[i].view(np.float32) for i in range(3))
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
    check(a[keep], b[keep], c[keep])


def test_random_cancellation() -> None:
    """c close to -a*b: the sum cancels most bits, where a non-fused a*b+c goes wrong."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal(20000).astype(np.float32)
    b = rng.standard_normal(20000).astype(np.float32)
    c = -(a * b)  # float32-rounded product: the exact residual survives only with one rounding
    c2 = np.nextafter(c, np.float32(np.inf))
    check(a, b, c)
    check(a, b, c2)
    assert not np.array_equal(fma32(a, b, c), (a * b + c).astype(np.float32))


def test_ties_round_to_even_and_double_rounding_traps() -> None:
    """Exact sums at float32 midpoints, and sums just off a midpoint by less than a float64
    ulp: plain float64 rounding lands on the midpoint and then rounds the wrong way."""
    ulp = 2.0 ** -23
    a = f32(1.0, 1.0, 1.0 + ulp, 1.0 + 3 * ulp, 1.0, 1.0)
    b = f32(1.0 + ulp, 1.0, 1.0 + ulp, 1.0, 1.0, 1.0)
    c = f32(ulp / 2, ulp / 2, 0.0, ulp / 2, 3 * ulp / 2, -ulp / 4)
    check(a, b, c)
    # (1 + 2^-23) * (2^-24 - 2^-47) = 2^-24 - 2^-70: just under half an ulp of c
    rng = np.random.default_rng(3)
    k = rng.integers(0, 2**22, 3000) * 2 + 1  # odd significands: a tie would round up
    c = (1.0 + k * ulp).astype(np.float32)
    a = np.full(c.shape, 1.0 + ulp, np.float32)
    b = np.full(c.shape, 2.0 ** -24 - 2.0 ** -47, np.float32)
    for sa, sc in ((1, 1), (-1, -1), (-1, 1), (1, -1)):
        check(sa * a, b, sc * c)
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert not np.array_equal(naive, fma32(a, b, c)), "these operands must trap double rounding"
    assert np.array_equal(fma32(a, b, c), c)  # below the midpoint: stays at c
    # products whose low half lies far below c: round-to-odd must keep the sticky bit
    m = (1 + rng.integers(0, 2**23, 5000)).astype(np.float32) * np.float32(ulp)
    big = np.float32(2.0 ** 30)
    check(m, m, np.full_like(m, big))
    check(m, -m, np.full_like(m, big))


def test_subnormals_and_underflow() -> None:
    t = TINY
    a = f32(t, t, 2 ** -75, 2 ** -75, 2 ** -80, -(2 ** -70), 1e-30, 2 ** -63, 3 * t)
    b = f32(0.5, 1.0, 2 ** -75, 2 ** -74, 2 ** -70, 2 ** -80, 1e-10, 2 ** -63, 0.5)
    c = f32(0.0, t, 0.0, -t, t, 2 ** -149 * 7, -1e-38, -(2 ** -126), t)
    check(a, b, c)
    rng = np.random.default_rng(4)
    sub = (rng.integers(1, 2**23, 4000).astype(np.uint32)).view(np.float32)
    sgn = np.where(rng.random(4000) < 0.5, -1, 1).astype(np.float32)
    check(sub, rng.random(4000).astype(np.float32) * 4, sgn * sub[::-1])
    check(np.float32(2.0 ** -70) * rng.random(4000).astype(np.float32),
          np.float32(2.0 ** -70) * rng.random(4000).astype(np.float32), sgn * sub)


def test_overflow_boundary() -> None:
    fmax = F32_MAX
    half_ulp_top = 2.0 ** 103  # midpoint of FLT_MAX and 2**128 is FLT_MAX + 2**103
    a = f32(fmax, fmax, fmax, 2 ** 64, 2 ** 64, -fmax, 2 ** 100)
    b = f32(1.0, 2.0, -1.0, 2 ** 64, -(2 ** 64), 1.0, 2 ** 28)
    c = f32(half_ulp_top, 0.0, fmax, -(2 ** 100), 2 ** 100, -(2 ** 104), -fmax)
    check(a, b, c)
    # just below the overflow threshold: stays finite
    assert np.isfinite(fma32(f32(fmax), f32(1.0), f32(2.0 ** 102)))[0]
    assert np.isinf(fma32(f32(fmax), f32(1.0), f32(2.0 ** 103)))[0]


def test_signed_zeros() -> None:
    a = f32(0.0, -0.0, 0.0, -0.0, 1.0, 1.0, -1.0, 2.0)
    b = f32(1.0, 1.0, -1.0, -1.0, 0.0, -0.0, 0.0, 3.0)
    c = f32(-0.0, -0.0, -0.0, 0.0, -0.0, -0.0, 0.0, -6.0)
    got = fma32(a, b, c)
    want = f32(0.0, -0.0, -0.0, 0.0, 0.0, -0.0, 0.0, 0.0)
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    check(a, b, c)


def test_non_finite() -> None:
    inf, nan = np.inf, np.nan
    got = fma32(f32(inf, inf, 0.0, inf, 1.0, nan, 2.0), f32(0.0, 1.0, inf, 1.0, 1.0, 1.0, 3.0),
                f32(1.0, -inf, 1.0, 5.0, inf, 0.0, nan))
    assert np.isnan(got[0]) and np.isnan(got[1]) and np.isnan(got[2])
    assert got[3] == np.inf and got[4] == np.inf
    assert np.isnan(got[5]) and np.isnan(got[6])


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 1, 4)])
def test_broadcasting_and_dtype(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal(shape).astype(np.float32)
    out = fma32(a, np.float32(3.0), a)
    assert out.dtype == np.float32 and out.shape == shape
    check(a.ravel(), np.full(a.size, 3.0, np.float32), a.ravel())
