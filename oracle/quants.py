"""Quantize, dequantize and unpack, bit-exact with ggml's C reference (ggml-quants.c), for
the formats SKaiNET packs and the ones its GGUF layer only dequantizes.

One small class per format, registered by name. Each works on a whole stack of blocks at
once: `quantize_blocks` takes float32 (N, block) and returns uint8 (N, nbytes);
`unpack_blocks` splits packed bytes into integer codes and float32 scales;
`dequantize_blocks` rebuilds float32 values in the same float order as
`dequantize_row_*`. Where ggml's float order is sequential within a block (the K-quant
scale searches), the arrays are laid out element-major, (n, groups), so each step of the
C loop is one vector operation across every group of every block.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from oracle.cfloat import (
    F32,
    bf16_to_f32,
    cast_i8,
    cast_u8,
    f32_to_bf16,
    f32_to_fp16,
    first_extreme,
    fp16_lookup_f32,
    nearest_int,
    nearest_int_clip_f32,
    roundf,
    seqsum,
)
from oracle.formats import OracleError, QType, qtype

GROUP_MAX_EPS = F32(1e-15)


def _half(raw: np.ndarray, off: int) -> np.ndarray:
    """The little-endian fp16 field at byte `off` of each block, as float32 (ggml decode)."""
    return fp16_lookup_f32(raw[:, off : off + 2].copy().view("<u2")[:, 0])


def _half_bytes(v: np.ndarray) -> np.ndarray:
    """float32 (N,) -> the (N, 2) little-endian bytes of its ggml fp16 encoding."""
    return f32_to_fp16(v).astype("<u2").view(np.uint8).reshape(-1, 2)


def _qh_bits(raw: np.ndarray, off: int, nbits: int) -> np.ndarray:
    """Bits of a little-endian bit field as (N, nbits) 0/1 integers (bit j = element j)."""
    return np.unpackbits(raw[:, off : off + nbits // 8], axis=1, bitorder="little").astype(
        np.int32
    )


def _pack_qh(bits: np.ndarray) -> np.ndarray:
    """(N, nbits) 0/1 -> packed little-endian bytes (inverse of `_qh_bits`)."""
    return np.packbits(bits.astype(np.uint8), axis=1, bitorder="little")


#: Dequantize works through runs of blocks of about this many values, so that its uint8 and
#: float32 temporaries stay in a core's L2 cache instead of streaming through memory.
DEQUANT_CHUNK_VALUES = 1 << 15


def _dequantize_chunked(raw: np.ndarray, block: int, kernel, *per_block: np.ndarray) -> np.ndarray:
    """float32 (N, block) filled by `kernel(raw_rows, out_rows, *per_block_rows)` one run of
    blocks at a time; `per_block` are arrays with one leading entry per block (the scales,
    decoded for all blocks at once)."""
    out = np.empty((raw.shape[0], block), F32)
    step = max(1, DEQUANT_CHUNK_VALUES // block)
    with np.errstate(all="ignore"):
        for start in range(0, raw.shape[0], step):
            rows = slice(start, start + step)
            kernel(raw[rows], out[rows], *(a[rows] for a in per_block))
    return out


def _nibbles_into(qs: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    """`qs & 0xF` into `low` and `qs >> 4` into `high` (uint8 arrays shaped like qs)."""
    np.bitwise_and(qs, 0xF, out=low)
    np.right_shift(qs, 4, out=high)


def _or_fifth_bits(codes: np.ndarray, qh: np.ndarray) -> None:
    """`codes |= bit << 4` for Q5_0/Q5_1: bit j of the little-endian 32-bit qh belongs to
    element j (C: `((qh >> j) << 4) & 0x10` and `(qh >> (j + 12)) & 0x10`)."""
    bits = np.unpackbits(qh, axis=1, bitorder="little")
    np.left_shift(bits, 4, out=bits)
    np.bitwise_or(codes, bits, out=codes)


class BlockFormat:
    """Base of the per-format classes; subclasses set `name` and the three operations."""

    name: ClassVar[str]
    qt: ClassVar[QType]

    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def unpack_blocks(cls, raw: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def dequantize_blocks(cls, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError


FORMATS: dict[str, type[BlockFormat]] = {}


def register(cls: type[BlockFormat]) -> type[BlockFormat]:
    cls.qt = qtype(cls.name)
    FORMATS[cls.name] = cls
    return cls


# ---------------------------------------------------------------------------------------
# plain float types


@register
class F32Format(BlockFormat):
    name = "F32"

    @classmethod
    def quantize_blocks(cls, x):
        return x.astype("<f4").view(np.uint8).reshape(-1, 4)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"values": cls.dequantize_blocks(raw)[:, 0]}

    @classmethod
    def dequantize_blocks(cls, raw):
        return raw.copy().view("<f4").astype(F32).reshape(-1, 1)


@register
class F16Format(BlockFormat):
    name = "F16"

    @classmethod
    def quantize_blocks(cls, x):
        return _half_bytes(x[:, 0])

    @classmethod
    def unpack_blocks(cls, raw):
        return {"values": cls.dequantize_blocks(raw)[:, 0]}

    @classmethod
    def dequantize_blocks(cls, raw):
        return _half(raw, 0).reshape(-1, 1)


@register
class BF16Format(BlockFormat):
    name = "BF16"

    @classmethod
    def quantize_blocks(cls, x):
        return f32_to_bf16(x[:, 0]).astype("<u2").view(np.uint8).reshape(-1, 2)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"values": cls.dequantize_blocks(raw)[:, 0]}

    @classmethod
    def dequantize_blocks(cls, raw):
        return bf16_to_f32(raw.copy().view("<u2")[:, 0]).reshape(-1, 1)


# ---------------------------------------------------------------------------------------
# 32-element formats


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` from amax = max = 0:
    the first value of largest magnitude, or +0.0 when every value is zero."""
    a = np.abs(x)
    amax = a.max(axis=1)
    picked = np.take_along_axis(x, np.argmax(a, axis=1)[:, None], axis=1)[:, 0]
    return np.where(amax > 0, picked, F32(0))


