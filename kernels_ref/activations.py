"""Activation quantizers of the kernels that turn float32 activations into int8 codes.

ggml's CPU matmul quantizes the activation row before the integer block dots
(`vec_dot_type`): Q8_0 for Q4_0/Q5_0/Q8_0 weights, Q8_1 for Q5_1, Q8_K for the K-quants.
SKaiNET's native Q4_K/Q6_K kernels quantize to a Q8_K-like form of their own. Each function
returns the codes and float32 scales the dot products read (fp16 scales already decoded).
"""

from __future__ import annotations

import numpy as np

from oracle import QK_K, qtype
from oracle.cfloat import F32, cast_i8, f32_to_fp16, fp16_to_f32, nearest_int, roundf

#: Q8_0/Q8_1 activation quantizers of ggml's CPU backend, by name: "roundf" the reference
#: (quantize_row_q8_0_ref: id = 1/d, roundf, ties away from zero), "even" ARM NEON
#: (id = 1/d, vcvtnq_s32_f32, ties to even), "x86" the AVX/AVX2 build
#: (ggml-cpu/arch/x86/quants.c: id = 127/amax, _mm256_round_ps nearest-even,
#: _mm256_cvtps_epi32 then saturating packs to int8)
ROUNDINGS = ("roundf", "even", "x86")


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """(batch, n) -> (batch, n/size, size) view."""
    return x.reshape(x.shape[0], -1, size)


def _saturating_int(v: np.ndarray, bits: int) -> np.ndarray:
    """AArch64 float->int conversion (fcvtns/fcvtzs): saturates, NaN -> 0; int64 result."""
    lim = 2.0 ** (bits - 1)
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        inside = np.where(np.isnan(v), 0.0, np.clip(v, -lim, lim - 1)).astype(np.int64)
    top = np.int64(2**63 - 1) if bits == 64 else np.int64(lim - 1)
    return np.where(v >= lim, top, inside)


def _indefinite_int(v: np.ndarray, bits: int) -> np.ndarray:
    """x86-64 float->int conversion (cvtss2si): NaN and every value outside the `bits`-bit
    range give the "integer indefinite" -2**(bits-1); int64 result."""
    lim = 2.0 ** (bits - 1)
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        inside = (v >= -lim) & (v < lim)
        return np.where(inside, np.where(inside, v, 0.0).astype(np.int64), np.int64(-lim))


#: float->int conversions of the native build, by target: AArch64 saturates, x86-64 gives
#: the integer indefinite
CONVERSIONS = {"aarch64": _saturating_int, "x86": _indefinite_int}


def _low_bits(v: np.ndarray, bits: int) -> np.ndarray:
    """A C narrowing conversion: keep the low `bits` bits, two's complement."""
    m = np.int64(1) << np.int64(bits)
    low = np.asarray(v, dtype=np.int64) & (m - 1)
    return np.where(low >= m >> 1, low - m, low)


def _round_to_i8(v: np.ndarray, rounding: str) -> np.ndarray:
    """`(int8_t)roundf(v)` as the x86 reference build runs it (cvttss2si, low byte), or
    NEON's vcvtnq_s32_f32 (ties to even, saturating, NaN -> 0) stored as int8 (low byte)."""
    if rounding == "roundf":
        return cast_i8(roundf(v)).astype(np.int8)
    if rounding == "x86":  # cvtps_epi32 of NaN is INT_MIN; packs saturate
        with np.errstate(invalid="ignore"):
            r = np.rint(np.asarray(v, dtype=F32)).astype(np.float64)
        return np.clip(np.where(np.isnan(r), -2.0**31, r), -128, 127).astype(np.int8)
    with np.errstate(invalid="ignore"):
        r = np.rint(np.asarray(v, dtype=F32))
    return _low_bits(_saturating_int(r, 32), 8).astype(np.int8)


