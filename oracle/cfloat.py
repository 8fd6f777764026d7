"""Whole-array NumPy versions of the scalar C float idioms ggml's reference code relies on.

Each function reproduces, bit for bit, what the corresponding C expression computes in a
plain x86-64 build (SSE float32, no FMA contraction): fp16/bf16 conversion, `roundf`,
`nearest_int`'s magic-number rounding, C casts from float to small integers, and float32
sums taken strictly in loop order.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
_U32 = np.uint32


def bits_f32(a: np.ndarray) -> np.ndarray:
    """The uint32 bit patterns of a float32 array."""
    return np.ascontiguousarray(a, dtype=F32).view(_U32)


def f32_from_bits(b: np.ndarray) -> np.ndarray:
    """Float32 values of uint32 bit patterns."""
    return np.ascontiguousarray(b, dtype=_U32).view(F32)


def fp16_to_f32(h: np.ndarray) -> np.ndarray:
    """ggml_compute_fp16_to_fp32: exact for every finite half; like the C code, the final
    float multiply quiets a signalling NaN payload."""
    w = np.asarray(h, dtype=np.uint16).astype(_U32) << _U32(16)
    sign = w & _U32(0x80000000)
    two_w = w + w
    with np.errstate(all="ignore"):
        normalized = f32_from_bits((two_w >> _U32(4)) + _U32(0xE0 << 23)) * F32(2.0**-112)
        denormalized = f32_from_bits((two_w >> _U32(17)) | _U32(126 << 23)) - F32(0.5)
    chosen = np.where(two_w < _U32(1 << 27), bits_f32(denormalized), bits_f32(normalized))
    return f32_from_bits(sign | chosen)


def f32_to_fp16(f: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_fp16: round to nearest even, overflow to Inf, NaN -> 0x7E00."""
    f = np.ascontiguousarray(f, dtype=F32)
    with np.errstate(all="ignore"):
        base = (np.abs(f) * F32(2.0**112)) * F32(2.0**-110)
        w = bits_f32(f)
        shl1_w = w + w
        sign = w & _U32(0x80000000)
        bias = np.maximum(shl1_w & _U32(0xFF000000), _U32(0x71000000))
        base = f32_from_bits((bias >> _U32(1)) + _U32(0x07800000)) + base
    bits = bits_f32(base)
    nonsign = ((bits >> _U32(13)) & _U32(0x7C00)) + (bits & _U32(0x0FFF))
    out = (sign >> _U32(16)) | np.where(shl1_w > _U32(0xFF000000), _U32(0x7E00), nonsign)
    return (out & _U32(0xFFFF)).astype(np.uint16)


def bf16_to_f32(h: np.ndarray) -> np.ndarray:
    """ggml_compute_bf16_to_fp32: the top half of a float32."""
    return f32_from_bits(np.asarray(h, dtype=np.uint16).astype(_U32) << _U32(16))


def f32_to_bf16(f: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even; NaN forced quiet."""
    u = bits_f32(f)
    nan = (u & _U32(0x7FFFFFFF)) > _U32(0x7F800000)
    rounded = (u + (_U32(0x7FFF) + ((u >> _U32(16)) & _U32(1)))) >> _U32(16)
    return np.where(nan, (u >> _U32(16)) | _U32(64), rounded).astype(np.uint16)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa (ties to even).
    Reproduced literally, so out-of-range inputs give the same garbage the C code gives."""
    with np.errstate(all="ignore"):
        val = np.asarray(v, dtype=F32) + F32(12582912.0)
    i = bits_f32(val).view(np.int32)
    return (i & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: to nearest, ties AWAY from zero (np.round would tie to even)."""
    v = np.asarray(v, dtype=F32)
    t = np.trunc(v)
    with np.errstate(invalid="ignore"):
        away = np.abs(v - t) >= F32(0.5)
    return np.where(away, t + np.sign(v), t).astype(F32)


def cvt_trunc_i32(v: np.ndarray) -> np.ndarray:
    """A C float->int conversion as x86 `cvttss2si` performs it: truncation toward zero, and
    the 'integer indefinite' INT32_MIN for NaN or out-of-range values."""
    v = np.asarray(v, dtype=F32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (v > F32(-2147483904.0)) & (v < F32(2147483648.0))
        t = np.where(ok, np.trunc(v), F32(0)).astype(np.int64)
    return np.where(ok, t, np.int64(-(2**31)))


def cast_i8(v: np.ndarray) -> np.ndarray:
    """`(int8_t)float` in gcc x86-64 code: cvttss2si, then keep the low byte (signed)."""
    return (cvt_trunc_i32(v) & 0xFF).astype(np.uint8).view(np.int8).astype(np.int32)


def cast_u8(v: np.ndarray) -> np.ndarray:
    """`(uint8_t)float` in gcc x86-64 code: cvttss2si, then keep the low byte."""
    return (cvt_trunc_i32(v) & 0xFF).astype(np.int32)


def seqsum(terms: np.ndarray, start_zero: bool = True) -> np.ndarray:
    """Float32 sum over axis 0 strictly in index order, as a C `for` loop computes it.

    `start_zero=True` models `float s = 0; for (...) s += t[i];` (so a first term of -0.0
    gives +0.0); False models `float s = t[0]; for (i = 1; ...)`.
    ufunc.accumulate is sequential, unlike np.sum's pairwise summation.
    """
    terms = np.asarray(terms, dtype=F32)
    if start_zero:
        terms = np.concatenate([np.zeros((1,) + terms.shape[1:], F32), terms], axis=0)
    with np.errstate(all="ignore"):
        return np.add.accumulate(terms, axis=0, dtype=F32)[-1]


def first_extreme(x: np.ndarray, axis: int, largest: bool) -> np.ndarray:
    """The value a C scan `if (x[i] < m) m = x[i];` (or `>`) started at x[0] ends with: the
    FIRST element equal to the extreme, so the sign of a zero is the one seen first."""
    ext = x.max(axis=axis, keepdims=True) if largest else x.min(axis=axis, keepdims=True)
    idx = np.argmax(x == ext, axis=axis)
    return np.take_along_axis(x, np.expand_dims(idx, axis), axis=axis).squeeze(axis)