def _inverse(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f` in float32 (a subnormal d gives Inf, as in C)."""
    with np.errstate(all="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)


@register
class Q8_0(BlockFormat):
    """half d; int8 qs[32]; value = q*d. quantize: d = amax/127, q = roundf(x/d)."""

    name = "Q8_0"

    @classmethod
    def quantize_blocks(cls, x):
        d = np.abs(x).max(axis=1) / F32(127)
        with np.errstate(all="ignore"):
            q = cast_i8(roundf(x * _inverse(d)[:, None]))
        return np.concatenate([_half_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "qs": raw[:, 2:34].view(np.int8)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            out[...] = raw[:, 2:34].view(np.int8)  # (float)qs[j], exact
            np.multiply(out, d, out=out)  # y = qs[j]*d

        return _dequantize_chunked(raw, 32, kernel, _half(raw, 0)[:, None])


def _split32(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32) codes -> low nibbles byte array and 5th-bit array in ggml's layout
    (byte j holds element j in its low nibble and element j+16 in its high nibble)."""
    qs = ((codes[:, :16] & 0xF) | ((codes[:, 16:] & 0xF) << 4)).astype(np.uint8)
    return qs, (codes >> 4) & 1


def _codes32(raw: np.ndarray, qs_off: int, qh_off: int | None) -> np.ndarray:
    """Inverse of `_split32`: the (N, 32) unsigned codes of a Q4_0/Q5_x block."""
    qs = raw[:, qs_off : qs_off + 16].astype(np.int32)
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    if qh_off is not None:
        codes |= _qh_bits(raw, qh_off, 32) << 4
    return codes


@register
class Q4_0(BlockFormat):
    """half d; u8 qs[16]; value = (q-8)*d. quantize: d = max/-8, q = MIN(15, (int8)(x/d+8.5))."""

    name = "Q4_0"

    @classmethod
    def quantize_blocks(cls, x):
        d = _signed_absmax(x) / F32(-8)
        with np.errstate(all="ignore"):
            q = np.minimum(15, cast_i8(x * _inverse(d)[:, None] + F32(8.5))) & 0xFF
        qs = ((q[:, :16] | (q[:, 16:] << 4)) & 0xFF).astype(np.uint8)
        return np.concatenate([_half_bytes(d), qs], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "qs": (_codes32(raw, 2, None) - 8).astype(np.int8)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            q = np.empty(out.shape, np.uint8)
            _nibbles_into(raw[:, 2:18], q[:, :16], q[:, 16:])
            np.subtract(q, 8, out=q)  # wraps in uint8: the int8 view is (qs & 0xF) - 8
            out[...] = q.view(np.int8)
            np.multiply(out, d, out=out)  # y = x0*d

        return _dequantize_chunked(raw, 32, kernel, _half(raw, 0)[:, None])


@register
class Q5_0(BlockFormat):
    """half d; u8 qh[4]; u8 qs[16]; value = (q-16)*d. d = max/-16, q = MIN(31, (int8)(x/d+16.5))."""

    name = "Q5_0"

    @classmethod
    def quantize_blocks(cls, x):
        d = _signed_absmax(x) / F32(-16)
        with np.errstate(all="ignore"):
            q = np.minimum(31, cast_i8(x * _inverse(d)[:, None] + F32(16.5))) & 0xFF
        qs, hi = _split32(q)
        return np.concatenate([_half_bytes(d), _pack_qh(hi), qs], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "qs": (_codes32(raw, 6, 2) - 16).astype(np.int8)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            q = np.empty(out.shape, np.uint8)
            _nibbles_into(raw[:, 6:22], q[:, :16], q[:, 16:])
            _or_fifth_bits(q, raw[:, 2:6])
            np.subtract(q, 16, out=q)  # the int8 view is ((qs & 0xF) | xh_0) - 16 etc.
            out[...] = q.view(np.int8)
            np.multiply(out, d, out=out)  # y = x0*d

        return _dequantize_chunked(raw, 32, kernel, _half(raw, 0)[:, None])


@register
class Q5_1(BlockFormat):
    """half d; half m; u8 qh[4]; u8 qs[16]; value = q*d + m. d = (max-min)/31, m = min."""

    name = "Q5_1"

    @classmethod
    def quantize_blocks(cls, x):
        lo = first_extreme(x, axis=1, largest=False)
        hi = first_extreme(x, axis=1, largest=True)
        with np.errstate(all="ignore"):
            d = (hi - lo) / F32(31)
            q = cast_u8((x - lo[:, None]) * _inverse(d)[:, None] + F32(0.5))
        qs, qh = _split32(q)
        return np.concatenate([_half_bytes(d), _half_bytes(lo), _pack_qh(qh), qs], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "m": _half(raw, 2), "qs": _codes32(raw, 8, 4).astype(np.uint8)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d, m):
            q = np.empty(out.shape, np.uint8)
            _nibbles_into(raw[:, 8:24], q[:, :16], q[:, 16:])
            _or_fifth_bits(q, raw[:, 4:8])
            out[...] = q
            np.multiply(out, d, out=out)  # y = x0*d + m, two roundings
            np.add(out, m, out=out)

        return _dequantize_chunked(raw, 32, kernel, _half(raw, 0)[:, None], _half(raw, 2)[:, None])


# ---------------------------------------------------------------------------------------
# K-quants (256-element super-blocks)


def _weighted_fit(x, w, lf, sum_w, sum_x, wl, t):
    """One step's weighted least-squares (scale, min) for codes `lf`, as make_qkx2_quants
    computes it (min clamped to <= 0, then the scale refit through 0); `wl`, `t` scratch.
    Returns (D, scale, min) per group."""
    np.multiply(w, lf, out=wl)
    sum_l = seqsum(wl)
    sum_l2 = seqsum(np.multiply(wl, lf, out=t))
    sum_xl = seqsum(np.multiply(wl, x, out=t))
    D = sum_w * sum_l2 - sum_l * sum_l
    this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
    this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
    pos = this_min > 0
    this_min = np.where(pos, F32(0), this_min)
    this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
    return D, this_scale, this_min


def _make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep, use_mad=False):
    """ggml make_qkx2_quants for every group at once. x, w: float32 (n, G), element-major.
    `use_mad` weighs |diff| instead of diff*diff (Q2_K passes true).

    Returns (L uint8 (n, G), scale (G,), the_min (G,)). Loop order and float32 rounding
    follow the C code step by step: an improving step replaces BOTH scale and min, and the
    later steps' iscale and codes use the new min. Each `for (i...)` of the C code is a
    whole-array operation on (n, G) buffers; its float sums are `seqsum` (row order).
    Instead of copying the winning codes at every step, the (iscale, min) pair that produced
    them is kept and the codes are recomputed once at the end (the same float operations).
    """
    x = np.ascontiguousarray(x, dtype=F32)
    w = np.ascontiguousarray(w, dtype=F32)
    lo = first_extreme(x, axis=0, largest=False)
    hi = first_extreme(x, axis=0, largest=True)
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi == lo  # C returns early (L = 0, scale 0); their lanes are masked at the end
    nm = F32(nmax)
    xl, lf, t, wl = (np.empty_like(x) for _ in range(4))

    def codes(iscale, lo):
        """Laux[i] = MAX(0, MIN(nmax, nearest_int(iscale*(x[i] - min)))) as float32."""
        np.subtract(x, lo, out=xl)
        np.multiply(iscale, xl, out=xl)
        return nearest_int_clip_f32(xl, 0, nmax, out=lf, scratch=t)

    def weighted_error(scale, lo, lf):
        """sum of w * (diff*diff), or w * fabsf(diff), with diff = scale * L[i] + min - x[i]."""
        np.multiply(scale, lf, out=t)
        np.add(t, lo, out=t)
        np.subtract(t, x, out=t)
        if use_mad:
            np.abs(t, out=t)
        else:
            np.multiply(t, t, out=t)
        np.multiply(w, t, out=t)
        return seqsum(t)

    with np.errstate(all="ignore"):
        sum_w = seqsum(w, start_zero=False)
        sum_x = seqsum(w * x, start_zero=False)
        iscale = nm / np.where(flat, F32(1), hi - lo)
        scale = F32(1) / iscale
        best_error = weighted_error(scale, lo, codes(iscale, lo))
        best_iscale, best_lo = iscale, lo
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + nm) / np.where(flat, F32(1), hi - lo)
            codes(iscale, lo)
            D, this_scale, this_min = _weighted_fit(x, w, lf, sum_w, sum_x, wl, t)
            cur_error = weighted_error(this_scale, this_min, lf)
            better = (D > 0) & (cur_error < best_error) & ~flat
            best_iscale = np.where(better, iscale, best_iscale)
            best_lo = np.where(better, lo, best_lo)
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
        L = codes(best_iscale, best_lo)
    L = np.where(flat, F32(0), L).astype(np.uint8)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return L, scale, (-lo).astype(F32)


def _make_qx_quants(x, nmax):
    """ggml make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for every group at once.
    x: float32 (n, G) element-major. Returns (L int (n, G) in 0..2*nmax-1, scale (G,)).
    As in `_make_qkx2_quants`, the winning iscale is kept and its codes rebuilt at the end."""
    x = np.ascontiguousarray(x, dtype=F32)
    amax = np.abs(x).max(axis=0)
    mx = np.take_along_axis(x, np.argmax(np.abs(x), axis=0)[None, :], axis=0)[0]
    mx = np.where(amax > 0, mx, F32(0))
    zero = amax < GROUP_MAX_EPS  # C returns early (L = 0, scale 0); masked at the end
    mx = np.where(zero, F32(1), mx)
    lf, t, v = (np.empty_like(x) for _ in range(3))
    with np.errstate(all="ignore"):
        w = x * x
        wx = w * x

    def codes(iscale):
        """l = MAX(-nmax, MIN(nmax-1, nearest_int(iscale*x[i]))) as float32."""
        np.multiply(iscale, x, out=v)
        return nearest_int_clip_f32(v, -nmax, nmax - 1, out=lf, scratch=t)

    def sums(lf):
        """sumlx += w*x[i]*l; suml2 += w*l*l (float32, in C's left-to-right order)."""
        sumlx = seqsum(np.multiply(wx, lf, out=t))
        np.multiply(w, lf, out=t)
        return sumlx, seqsum(np.multiply(t, lf, out=t))

    with np.errstate(all="ignore"):
        iscale = F32(-nmax) / mx
        sumlx, suml2 = sums(codes(iscale))
        best_iscale = iscale
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
            sumlx, suml2 = sums(codes(iscale))
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_iscale = np.where(better, iscale, best_iscale)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
        L = codes(best_iscale).astype(np.int32) + nmax
    L = np.where(zero, 0, L)
    return L, np.where(zero, F32(0), scale).astype(F32)


#: K-quant quantize works through this many super-blocks at a time, so the (n, groups)
#: float32 buffers of the scale searches stay in a core's L2 cache.
QUANT_CHUNK_BLOCKS = 256


def _quantize_chunked(x: np.ndarray, nbytes: int, run) -> np.ndarray:
    """uint8 (N, nbytes) from `run(x_rows)` over runs of blocks (blocks are independent)."""
    out = np.empty((x.shape[0], nbytes), np.uint8)
    for start in range(0, x.shape[0], QUANT_CHUNK_BLOCKS):
        out[start : start + QUANT_CHUNK_BLOCKS] = run(x[start : start + QUANT_CHUNK_BLOCKS])
    return out


def _running_max(v: np.ndarray) -> np.ndarray:
    """`float m = 0; for (...) if (v[j] > m) m = v[j];` over axis 1: NaNs never win."""
    return np.where(v > 0, v, F32(0)).max(axis=1)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins (N, 8) -> ggml's 12 packed scale bytes (get_scale_min_k4)."""
    out = np.zeros((ls.shape[0], 12), np.int32)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return out.astype(np.uint8)


def _unpack_scale_min_k4(sb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml get_scale_min_k4 for j = 0..7 at once: (N, 12) bytes -> (sc, mn) uint8 (N, 8)."""
    q = sb.astype(np.int32)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.uint8), mn.astype(np.uint8)


def _nibble_planes(L: np.ndarray) -> np.ndarray:
    """(N, 256) codes -> the 128 qs bytes of Q4_K/Q5_K: per 64-chunk, byte l holds
    element l (low nibble) and element l+32 (high nibble)."""
    c = L.reshape(-1, 4, 2, 32) & 0xF
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def _from_nibble_planes(qs: np.ndarray) -> np.ndarray:
    """Inverse of `_nibble_planes`: (N, 128) bytes -> (N, 256) 4-bit codes."""
    q = qs.reshape(-1, 4, 1, 32).astype(np.int32)
    return np.concatenate([q & 0xF, q >> 4], axis=2).reshape(-1, 256)


def _nibble_plane_codes_into(qs: np.ndarray, q: np.ndarray) -> None:
    """`_from_nibble_planes` into uint8 q (N, 8, 32): per 64-chunk c, group 2c is
    `ql[l] & 0xF` and group 2c+1 is `ql[l] >> 4`."""
    q = q.reshape(-1, 4, 2, 32)
    _nibbles_into(qs.reshape(-1, 4, 32), q[:, :, 0], q[:, :, 1])


class _KQuantMinFormat(BlockFormat):
    """Q4_K and Q5_K: 8 groups of 32 with a 6-bit scale and min each, against fp16 d/dmin."""

    nmax: ClassVar[int]
    rmin: ClassVar[float]
    nstep: ClassVar[int]

    @classmethod
    def _codes(cls, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """quantize_row_q{4,5}_K_ref up to the codes: returns (header bytes (N, 16), L (N, 256))."""
        nb = x.shape[0]
        g = np.ascontiguousarray(x.reshape(nb * 8, 32).T)  # (32, G) element-major
        with np.errstate(all="ignore"):
            av_x = np.sqrt(seqsum(g * g) / F32(32))
            weights = av_x + np.abs(g)
        L, scales, mins = _make_qkx2_quants(g, weights, cls.nmax, cls.rmin, 0.1, cls.nstep)
        scales = scales.reshape(nb, 8)
        mins = mins.reshape(nb, 8)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        with np.errstate(all="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
            ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)
            lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
            d_bytes = _half_bytes(max_scale / F32(63))
            dmin_bytes = _half_bytes(max_min / F32(63))
            header = np.concatenate([d_bytes, dmin_bytes, _pack_scale_min_k4(ls, lm)], axis=1)
            sc, mn = _unpack_scale_min_k4(header[:, 4:16])
            d = _half(header, 0)[:, None] * sc.astype(F32)  # (nb, 8)
            dm = _half(header, 2)[:, None] * mn.astype(F32)
            xg = x.reshape(nb, 8, 32)
            requant = nearest_int_clip_f32((xg + dm[..., None]) / d[..., None], 0, cls.nmax)
        L = L.T.reshape(nb, 8, 32)
        L = np.where((d != 0)[..., None], requant, L).reshape(nb, 256)
        return header, L.astype(np.int32)

    @classmethod
    def quantize_blocks(cls, x):
        return _quantize_chunked(x, cls.qt.nbytes, cls._quantize_run)

    @classmethod
    def _scales(cls, raw: np.ndarray) -> dict[str, np.ndarray]:
        sc, mn = _unpack_scale_min_k4(raw[:, 4:16])
        return {"d": _half(raw, 0), "dmin": _half(raw, 2), "sc": sc, "mn": mn}

    @classmethod
    def _codes_into(cls, raw: np.ndarray, q: np.ndarray) -> None:
        """The unsigned codes of `raw`'s blocks into uint8 q (N, 8, 32), group-major."""
        raise NotImplementedError

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d1, m1):
            q = np.empty((raw.shape[0], 8, 32), np.uint8)
            cls._codes_into(raw, q)
            out = out.reshape(q.shape)
            out[...] = q
            np.multiply(out, d1, out=out)  # y = d1 * q - m1, two roundings
            np.subtract(out, m1, out=out)

        sc, mn = _unpack_scale_min_k4(raw[:, 4:16])
        with np.errstate(all="ignore"):
            d1 = _half(raw, 0)[:, None] * sc.astype(F32)  # d1 = d * sc, m1 = min * m
            m1 = _half(raw, 2)[:, None] * mn.astype(F32)
        return _dequantize_chunked(raw, 256, kernel, d1[..., None], m1[..., None])


@register
class Q4_K(_KQuantMinFormat):
    """half d, dmin; u8 scales[12]; u8 qs[128]; value = d*sc*q - dmin*m per 32-group."""

    name = "Q4_K"
    nmax, rmin, nstep = 15, -1.0, 20

    @classmethod
    def _quantize_run(cls, x):
        header, L = cls._codes(x)
        return np.concatenate([header, _nibble_planes(L)], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {**cls._scales(raw), "qs": _from_nibble_planes(raw[:, 16:144]).astype(np.uint8)}

    @classmethod
    def _codes_into(cls, raw, q):
        _nibble_plane_codes_into(raw[:, 16:144], q)


@register
class Q5_K(_KQuantMinFormat):
    """half d, dmin; scales[12]; qh[32]; qs[128]; 5-bit codes, qh bit 2c/2c+1 for chunk c."""

    name = "Q5_K"
    nmax, rmin, nstep = 31, -0.5, 15

    @classmethod
    def _quantize_run(cls, x):
        header, L = cls._codes(x)
        hi = (L >> 4).reshape(-1, 4, 2, 32)  # (N, chunk, half, l) -> qh[l] bit 2*chunk+half
        qh = np.zeros((L.shape[0], 32), np.int32)
        for c in range(4):
            qh |= (hi[:, c, 0] << (2 * c)) | (hi[:, c, 1] << (2 * c + 1))
        return np.concatenate([header, qh.astype(np.uint8), _nibble_planes(L)], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        low = _from_nibble_planes(raw[:, 48:176])
        qh = raw[:, 16:48].astype(np.int32)
        hi = np.stack([(qh >> k) & 1 for k in range(8)], axis=1)  # (N, 8 bits, 32)
        return {**cls._scales(raw), "qs": (low | (hi.reshape(-1, 256) << 4)).astype(np.uint8)}

    @classmethod
    def _codes_into(cls, raw, q):
        """Group g = 2c+h holds `(ql[l] & 0xF or >> 4) + (qh[l] & (1 << g) ? 16 : 0)`."""
        _nibble_plane_codes_into(raw[:, 48:176], q)
        # qh as 4 little-endian 64-bit words: (word >> g) & 0x0101... has, in byte l, bit g of
        # qh[l]; shifted left by 4 it is that byte's +16 for group g.
        qh = np.ascontiguousarray(raw[:, 16:48]).view("<u8")[:, None, :]
        hi = np.right_shift(qh, np.arange(8, dtype=np.uint64)[:, None])
        np.bitwise_and(hi, np.uint64(0x0101010101010101), out=hi)
        np.left_shift(hi, np.uint64(4), out=hi)
        np.bitwise_or(q, hi.view(np.uint8), out=q)


def _largest_magnitude(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of group scales, the signed scale of largest magnitude (the first on ties;
    0 when all are 0 or NaN: the C loop's `if (abs > max)` never takes a NaN) and that
    magnitude. Q3_K and Q6_K pick their super-block scale this way."""
    a = np.abs(scales)
    a = np.where(a > 0, a, F32(0))
    max_abs = a.max(axis=1)
    pick = np.argmax(a, axis=1)[:, None]
    return np.where(max_abs > 0, np.take_along_axis(scales, pick, axis=1)[:, 0], F32(0)), max_abs


@register
class Q6_K(BlockFormat):
    """u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; value = d*sc*(q-32) per 16-group."""

    name = "Q6_K"

    @classmethod
    def quantize_blocks(cls, x):
        return _quantize_chunked(x, cls.qt.nbytes, cls._quantize_run)

    @classmethod
    def _quantize_run(cls, x):
        nb = x.shape[0]
        g = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # (16, G) element-major
        L, scales = _make_qx_quants(g, 32)
        scales = scales.reshape(nb, 16)
        max_scale, max_abs = _largest_magnitude(scales)
        empty = max_abs < GROUP_MAX_EPS
        with np.errstate(all="ignore"):
            iscale = F32(-128) / max_scale
            d_bytes = _half_bytes(F32(1) / iscale)
            sc = np.minimum(127, nearest_int(iscale[:, None] * scales)) & 0xFF
            sc8 = sc.astype(np.uint8).view(np.int8)
            d = _half(d_bytes, 0)[:, None] * sc8.astype(F32)
            xg = x.reshape(nb, 16, 16)
            requant = nearest_int_clip_f32(xg / d[..., None], -32, 31).astype(np.int32) + 32
        L = L.T.reshape(nb, 16, 16)
        L = np.where((d != 0)[..., None], requant, L).reshape(nb, 256)
        c = L.reshape(nb, 2, 4, 32)  # (N, half of 128, quarter, l)
        ql = np.concatenate(
            [(c[:, :, 0] & 0xF) | ((c[:, :, 2] & 0xF) << 4),
             (c[:, :, 1] & 0xF) | ((c[:, :, 3] & 0xF) << 4)],
            axis=2,
        ).reshape(nb, 128)
        qh = sum(((c[:, :, k] >> 4) & 3) << (2 * k) for k in range(4)).reshape(nb, 64)
        out = np.concatenate([ql, qh, sc, np.zeros((nb, 2), np.int32)], axis=1).astype(np.uint8)
        out[:, 208:210] = d_bytes
        out[empty] = 0
        return out

    @classmethod
    def unpack_blocks(cls, raw):
        nb = raw.shape[0]
        ql = raw[:, 0:128].reshape(nb, 2, 64).astype(np.int32)
        qh = raw[:, 128:192].reshape(nb, 2, 1, 32).astype(np.int32)
        low = np.stack([ql[:, :, :32] & 0xF, ql[:, :, 32:] & 0xF, ql[:, :, :32] >> 4,
                        ql[:, :, 32:] >> 4], axis=2)  # (N, half, quarter, l)
        high = (qh >> (2 * np.arange(4)[None, None, :, None])) & 3
        q = (low | (high << 4)).reshape(nb, 256) - 32
        return {"d": _half(raw, 208), "sc": raw[:, 192:208].view(np.int8), "qs": q.astype(np.int8)}

    @classmethod
    def dequantize_blocks(cls, raw):
        shifts = np.array([0, 2, 4, 6], np.uint8)[:, None]

        def kernel(raw, out, ds):
            nb = raw.shape[0]
            q = np.empty((nb, 2, 4, 32), np.uint8)  # (half of 128, quarter, l)
            ql = raw[:, 0:128].reshape(nb, 2, 2, 32)  # ql[l] and ql[l + 32] of each half
            _nibbles_into(ql, q[:, :, 0:2], q[:, :, 2:4])
            hi = np.right_shift(raw[:, 128:192].reshape(nb, 2, 1, 32), shifts)  # qh[l] >> 2k
            np.bitwise_and(hi, 3, out=hi)
            np.left_shift(hi, 4, out=hi)
            np.bitwise_or(q, hi, out=q)
            np.subtract(q, 32, out=q)  # the int8 view is q1..q4 - 32
            out = out.reshape(nb, 16, 16)
            out[...] = q.view(np.int8).reshape(nb, 16, 16)
            np.multiply(out, ds, out=out)  # y = (d * sc[is]) * q

        with np.errstate(all="ignore"):
            ds = _half(raw, 208)[:, None] * raw[:, 192:208].view(np.int8).astype(F32)
        return _dequantize_chunked(raw, 256, kernel, ds[..., None])


# ---------------------------------------------------------------------------------------
# Formats SKaiNET's GGUF layer reads (dequantized on load; not packed for its kernels)


def _lroundf_plus_one(v: np.ndarray) -> np.ndarray:
    """`int xi = lroundf(v) + 1;` as x86-64 glibc computes it: ties away from zero; a NaN,
    Inf or out-of-range v gives LONG_MIN (cvttss2si), and the int keeps the low 32 bits."""
    v = np.asarray(v, dtype=F32)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (np.abs(v) < F32(2.0**63))
        r = np.where(ok, roundf(np.where(ok, v, F32(0))), F32(0)).astype(np.int64)
    r = np.where(ok, r, np.int64(-(2**63)))
    return ((r + 1) & 0xFFFFFFFF).astype(np.uint32).view(np.int32).astype(np.int64)


def cast_i8_of_int(v: np.ndarray) -> np.ndarray:
    """`(int8_t)int`: the low byte, signed."""
    return (np.asarray(v, dtype=np.int64) & 0xFF).astype(np.uint8).view(np.int8).astype(np.int32)


def _first_absmax(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `if (ax > amax) { amax = ax; max = x[i]; }` from amax = max = 0 along `axis`:
    (amax, the first value of that magnitude, or +0.0 when amax is 0)."""
    a = np.abs(x)
    amax = a.max(axis=axis)
    picked = np.take_along_axis(x, np.expand_dims(np.argmax(a, axis=axis), axis), axis=axis)
    return amax, np.where(amax > 0, picked.squeeze(axis), F32(0)).astype(F32)


def _pack_crumbs(L: np.ndarray) -> np.ndarray:
    """(N, 256) 2-bit codes -> 64 bytes: per 128-chunk c, byte 32c+m holds elements
    128c + 32k + m in bits 2k (the qs of Q2_K, Q3_K and TQ2_0)."""
    c = (L.reshape(-1, 2, 4, 32) & 3).astype(np.int32)
    return (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(
        -1, 64).astype(np.uint8)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Inverse of `_pack_crumbs`: (N, 64) bytes -> uint8 (N, 256) 2-bit codes."""
    q = qs.reshape(-1, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]
    return ((q >> shifts) & 3).reshape(-1, 256)


@register
class Q4_1(BlockFormat):
    """half d; half m; u8 qs[16]; value = q*d + m. d = (max-min)/15, m = min,
    q = MIN(15, (int8)((x-min)/d + 0.5))."""

    name = "Q4_1"

    @classmethod
    def quantize_blocks(cls, x):
        lo = first_extreme(x, axis=1, largest=False)
        hi = first_extreme(x, axis=1, largest=True)
        with np.errstate(all="ignore"):
            d = (hi - lo) / F32(15)
            q = np.minimum(15, cast_i8((x - lo[:, None]) * _inverse(d)[:, None] + F32(0.5))) & 0xFF
        qs = ((q[:, :16] | (q[:, 16:] << 4)) & 0xFF).astype(np.uint8)
        return np.concatenate([_half_bytes(d), _half_bytes(lo), qs], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "m": _half(raw, 2),
                "qs": _codes32(raw, 4, None).astype(np.uint8)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d, m):
            q = np.empty(out.shape, np.uint8)
            _nibbles_into(raw[:, 4:20], q[:, :16], q[:, 16:])
            out[...] = q
            np.multiply(out, d, out=out)  # y = x0*d + m, two roundings
            np.add(out, m, out=out)

        return _dequantize_chunked(raw, 32, kernel, _half(raw, 0)[:, None], _half(raw, 2)[:, None])


@register
class Q8_1(BlockFormat):
    """half d; half s; i8 qs[32]; value = q*d. d = amax/127, q = roundf(x/d), s = sum(q)*d.
    ggml has no dequantize_row_q8_1 (it is an activation type): dequantize applies the Q8_0
    rule to d and qs, and s is not read."""

    name = "Q8_1"

    @classmethod
    def quantize_blocks(cls, x):
        d = np.abs(x).max(axis=1) / F32(127)
        with np.errstate(all="ignore"):
            q = cast_i8(roundf(x * _inverse(d)[:, None]))
            s = q.sum(axis=1).astype(F32) * d  # (float)sum * d; |sum| <= 4096 is exact
        return np.concatenate([_half_bytes(d), _half_bytes(s), q.astype(np.int8).view(np.uint8)],
                              axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "s": _half(raw, 2), "qs": raw[:, 4:36].view(np.int8)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            out[...] = raw[:, 4:36].view(np.int8)
            np.multiply(out, d, out=out)

        return _dequantize_chunked(raw, 32, kernel, _half(raw, 0)[:, None])


@register
class Q8_K(BlockFormat):
    """float d; i8 qs[256]; i16 bsums[16]; value = d*q. iscale = -127/max (max: the first
    value of largest magnitude), q = MIN(127, nearest_int(iscale*x)), d = 1/iscale.
    An all-zero block: ggml writes d = 0 and qs = 0 and leaves bsums unwritten; the oracle
    writes bsums = 0 (what ggml leaves in a zeroed buffer)."""

    name = "Q8_K"

    @classmethod
    def quantize_blocks(cls, x):
        amax, mx = _first_absmax(x, axis=1)
        zero = amax == 0
        with np.errstate(all="ignore"):
            iscale = F32(-127) / np.where(zero, F32(1), mx)
            q = cast_i8_of_int(np.minimum(127, nearest_int(iscale[:, None] * x)))
            d = np.where(zero, F32(0), F32(1) / iscale).astype(F32)
        q = np.where(zero[:, None], 0, q)
        bsums = q.reshape(-1, 16, 16).sum(axis=2).astype("<i2")
        return np.concatenate([d.astype("<f4").view(np.uint8).reshape(-1, 4),
                               q.astype(np.int8).view(np.uint8),
                               bsums.view(np.uint8).reshape(-1, 32)], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": raw[:, 0:4].copy().view("<f4")[:, 0].astype(F32),
                "qs": raw[:, 4:260].view(np.int8),
                "bsums": raw[:, 260:292].copy().view("<i2").astype(np.int16)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            out[...] = raw[:, 4:260].view(np.int8)
            np.multiply(d, out, out=out)  # y = d * qs[j]

        return _dequantize_chunked(raw, 256, kernel, raw[:, 0:4].copy().view("<f4").astype(F32))


@register
class Q2_K(BlockFormat):
    """u8 scales[16]; u8 qs[64]; half d, dmin; value = d*(sc & 15)*q - dmin*(sc >> 4) per
    16-group, q 2-bit (four 32-element planes per 128-chunk)."""

    name = "Q2_K"

    @classmethod
    def quantize_blocks(cls, x):
        return _quantize_chunked(x, cls.qt.nbytes, cls._quantize_run)

    @classmethod
    def _quantize_run(cls, x):
        nb = x.shape[0]
        g = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # (16, G) element-major
        L, scales, mins = _make_qkx2_quants(g, np.abs(g), 3, -0.5, 0.1, 15, use_mad=True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        with np.errstate(all="ignore"):
            has_scale, has_min = max_scale > 0, max_min > 0
            iscale = F32(15) / np.where(has_scale, max_scale, F32(1))
            sc = np.where(has_scale[:, None], nearest_int(iscale[:, None] * scales) & 0xFF, 0)
            imin = F32(15) / np.where(has_min, max_min, F32(1))
            sc |= np.where(has_min[:, None], (nearest_int(imin[:, None] * mins) << 4) & 0xFF, 0)
            d_bytes = _half_bytes(np.where(has_scale, max_scale / F32(15), F32(0)))
            dmin_bytes = _half_bytes(np.where(has_min, max_min / F32(15), F32(0)))
            d = _half(d_bytes, 0)[:, None] * (sc & 0xF).astype(F32)  # (nb, 16)
            dm = _half(dmin_bytes, 0)[:, None] * (sc >> 4).astype(F32)
            xg = x.reshape(nb, 16, 16)
            requant = nearest_int_clip_f32((xg + dm[..., None]) / d[..., None], 0, 3)
        L = L.T.reshape(nb, 16, 16)
        L = np.where((d != 0)[..., None], requant, L).reshape(nb, 256).astype(np.int32)
        return np.concatenate([sc.astype(np.uint8), _pack_crumbs(L), d_bytes, dmin_bytes], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        sc = raw[:, 0:16]
        return {"d": _half(raw, 80), "dmin": _half(raw, 82), "sc": sc & 0xF, "mn": sc >> 4,
                "qs": _crumbs(raw[:, 16:80])}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, dl, ml):
            out = out.reshape(-1, 16, 16)
            out[...] = _crumbs(raw[:, 16:80]).reshape(out.shape)
            np.multiply(dl, out, out=out)  # y = dl * q - ml, two roundings
            np.subtract(out, ml, out=out)

        sc = raw[:, 0:16]
        with np.errstate(all="ignore"):
            dl = _half(raw, 80)[:, None] * (sc & 0xF).astype(F32)
            ml = _half(raw, 82)[:, None] * (sc >> 4).astype(F32)
        return _dequantize_chunked(raw, 256, kernel, dl[..., None], ml[..., None])


def _make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_q3_quants(n, nmax, x, L, do_rmse=true) for every group at once.
    x: float32 (n, G) element-major. Returns (L int (n, G) in 0..2*nmax-1, scale (G,)).

    The C loop revisits element after element, accepting a new code when it improves
    sumlx^2/suml2; each visit is one vector step across all groups. A pass that changes
    nothing leaves the state as it was, so running the remaining passes (where C breaks)
    changes nothing either."""
    x = np.ascontiguousarray(x, dtype=F32)
    amax, mx = _first_absmax(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(all="ignore"):
        iscale = F32(-nmax) / np.where(zero, F32(1), mx)
        L = nearest_int_clip_f32(iscale * x, -nmax, nmax - 1)
        w = x * x
        wx = w * x
        sumlx = seqsum(wx * L)
        suml2 = seqsum((w * L) * L)
        for _ in range(5):
            for i in range(x.shape[0]):
                slx = sumlx - wx[i] * L[i]
                sl2 = suml2 - (w[i] * L[i]) * L[i]
                new_l = nearest_int_clip_f32((x[i] * sl2) / slx, -nmax, nmax - 1)
                slx_new = slx + wx[i] * new_l
                sl2_new = sl2 + (w[i] * new_l) * new_l
                take = ((slx > 0) & (new_l != L[i]) & (sl2_new > 0)
                        & ((slx_new * slx_new) * suml2 > (sumlx * sumlx) * sl2_new))
                L[i] = np.where(take, new_l, L[i])
                sumlx = np.where(take, slx_new, sumlx)
                suml2 = np.where(take, sl2_new, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    L = np.where(zero, 0, L.astype(np.int32) + nmax)
    return L, np.where(zero, F32(0), scale).astype(F32)


def _q3_k_scales(sb: np.ndarray) -> np.ndarray:
    """The 16 six-bit scales (unsigned, 0..63) of Q3_K's 12 packed scale bytes: group j has
    its low nibble in byte j (j < 8) or the high nibble of byte j-8, its top two bits in
    byte 8 + j%4 at bit 2*(j/4)."""
    q = sb.astype(np.int32)
    low = np.concatenate([q[:, 0:8] & 0xF, q[:, 0:8] >> 4], axis=1)
    high = np.concatenate([(q[:, 8:12] >> (2 * k)) & 3 for k in range(4)], axis=1)
    return low | (high << 4)


@register
class Q3_K(BlockFormat):
    """u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d; value = d*(sc-32)*(q-4) per 16-group,
    q = 2 low bits from qs (as Q2_K) plus a high bit: element e is bit e/32 of hmask[e%32]."""

    name = "Q3_K"

    @classmethod
    def quantize_blocks(cls, x):
        return _quantize_chunked(x, cls.qt.nbytes, cls._quantize_run)

    @classmethod
    def _quantize_run(cls, x):
        nb = x.shape[0]
        g = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # (16, G) element-major
        L, scales = _make_q3_quants(g, 4)
        scales = scales.reshape(nb, 16)
        max_scale, _ = _largest_magnitude(scales)
        has = max_scale != 0
        with np.errstate(all="ignore"):
            iscale = F32(-32) / np.where(has, max_scale, F32(1))
            ls = np.clip(cast_i8_of_int(nearest_int(iscale[:, None] * scales)), -32, 31) + 32
            ls = np.where(has[:, None], ls, 0)
            d_bytes = _half_bytes(np.where(has, F32(1) / iscale, F32(0)))
        packed = np.zeros((nb, 12), np.int32)
        packed[:, 0:8] = (ls[:, 0:8] & 0xF) | ((ls[:, 8:16] & 0xF) << 4)
        for k in range(4):
            packed[:, 8:12] |= (ls[:, 4 * k : 4 * k + 4] >> 4) << (2 * k)
        packed = np.where(has[:, None], packed, 0).astype(np.uint8)
        with np.errstate(all="ignore"):
            d = _half(d_bytes, 0)[:, None] * (_q3_k_scales(packed) - 32).astype(F32)  # (nb, 16)
            requant = nearest_int_clip_f32(x.reshape(nb, 16, 16) / d[..., None], -4, 3) + 4
        L = L.T.reshape(nb, 16, 16)
        L = np.where((d != 0)[..., None], requant, L).reshape(nb, 256).astype(np.int32)
        high = L > 3
        hmask = _pack_qh(high.reshape(nb, 8, 32).transpose(0, 2, 1).reshape(nb * 32, 8))
        return np.concatenate([hmask.reshape(nb, 32), _pack_crumbs(L - 4 * high), packed,
                               d_bytes], axis=1)

    @classmethod
    def _codes(cls, raw: np.ndarray) -> np.ndarray:
        """int8 (N, 256): the signed codes q-4."""
        hm = np.unpackbits(raw[:, 0:32].reshape(-1, 32, 1), axis=2, bitorder="little")
        high = hm.transpose(0, 2, 1).reshape(-1, 256)  # element e: bit e//32 of hmask[e%32]
        return (_crumbs(raw[:, 32:96]).astype(np.int8) - np.int8(4) * (1 - high).astype(np.int8))

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 108), "sc": (_q3_k_scales(raw[:, 96:108]) - 32).astype(np.int8),
                "qs": cls._codes(raw)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, dl):
            out = out.reshape(-1, 16, 16)
            out[...] = cls._codes(raw).reshape(out.shape)
            np.multiply(dl, out, out=out)  # y = dl * (q - 4)

        with np.errstate(all="ignore"):
            dl = _half(raw, 108)[:, None] * (_q3_k_scales(raw[:, 96:108]) - 32).astype(F32)
        return _dequantize_chunked(raw, 256, kernel, dl[..., None])


#: ggml's kvalues_iq4nl: the 16 levels of IQ4_NL and IQ4_XS.
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                      np.int8)
_IQ4_F32 = IQ4_VALUES.astype(F32)
#: The code of the level nearest 0 (ggml's best_index_int8 of 0.0).
IQ4_ZERO_CODE = 8


def _best_index_iq4(v: np.ndarray) -> np.ndarray:
    """ggml best_index_int8(16, kvalues_iq4nl, v) elementwise: the nearer of the two levels
    around v (the upper one on a tie, as `x - val[mu-1] < val[mu] - x` decides); NaN -> 15."""
    v = np.asarray(v, dtype=F32)
    mu = np.clip(np.searchsorted(_IQ4_F32, v, side="right"), 1, 15)
    with np.errstate(invalid="ignore"):
        lower = (v - _IQ4_F32[mu - 1]) < (_IQ4_F32[mu] - v)
        idx = np.where(lower, mu - 1, mu)
        idx = np.where(v <= _IQ4_F32[0], 0, np.where(v >= _IQ4_F32[15], 15, idx))
    return np.where(np.isnan(v), 15, idx)


def _iq4_sums(x: np.ndarray, w: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sumqx += w*q*x and sumq2 += w*q*q over axis 0 (element-major), q = kvalues[L]."""
    q = _IQ4_F32[L]
    wq = w * q
    return seqsum(wq * x), seqsum(wq * q)


def _iq4_group_scales(x: np.ndarray, ntry: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-group search of ggml quantize_row_iq4_nl_impl without importance weights.
    x: float32 (32, G) element-major. Returns (scale d (G,), first-pass codes L (32, G),
    zero (G,): groups with amax < GROUP_MAX_EPS, whose d is 0 and whose L ggml leaves
    unwritten)."""
    amax, mx = _first_absmax(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    with np.errstate(all="ignore"):
        w = x * x
        d = (-mx if ntry > 0 else mx) / _IQ4_F32[0]
        L = _best_index_iq4((F32(1) / d) * x)
        sumqx, sumq2 = _iq4_sums(x, w, L)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0)).astype(F32)
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            iscale = F32(itry + int(IQ4_VALUES[0])) / mx
            sumqx, sumq2 = _iq4_sums(x, w, _best_index_iq4(iscale * x))
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, sumqx / sumq2, d)
            best = np.where(better, d * sumqx, best)
    return np.where(zero, F32(0), d).astype(F32), L, zero


def _iq4_pack(L: np.ndarray) -> np.ndarray:
    """(N, 32*k) codes -> bytes: per 32-group, byte j holds element j (low nibble) and
    element j+16 (high nibble)."""
    c = L.reshape(-1, 2, 16).astype(np.int32)
    return (c[:, 0] | (c[:, 1] << 4)).astype(np.uint8).reshape(L.shape[0], -1)


def _iq4_codes(qs: np.ndarray) -> np.ndarray:
    """Inverse of `_iq4_pack`: bytes (N, 16*k) -> uint8 codes (N, 32*k)."""
    q = qs.reshape(qs.shape[0], -1, 1, 16)
    return np.concatenate([q & 0xF, q >> 4], axis=2).reshape(qs.shape[0], -1)


@register
class IQ4_NL(BlockFormat):
    """half d; u8 qs[16]; value = d * kvalues_iq4nl[q]. quantize_row_iq4_nl_ref (ntry = -1):
    d = max/-127, codes by nearest level, then d = sum(w*q*x)/sum(w*q*q), w = x*x.
    A block with amax < 1e-15 gets d = 0 and, where ggml's reference leaves the stale codes
    of its stack buffer, the code of the level nearest 0 (what ggml's chunk quantizer writes)."""

    name = "IQ4_NL"

    @classmethod
    def quantize_blocks(cls, x):
        return _quantize_chunked(x, cls.qt.nbytes, cls._quantize_run)

    @classmethod
    def _quantize_run(cls, x):
        d, L, zero = _iq4_group_scales(np.ascontiguousarray(x.T), ntry=-1)
        L = np.where(zero[None, :], IQ4_ZERO_CODE, L).T
        return np.concatenate([_half_bytes(d), _iq4_pack(L)], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "qs": _iq4_codes(raw[:, 2:18])}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            out[...] = _IQ4_F32[_iq4_codes(raw[:, 2:18])]
            np.multiply(d, out, out=out)  # y = d * kvalues[q]

        return _dequantize_chunked(raw, 32, kernel, _half(raw, 0)[:, None])


def _iq4_xs_scales(raw: np.ndarray) -> np.ndarray:
    """The eight 6-bit group scales ls (N, 8) of IQ4_XS blocks (value d * (ls - 32))."""
    sl = raw[:, 4:8].astype(np.int32)
    low = np.stack([sl & 0xF, sl >> 4], axis=2).reshape(-1, 8)
    sh = raw[:, 2:4].copy().view("<u2").astype(np.int32)  # (N, 1)
    return low | (((sh >> (2 * np.arange(8))) & 3) << 4)


@register
class IQ4_XS(BlockFormat):
    """half d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; value = d*(ls-32)*kvalues[q] per
    32-group. quantize_row_iq4_xs_ref (ntry = 7, as ggml_quantize_chunk)."""

    name = "IQ4_XS"

    @classmethod
    def quantize_blocks(cls, x):
        return _quantize_chunked(x, cls.qt.nbytes, cls._quantize_run)

    @classmethod
    def _quantize_run(cls, x):
        nb = x.shape[0]
        scales = _iq4_group_scales(np.ascontiguousarray(x.reshape(nb * 8, 32).T), ntry=7)[0]
        scales = scales.reshape(nb, 8)
        a = np.abs(scales)
        a = np.where(a > 0, a, F32(0))
        pick = np.argmax(a, axis=1)[:, None]
        max_scale = np.where(a.max(axis=1) > 0, np.take_along_axis(scales, pick, axis=1)[:, 0],
                             F32(0))
        with np.errstate(all="ignore"):
            d = -max_scale / F32(32)
            d_bytes = _half_bytes(d)
            ls = nearest_int_clip_f32(_inverse(d)[:, None] * scales, -32, 31)  # (nb, 8)
            dl = d[:, None] * ls
            L = _best_index_iq4(_inverse(dl)[..., None] * x.reshape(nb, 8, 32))
        ls = ls.astype(np.int32) + 32
        scales_l = (ls[:, 0::2] & 0xF) | ((ls[:, 1::2] & 0xF) << 4)
        scales_h = ((ls >> 4) << (2 * np.arange(8))).sum(axis=1).astype("<u2")
        return np.concatenate([d_bytes, scales_h.view(np.uint8).reshape(nb, 2),
                               scales_l.astype(np.uint8), _iq4_pack(L.reshape(nb, 256))], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 0), "sc": (_iq4_xs_scales(raw) - 32).astype(np.int8),
                "qs": _iq4_codes(raw[:, 8:136])}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, dl):
            out = out.reshape(-1, 8, 32)
            out[...] = _IQ4_F32[_iq4_codes(raw[:, 8:136])].reshape(out.shape)
            np.multiply(dl, out, out=out)  # y = dl * kvalues[q]

        with np.errstate(all="ignore"):
            dl = _half(raw, 0)[:, None] * (_iq4_xs_scales(raw) - 32).astype(F32)
        return _dequantize_chunked(raw, 256, kernel, dl[..., None])


def _ternary_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0/TQ2_0: d = amax of the block and its inverse `d ? 1/d : 0`, as float32."""
    d = np.abs(x).max(axis=1).astype(F32)
    return d, _inverse(d)


#: Element order of TQ1_0's 48 + 4 base-3 bytes: TQ1_0_TRITS[b, n] is the element whose trit
#: is the n-th most significant digit of byte b (bytes 0..31: 32n + b; 32..47: 160 + 16n +
#: b-32; the qh bytes 48..51: 240 + 4n + b-48, whose fifth digit is always 0).
TQ1_0_TRITS = np.array(
    [[32 * n + m for n in range(5)] for m in range(32)]
    + [[160 + 16 * n + m for n in range(5)] for m in range(16)]
    + [[240 + 4 * n + j for n in range(4)] + [-1] for j in range(4)])
_POW3 = np.array([1, 3, 9, 27, 81], np.int32)


@register
class TQ1_0(BlockFormat):
    """u8 qs[48]; u8 qh[4]; half d; value = (t-1)*d, t in {0,1,2}: five base-3 digits per byte
    (four in qh), most significant first, the byte scaled by 256/243 rounding up; digit n is
    ((b * 3^n mod 256) * 3) >> 8. quantize: d = amax, t = lroundf(x/d) + 1."""

    name = "TQ1_0"

    @classmethod
    def quantize_blocks(cls, x):
        d, inv = _ternary_scale(x)
        with np.errstate(all="ignore"):
            t = _lroundf_plus_one(x * inv[:, None])  # (N, 256)
        idx = np.where(TQ1_0_TRITS < 0, 0, TQ1_0_TRITS)
        digits = np.where(TQ1_0_TRITS < 0, 0, t[:, idx])  # (N, 52, 5), qh's last digit 0
        q = np.zeros(digits.shape[:2], np.int64)
        for n in range(5):  # uint8 q: q = q*3 + xi (the qh bytes: q *= 3 at the end)
            q = (q * 3 + digits[:, :, n]) & 0xFF
        q = ((q * 256 + 242) // 243) & 0xFF
        return np.concatenate([q.astype(np.uint8), _half_bytes(d)], axis=1)

    @classmethod
    def _trits(cls, raw: np.ndarray) -> np.ndarray:
        """int8 (N, 256): the ternary codes t-1 in element order."""
        b = raw[:, 0:52].astype(np.int32)[:, :, None]
        digits = ((((b * _POW3) & 0xFF) * 3) >> 8) - 1  # (N, 52, 5)
        out = np.empty((raw.shape[0], 256), np.int8)
        keep = TQ1_0_TRITS >= 0
        out[:, TQ1_0_TRITS[keep]] = digits[:, keep]
        return out

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 52), "qs": cls._trits(raw)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            out[...] = cls._trits(raw)
            np.multiply(out, d, out=out)  # y = (float)(xi - 1) * d

        return _dequantize_chunked(raw, 256, kernel, _half(raw, 52)[:, None])


@register
class TQ2_0(BlockFormat):
    """u8 qs[64]; half d; value = (t-1)*d with t the 2-bit code: per 128-chunk c, byte 32c+m
    holds elements 128c + 32l + m in bits 2l. quantize: d = amax, t = (lroundf(x/d)+1) & 3."""

    name = "TQ2_0"

    @classmethod
    def quantize_blocks(cls, x):
        d, inv = _ternary_scale(x)
        with np.errstate(all="ignore"):
            t = _lroundf_plus_one(x * inv[:, None]) & 3
        return np.concatenate([_pack_crumbs(t), _half_bytes(d)], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {"d": _half(raw, 64), "qs": _crumbs(raw[:, 0:64]).astype(np.int8) - np.int8(1)}

    @classmethod
    def dequantize_blocks(cls, raw):
        def kernel(raw, out, d):
            out[...] = _crumbs(raw[:, 0:64]).astype(np.int8) - np.int8(1)
            np.multiply(out, d, out=out)  # y = (float)(q - 1) * d

        return _dequantize_chunked(raw, 256, kernel, _half(raw, 64)[:, None])


# ---------------------------------------------------------------------------------------
# public entry points


def _format(name: str) -> type[BlockFormat]:
    return FORMATS[qtype(name).name]


#: Peak working memory of `quantize` per input element, in multiples of its float32 size,
#: the output included (bench/bench_quantize_memory.py measures it with tracemalloc: the
#: 32-element formats run vectorized over every block at once, about 5.6x, Q8_K 3.5x and
#: TQ1_0/TQ2_0 6.5x; the K-quants, IQ4_NL and IQ4_XS run in chunks of QUANT_CHUNK_BLOCKS,
#: under 1x; F16's rounding takes 7.75x).
WORK_PER_ELEMENT_F32 = {"F32": 2, "F16": 8, "BF16": 4, "Q4_0": 6, "Q5_0": 6, "Q5_1": 6,
                        "Q8_0": 6, "Q4_K": 1, "Q5_K": 1, "Q6_K": 1,
                        "Q4_1": 6, "Q8_1": 6, "Q2_K": 1, "Q3_K": 1, "Q8_K": 4, "IQ4_NL": 1,
                        "IQ4_XS": 1, "TQ1_0": 7, "TQ2_0": 7}
_SMALL_WORK_BYTES = 64 << 20


def available_memory() -> int | None:
    """Bytes of physical memory free now, or None where the platform does not say: the
    portable estimate (POSIX sysconf) `quantize` checks against unless given a budget. It
    leaves out memory the system could reclaim (Linux's page cache); a caller who knows
    better (the harness reads MemAvailable: harness.procmem) passes `memory_budget`."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _check_memory(qt: QType, x: np.ndarray, budget: int | None) -> None:
    """Refuse up front an input whose quantization cannot fit in memory (rather than a
    MemoryError, or the system swapping, deep inside)."""
    n = int(x.size)
    need = n * 4 * WORK_PER_ELEMENT_F32[qt.name]
    if x.dtype != F32:
        need += n * 4  # the float32 copy of the input
    if need < _SMALL_WORK_BYTES:  # not worth asking the system on every small call
        return
    avail = available_memory() if budget is None else budget
    if avail is not None and need > avail:
        raise OracleError(f"{qt.name}: quantize of {n} elements (shape {x.shape}) needs about "
                          f"{need / 2**30:.1f} GiB of working memory, {avail / 2**30:.1f} GiB "
                          "is available: quantize it in parts along the leading axes")


def quantize(qtype_name: str, x: np.ndarray, memory_budget: int | None = None) -> np.ndarray:
    """float32 (..., n) -> packed uint8 (..., n/block*nbytes), byte-identical to ggml's
    quantize_row_<type>_ref (the no-importance-matrix path). Non-finite input is refused,
    and so is an input whose working memory exceeds `memory_budget` bytes (default: the
    free physical memory, `available_memory`)."""
    fmt = _format(qtype_name)
    qt = fmt.qt
    x = np.asarray(x)
    if x.ndim == 0:
        raise OracleError(f"{qt.name}: quantize needs an array of shape (..., n), got a scalar")
    if not np.issubdtype(x.dtype, np.floating):
        raise OracleError(f"{qt.name}: quantize needs float input, got dtype {x.dtype}")
    _check_memory(qt, x, memory_budget)
    x = x.astype(F32, copy=False)
    nblk = qt.blocks_in(x.shape[-1])
    bad = ~np.isfinite(x)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise OracleError(
            f"{qt.name}: quantize input must be finite, found {x[where]} at index {where}"
        )
    blocks = np.ascontiguousarray(x).reshape(-1, qt.block)
    raw = fmt.quantize_blocks(blocks) if blocks.size else np.zeros((0, qt.nbytes), np.uint8)
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(x.shape[:-1] + (nblk * qt.nbytes,))


def _as_blocks(qt: QType, raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise OracleError(f"{qt.name}: packed data must be uint8 bytes, got dtype {raw.dtype}")
    if raw.ndim == 0 or raw.shape[-1] % qt.nbytes:
        got = "a scalar" if raw.ndim == 0 else f"{raw.shape[-1]} bytes"
        raise OracleError(
            f"{qt.name}: a row of packed data must be a multiple of {qt.nbytes} bytes "
            f"(one {qt.block}-element block), got {got}"
        )
    return np.ascontiguousarray(raw).reshape(-1, qt.nbytes)


def dequantize(qtype_name: str, raw: np.ndarray) -> np.ndarray:
    """packed uint8 (..., nblocks*nbytes) -> float32 (..., nblocks*block), bit-identical to
    ggml's dequantize_row_<type>. A block whose fp16 scale is Inf or NaN yields Inf/NaN
    values exactly as ggml's float arithmetic propagates them (no error is raised).
    Runs the compiled twin (oracle.native) when built; `dequantize_blocks` of each format
    class is the NumPy definition it is tested against bit for bit."""
    fmt = _format(qtype_name)
    qt = fmt.qt
    blocks = _as_blocks(qt, raw)
    from oracle import native  # here, so that `python3 -m oracle.native` imports it once

    out = native.dequantize_blocks(qt.name, blocks, qt.block) if blocks.size else None
    if out is None:  # no compiled twin (or disabled): the NumPy definition itself
        out = fmt.dequantize_blocks(blocks) if blocks.size else np.zeros((0, qt.block), F32)
    raw = np.asarray(raw)
    return out.astype(F32, copy=False).reshape(
        raw.shape[:-1] + (raw.shape[-1] // qt.nbytes * qt.block,)
    )


def unpack(qtype_name: str, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Integer codes and float32 scales of packed blocks, blocks on the leading axes.

    Q8_0: d (..., nb), qs int8 (..., nb, 32). Q4_0 / Q5_0: d, qs int8 = q-8 / q-16.
    Q5_1: d, m, qs uint8 0..31. Q4_K / Q5_K: d, dmin (..., nb), sc, mn uint8 (..., nb, 8),
    qs uint8 (..., nb, 256). Q6_K: d (..., nb), sc int8 (..., nb, 16), qs int8 = q-32.
    Q4_1: d, m, qs uint8 0..15. Q8_1: d, s, qs int8. Q8_K: d (float32), qs int8,
    bsums int16 (..., nb, 16). Q2_K: d, dmin, sc, mn uint8 (..., nb, 16), qs uint8 0..3.
    Q3_K: d, sc int8 = ls-32 (..., nb, 16), qs int8 = q-4. IQ4_NL: d, qs uint8 level index
    0..15. IQ4_XS: d, sc int8 = ls-32 (..., nb, 8), qs level index. TQ1_0 / TQ2_0: d,
    qs int8 in {-1, 0, 1}.
    """
    fmt = _format(qtype_name)
    qt = fmt.qt
    blocks = _as_blocks(qt, raw)
    lead = np.asarray(raw).shape[:-1] + (np.asarray(raw).shape[-1] // qt.nbytes,)
    parts = fmt.unpack_blocks(blocks)
    return {k: v.reshape(lead + v.shape[1:]) for k, v in parts.items()}