def ggml_q8_0(x: np.ndarray, rounding: str = "roundf") -> dict[str, np.ndarray]:
    """quantize_row_q8_0 (ref: roundf; ARM NEON: ties to even; x86: id = 127/amax, ties to
    even — see ROUNDINGS), per 32-block.

    d = amax/127 in float32, id = d ? 1/d : 0, q = round(x*id); d is stored as fp16, so the
    dot products read fp16(d). Returns d (batch, nb) float32, qs int8 (batch, nb, 32), and
    the float32 d before fp16 rounding as `d32` (Q8_1's s uses it).
    """
    xb = _blocks(x, qtype("Q8_0").block)
    with np.errstate(all="ignore"):
        amax = np.abs(xb).max(axis=-1).astype(F32)
        d32 = (amax / F32(127)).astype(F32)
        if rounding == "x86":  # id = 127/amax, not 1/d
            inv = np.where(amax != 0, F32(127) / np.where(amax != 0, amax, F32(1)), F32(0))
        else:
            inv = np.where(d32 != 0, F32(1) / np.where(d32 != 0, d32, F32(1)), F32(0))
        q = _round_to_i8(xb * inv.astype(F32)[..., None], rounding)
    return {"d": fp16_to_f32(f32_to_fp16(d32)), "qs": q, "d32": d32}


def ggml_q8_1(x: np.ndarray, rounding: str = "roundf") -> dict[str, np.ndarray]:
    """quantize_row_q8_1: Q8_0's codes plus s = fp16(sum(q) * d) with the float32 d."""
    a = ggml_q8_0(x, rounding)
    total = a["qs"].astype(np.int32).sum(axis=-1).astype(F32)
    with np.errstate(all="ignore"):
        s = fp16_to_f32(f32_to_fp16(total * a["d32"]))
    return {**a, "s": s}


def ggml_q8_k(x: np.ndarray) -> dict[str, np.ndarray]:
    """quantize_row_q8_K_ref, per 256-block: max = the first value of largest magnitude,
    iscale = -127/max, q = MIN(127, nearest_int(iscale*x)), d = 1/iscale (float32, not fp16),
    bsums = sums of 16 codes. An all-zero block gives d = 0 and zero codes."""
    xb = _blocks(x, QK_K)
    ax = np.abs(xb)
    pick = np.argmax(ax, axis=-1)[..., None]  # first index of the largest |x|
    mx = np.take_along_axis(xb, pick, axis=-1)[..., 0]
    zero = mx == 0
    with np.errstate(all="ignore"):
        iscale = (F32(-127) / np.where(zero, F32(1), mx)).astype(F32)
        q = np.minimum(127, nearest_int(iscale[..., None] * xb))
        d = (F32(1) / iscale).astype(F32)
    q = _low_bits(np.where(zero[..., None], 0, q), 8).astype(np.int8)
    d = np.where(zero, F32(0), d)
    bsums = q.reshape(*q.shape[:-1], QK_K // 16, 16).astype(np.int32).sum(axis=-1)
    return {"d": d, "qs": q, "bsums": bsums}


#: float32(1/127): gcc -ffast-math (-freciprocal-math) turns `maxabs / 127.0f` into this multiply.
RECIP_127 = F32(1) / F32(127)


def skainet_native_q8(x: np.ndarray, fast_math: bool = True,
                      conversion: str = "aarch64") -> dict[str, np.ndarray]:
    """The activation quantizer of SKaiNET's native Q4_K/Q6_K kernels (q4k_matmul.c
    `skainet_q8_quantize_block`, q6k_matmul.c `skainet_q6k_q8_quantize_block`), per 256-block:
    d_in = maxabs/127, inv = 127/maxabs (a separate division), q = lrintf(x*inv) (ties to
    even) clamped to +-127; an all-zero block gives d_in = 0. With `fast_math` the division
    by the constant is the multiply by float32(1/127) that gcc -ffast-math emits.
    `conversion` (a key of CONVERSIONS) is how lrintf treats what does not fit an int64 (an
    infinite x*inv when maxabs is so small that 127/maxabs overflows): AArch64's fcvtns
    saturates, x86-64's cvtss2si gives the integer indefinite (its low 32 bits: 0)."""
    xb = _blocks(x, QK_K)
    maxabs = np.abs(xb).max(axis=-1).astype(F32)
    zero = maxabs == 0
    safe = np.where(zero, F32(1), maxabs)
    with np.errstate(all="ignore"):
        d_in = (safe * RECIP_127) if fast_math else (safe / F32(127))
        inv = (F32(127) / safe).astype(F32)
        r = np.rint(xb * inv[..., None])
    # (int) lrintf(v): a saturating 64-bit conversion, then the low 32 bits; then the clamp
    q = np.clip(_low_bits(CONVERSIONS[conversion](r, 64), 32), -127, 127)
    return {"d": np.where(zero, F32(0), d_in).astype(F32),
            "qs": np.where(zero[..., None], 0, q).astype(np.int8)}
