"""Quantize, dequantize and unpack, bit-exact with ggml's C reference (ggml-quants.c).

One small class per format, registered by name. Each works on a whole stack of blocks at
once: `quantize_blocks` takes float32 (N, block) and returns uint8 (N, nbytes);
`unpack_blocks` splits packed bytes into integer codes and float32 scales;
`dequantize_blocks` rebuilds float32 values in the same float order as
`dequantize_row_*`. Where ggml's float order is sequential within a block (the K-quant
scale searches), the arrays are laid out element-major, (n, groups), so each step of the
C loop is one vector operation across every group of every block.
"""

from __future__ import annotations

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
    fp16_to_f32,
    nearest_int,
    roundf,
    seqsum,
)
from oracle.formats import OracleError, QType, qtype

GROUP_MAX_EPS = F32(1e-15)


def _half(raw: np.ndarray, off: int) -> np.ndarray:
    """The little-endian fp16 field at byte `off` of each block, as float32 (ggml decode)."""
    return fp16_to_f32(raw[:, off : off + 2].copy().view("<u2")[:, 0])


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
        u = cls.unpack_blocks(raw)
        with np.errstate(all="ignore"):
            return u["qs"].astype(F32) * u["d"][:, None]


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
        u = cls.unpack_blocks(raw)
        with np.errstate(all="ignore"):
            return u["qs"].astype(F32) * u["d"][:, None]


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
        u = cls.unpack_blocks(raw)
        with np.errstate(all="ignore"):
            return u["qs"].astype(F32) * u["d"][:, None]


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
        u = cls.unpack_blocks(raw)
        with np.errstate(all="ignore"):
            return u["qs"].astype(F32) * u["d"][:, None] + u["m"][:, None]


# ---------------------------------------------------------------------------------------
# K-quants (256-element super-blocks)


def _make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep):
    """ggml make_qkx2_quants for every group at once. x, w: float32 (n, G), element-major.

    Returns (L uint8 (n, G), scale (G,), the_min (G,)). Loop order and float32 rounding
    follow the C code step by step: an improving step replaces BOTH scale and min, and the
    later steps' iscale and codes use the new min.
    """
    lo = first_extreme(x, axis=0, largest=False)
    hi = first_extreme(x, axis=0, largest=True)
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi == lo
    nm = F32(nmax)
    with np.errstate(all="ignore"):
        sum_w = seqsum(w, start_zero=False)
        sum_x = seqsum(w * x, start_zero=False)
        iscale = nm / (hi - lo)
        scale = F32(1) / iscale
        L = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
        diff = scale * L.astype(F32) + lo - x
        best_error = seqsum(w * (diff * diff))
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + nm) / (hi - lo)
            laux = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
            lf = laux.astype(F32)
            wl = w * lf
            sum_l = seqsum(wl)
            sum_l2 = seqsum(wl * lf)
            sum_xl = seqsum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            d2 = this_scale * lf + this_min - x
            cur_error = seqsum(w * (d2 * d2))
            better = (D > 0) & (cur_error < best_error) & ~flat
            L = np.where(better, laux, L)
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
    L = np.where(flat, 0, L).astype(np.uint8)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return L, scale, (-lo).astype(F32)


def _make_qx_quants(x, nmax):
    """ggml make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for every group at once.
    x: float32 (n, G) element-major. Returns (L int (n, G) in 0..2*nmax-1, scale (G,))."""
    amax = np.abs(x).max(axis=0)
    mx = np.take_along_axis(x, np.argmax(np.abs(x), axis=0)[None, :], axis=0)[0]
    mx = np.where(amax > 0, mx, F32(0))
    zero = amax < GROUP_MAX_EPS
    with np.errstate(all="ignore"):
        w = x * x

    def codes(iscale):
        return np.clip(nearest_int(iscale * x), -nmax, nmax - 1)

    def sums(lv):
        lf = lv.astype(F32)
        return seqsum(w * x * lf), seqsum(w * lf * lf)

    with np.errstate(all="ignore"):
        iscale = F32(-nmax) / mx
        lv = codes(iscale)
        L = lv + nmax
        sumlx, suml2 = sums(lv)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
            lv = codes(iscale)
            sumlx, suml2 = sums(lv)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better, lv + nmax, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    L = np.where(zero, 0, L)
    return L, np.where(zero, F32(0), scale).astype(F32)


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


