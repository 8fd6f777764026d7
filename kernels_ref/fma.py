"""Correctly rounded float32 fused multiply-add, whole-array in NumPy.

NumPy has no fma ufunc, and the kernels this package models (NEON `vfmaq_f32`, the JVM's
`FloatVector.fma`, C compiled with FMA contraction) round `a*b + c` once. The float32
product `a*b` is exact in float64 (24 + 24 significand bits < 53, and float64's exponent
range holds every product of two float32 values, subnormals included). The float64 sum is
then rounded to odd (an inexact sum gets its last significand bit forced to 1); rounding
that to float32 gives the correctly rounded result, because 53 >= 24 + 2 (Boldo and
Melquiond, "When double rounding is odd", 2005). The rounding error of the float64 sum is
recovered exactly by Knuth's TwoSum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fma32", "round_to_odd_sum64"]


def round_to_odd_sum64(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float64 `p + c` rounded to odd (inexact sums get an odd last significand bit)."""
    p = np.asarray(p, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c
        # TwoSum: e = (p + c) - s exactly, for finite operands without overflow.
        bp = s - p
        e = (p - (s - bp)) + (c - bp)
    bits = np.atleast_1d(s).view(np.int64).copy()
    inexact = np.atleast_1d((e != 0) & np.isfinite(s))
    even = (bits & 1) == 0
    fix = inexact & even
    if fix.any():
        # Step one ulp toward the exact value: away from zero when e has s's sign.
        same_sign = np.atleast_1d(np.signbit(e) == np.signbit(s))
        bits[fix] += np.where(same_sign[fix], 1, -1)
    return bits.view(np.float64).reshape(np.shape(s))


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 `a*b + c` (IEEE 754 fusedMultiplyAdd), broadcasting.

    Signed zeros, infinities and NaN follow IEEE 754: an exact zero sum is +0 unless both
    `a*b` and `c` are -0; `inf*0 + c` and `inf - inf` are NaN.
    """
    a32 = np.asarray(a, dtype=np.float32)
    b32 = np.asarray(b, dtype=np.float32)
    c32 = np.asarray(c, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        p = a32.astype(np.float64) * b32.astype(np.float64)
        s = round_to_odd_sum64(p, c32)
        return s.astype(np.float32)
