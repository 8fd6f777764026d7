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


_FP16_TABLE: np.ndarray | None = None


def fp16_table() -> np.ndarray:
    """float32 of every one of the 65536 fp16 bit patterns, built once by `fp16_to_f32`
    itself, so a table look-up carries every bit of the literal conversion (NaN
    quieting included)."""
    global _FP16_TABLE
    if _FP16_TABLE is None:
        table = fp16_to_f32(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16))
        table.setflags(write=False)
        _FP16_TABLE = table
    return _FP16_TABLE


def fp16_lookup_f32(h: np.ndarray) -> np.ndarray:
    """`fp16_to_f32(h)` by table look-up (bit-identical, several times faster)."""
    return fp16_table()[np.asarray(h, dtype=np.uint16)]


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


_MAGIC = F32(12582912.0)  # 1.5 * 2**23, nearest_int's rounding constant


def nearest_int_clip_f32(v: np.ndarray, lo: int, hi: int, out: np.ndarray | None = None,
                         scratch: np.ndarray | None = None) -> np.ndarray:
    """`MAX(lo, MIN(hi, nearest_int(v)))` as float32 codes, computed in the float domain.

    With s = v + 1.5*2^23 rounded to float32, nearest_int reads s's mantissa minus 2^22.
    Whenever 2^23 <= s < 2^24 the float32 spacing there is 1, so that mantissa is exactly
    s - 2^23 and nearest_int(v) == s - 1.5*2^23, which float32 computes exactly (and as +0,
    never -0). Only when some s falls outside that binade (|v| >= 2^22, Inf, NaN) does the C
    code return mantissa garbage; then the literal bit emulation `nearest_int` is used.
    `out` and `scratch` are optional float32 buffers shaped like v (neither may alias v).
    """
    v = np.asarray(v, dtype=F32)
    out = np.empty(v.shape, F32) if out is None else out
    s = np.empty(v.shape, F32) if scratch is None else scratch
    with np.errstate(all="ignore"):
        np.add(v, _MAGIC, out=s)
        if s.size and not (s.min() >= F32(2.0**23) and s.max() < F32(2.0**24)):
            # min()/max() propagate NaN, so any NaN fails the test above as well
            codes = np.clip(nearest_int(v), lo, hi)
            out[...] = codes
            return out
        np.subtract(s, _MAGIC, out=out)
    return np.clip(out, F32(lo), F32(hi), out=out)


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

    For a C-contiguous (n, G) array with G >= 2, `np.add.reduce(axis=0)` adds whole rows
    into the running (G,) result one row after another, which is exactly the C order and
    touches the data once. np.sum's pairwise (8-way unrolled) summation only happens when
    the reduced axis is the contiguous inner loop, i.e. for a single column or a
    non-C-contiguous layout; those take the always-sequential ufunc.accumulate instead.
    """
    terms = np.asarray(terms, dtype=F32)
    if terms.ndim >= 2 and terms.size and terms.flags.c_contiguous:
        flat = terms.reshape(terms.shape[0], -1)
        if flat.shape[1] >= 2:
            with np.errstate(all="ignore"):
                if start_zero:
                    s = np.add.reduce(flat, axis=0, initial=F32(0))
                else:
                    s = np.add.reduce(flat, axis=0)
            return s.reshape(terms.shape[1:])
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