class _KQuantMinFormat(BlockFormat):
    """Q4_K and Q5_K: 8 groups of 32 with a 6-bit scale and min each, against fp16 d/dmin."""

    nmax: ClassVar[int]
    rmin: ClassVar[float]
    nstep: ClassVar[int]

    @classmethod
    def _codes(cls, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """quantize_row_q{4,5}_K_ref up to the codes: returns (header bytes (N, 16), L (N, 256))."""
        nb = x.shape[0]
        g = x.reshape(nb * 8, 32).T  # (32, G) element-major
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
            requant = np.clip(nearest_int((xg + dm[..., None]) / d[..., None]), 0, cls.nmax)
        L = L.T.reshape(nb, 8, 32)
        L = np.where((d != 0)[..., None], requant, L).reshape(nb, 256)
        return header, L.astype(np.int32)

    @classmethod
    def _scales(cls, raw: np.ndarray) -> dict[str, np.ndarray]:
        sc, mn = _unpack_scale_min_k4(raw[:, 4:16])
        return {"d": _half(raw, 0), "dmin": _half(raw, 2), "sc": sc, "mn": mn}

    @classmethod
    def dequantize_blocks(cls, raw):
        u = cls.unpack_blocks(raw)
        with np.errstate(all="ignore"):
            d1 = u["d"][:, None] * u["sc"].astype(F32)  # d * sc, then dmin * m (float32)
            m1 = u["dmin"][:, None] * u["mn"].astype(F32)
            q = u["qs"].reshape(-1, 8, 32).astype(F32)
            return (d1[..., None] * q - m1[..., None]).reshape(-1, 256)


@register
class Q4_K(_KQuantMinFormat):
    """half d, dmin; u8 scales[12]; u8 qs[128]; value = d*sc*q - dmin*m per 32-group."""

    name = "Q4_K"
    nmax, rmin, nstep = 15, -1.0, 20

    @classmethod
    def quantize_blocks(cls, x):
        header, L = cls._codes(x)
        return np.concatenate([header, _nibble_planes(L)], axis=1)

    @classmethod
    def unpack_blocks(cls, raw):
        return {**cls._scales(raw), "qs": _from_nibble_planes(raw[:, 16:144]).astype(np.uint8)}


@register
class Q5_K(_KQuantMinFormat):
    """half d, dmin; scales[12]; qh[32]; qs[128]; 5-bit codes, qh bit 2c/2c+1 for chunk c."""

    name = "Q5_K"
    nmax, rmin, nstep = 31, -0.5, 15

    @classmethod
    def quantize_blocks(cls, x):
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


@register
class Q6_K(BlockFormat):
    """u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; value = d*sc*(q-32) per 16-group."""

    name = "Q6_K"

    @classmethod
    def quantize_blocks(cls, x):
        nb = x.shape[0]
        g = x.reshape(nb * 16, 16).T
        L, scales = _make_qx_quants(g, 32)
        scales = scales.reshape(nb, 16)
        a = np.abs(scales)
        a = np.where(a > 0, a, F32(0))  # `if (abs_scale > max_abs_scale)` never takes a NaN
        max_abs = a.max(axis=1)
        pick = np.argmax(a, axis=1)[:, None]
        max_scale = np.where(max_abs > 0, np.take_along_axis(scales, pick, axis=1)[:, 0], F32(0))
        empty = max_abs < GROUP_MAX_EPS
        with np.errstate(all="ignore"):
            iscale = F32(-128) / max_scale
            d_bytes = _half_bytes(F32(1) / iscale)
            sc = np.minimum(127, nearest_int(iscale[:, None] * scales)) & 0xFF
            sc8 = sc.astype(np.uint8).view(np.int8)
            d = _half(d_bytes, 0)[:, None] * sc8.astype(F32)
            xg = x.reshape(nb, 16, 16)
            requant = np.clip(nearest_int(xg / d[..., None]), -32, 31) + 32
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
        u = cls.unpack_blocks(raw)
        with np.errstate(all="ignore"):
            ds = u["d"][:, None] * u["sc"].astype(F32)  # (d * sc) * q, as dequantize_row_q6_K
            return (ds[..., None] * u["qs"].reshape(-1, 16, 16).astype(F32)).reshape(-1, 256)


# ---------------------------------------------------------------------------------------
# public entry points


def _format(name: str) -> type[BlockFormat]:
    return FORMATS[qtype(name).name]


def quantize(qtype_name: str, x: np.ndarray) -> np.ndarray:
    """float32 (..., n) -> packed uint8 (..., n/block*nbytes), byte-identical to ggml's
    quantize_row_<type>_ref (the no-importance-matrix path). Non-finite input is refused."""
    fmt = _format(qtype_name)
    qt = fmt.qt
    x = np.asarray(x)
    if x.ndim == 0:
        raise OracleError(f"{qt.name}: quantize needs an array of shape (..., n), got a scalar")
    if not np.issubdtype(x.dtype, np.floating):
        raise OracleError(f"{qt.name}: quantize needs float input, got dtype {x.dtype}")
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
    values exactly as ggml's float arithmetic propagates them (no error is raised)."""
    fmt = _format(qtype_name)
    qt = fmt.qt
    blocks = _as_blocks(qt, raw)
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
    """
    fmt = _format(qtype_name)
    qt = fmt.qt
    blocks = _as_blocks(qt, raw)
    lead = np.asarray(raw).shape[:-1] + (np.asarray(raw).shape[-1] // qt.nbytes,)
    parts = fmt.unpack_blocks(blocks)
    return {k: v.reshape(lead + v.shape[1:]) for k, v in parts.items()}
