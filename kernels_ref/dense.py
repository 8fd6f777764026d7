"""SKaiNET's non-packed native kernels, from their bytes, in a named float order.

- dense GEMM, C(m, n) = A(m, k) . B(k, n), A float32 and B float32, BF16 or FP16 bytes in
  (k, n) row-major order (`skainet_fp32_matmul`, `skainet_bf16_matmul`,
  `skainet_fp16_matmul`): `gemm`, `gemm_bound`; on the board skainet_neon's order, for
  an x86-64 build skainet_x86's (the same element order, rounded twice, and the NaN
  payloads SSE's operand order keeps);
- BitNet GEMV, int8 activations with one scale per row against TQ2_0 weights, row-major
  blocks (`skainet_bitnet_gemv_tq2_0`): `bitnet_gemv`;
- ternary GEMV, float32 activations against 2-bit codes (4 per byte, low bit pair first,
  value = code - 1), row-major, in/4 bytes per row (`skainet_ternary_f32_gemv`), and the
  lm-head stage 1 over four such planes with weight sum_p (code_p - 1) / 3**p times an
  fp16 row scale (`skainet_ternary_lmhead_stage1`): `ternary_gemv_model`,
  `lmhead_stage1_model` in NeoGPU's LUT order (the vendored body), and `ternary_gemv`,
  `lmhead_stage1`: the exact result with a rigorous bound for any order.

The orders are methods of the semantics registry (`kernels_ref.semantics`: `gemm`,
`bitnet_tq2_0`, `ternary_f32`, `lmhead_stage1`); the bounds follow Higham's gamma_n as
`kernels_ref.bounds` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels_ref.bounds import U32, U64, gamma
from kernels_ref.semantics import make
from oracle import OracleError, unpack
from oracle.cfloat import F32, bf16_to_f32, f32_from_bits, fp16_to_f32

#: The weight types of the dense kernels and their bytes per element.
DENSE_TYPES: dict[str, int] = {"F32": 4, "BF16": 2, "F16": 2}
TQ2_0_BLOCK, TQ2_0_BYTES = 256, 66


def _checked(raw: object, want: int, what: str) -> np.ndarray:
    flat = np.frombuffer(bytes(raw), np.uint8) if isinstance(raw, bytes | bytearray) \
        else np.asarray(raw).reshape(-1)
    if flat.dtype != np.uint8 or flat.size != want:
        raise OracleError(f"{what}: expected {want} uint8 bytes, got {flat.size} of "
                          f"{flat.dtype}")
    return flat


def dense_values(b_raw: object, dtype: str, k: int, n: int) -> np.ndarray:
    """B (k, n) as float32 from its little-endian bytes: F32 as is, BF16 by the 16-bit
    shift, FP16 by exact conversion (every binary16 is a float32)."""
    if dtype not in DENSE_TYPES:
        raise OracleError(f"dense weight type {dtype!r}: expected one of {', '.join(DENSE_TYPES)}")
    flat = _checked(b_raw, k * n * DENSE_TYPES[dtype], f"{dtype} B [{k} x {n}]")
    if dtype == "F32":
        return flat.view("<f4").astype(F32).reshape(k, n)
    halves = flat.view("<u2").reshape(k, n)
    return bf16_to_f32(halves) if dtype == "BF16" else fp16_to_f32(halves)


def gemm(a: np.ndarray, b_raw: object, dtype: str, k: int, n: int,
         semantics: str = "skainet_neon", **opts: Any) -> np.ndarray:
    """C = A.B in the order of `semantics` (exact, skainet_scalar, skainet_neon,
    skainet_x86: the kernel of `dtype`'s x86-64 build)."""
    a = np.asarray(a, F32).reshape(-1, k)
    return make(semantics, **opts).gemm(a, dense_values(b_raw, dtype, k, n), dtype)


def gemm_bound(a: np.ndarray, b_raw: object, dtype: str, k: int, n: int) -> np.ndarray:
    """Rigorous |C - exact| for any float32 order: gamma_(k+1) sum |a||b| (products and
    k - 1 additions; an underflowing product errs by 2**-150 more each), plus the
    yardstick's own rounding."""
    a64 = np.abs(np.asarray(a, F32).reshape(-1, k).astype(np.float64))
    s = a64 @ np.abs(dense_values(b_raw, dtype, k, n).astype(np.float64))
    exact = np.abs(gemm(a, b_raw, dtype, k, n, "exact").astype(np.float64))
    return gamma(k + 1) * s + k * 2.0**-150 + U32 * exact + gamma(k, U64) * s


def bitnet_gemv(act: np.ndarray, act_scale: np.ndarray, w_raw: object, out_dim: int,
                in_dim: int, semantics: str = "skainet_neon", **opts: Any) -> np.ndarray:
    """y[batch, out] for int8 activations (batch, in_dim) with float32 scales (batch,)
    against TQ2_0 rows (ceil(in/256) blocks each, the last block's extra codes unused)."""
    blocks = -(-in_dim // TQ2_0_BLOCK)
    flat = _checked(w_raw, out_dim * blocks * TQ2_0_BYTES, f"TQ2_0 [{out_dim} x {in_dim}]")
    parts = unpack("TQ2_0", flat.reshape(-1, TQ2_0_BYTES))
    codes = np.asarray(parts["qs"], np.int8).reshape(out_dim, blocks, TQ2_0_BLOCK)
    d = np.asarray(parts["d"], F32).reshape(out_dim, blocks)
    act = np.asarray(act, np.int8).reshape(-1, in_dim)
    padded = np.zeros((act.shape[0], blocks * TQ2_0_BLOCK), np.int8)
    padded[:, :in_dim] = act
    return make(semantics, **opts).bitnet_tq2_0(padded, np.asarray(act_scale, F32), codes, d)


def ternary_codes(packed: np.ndarray, rows: int, in_dim: int) -> np.ndarray:
    """int8 (rows, in_dim) values code - 1 of 2-bit codes, 4 per byte, low pair first."""
    b = packed.reshape(rows, in_dim // 4, 1)
    return (((b >> np.array([0, 2, 4, 6], np.uint8)) & 3).astype(np.int8) - 1).reshape(rows,
                                                                                      in_dim)


def _exact_and_bound(x: np.ndarray, w_num: np.ndarray, w_abs: np.ndarray, scale: np.ndarray,
                     rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """y = scale * x.w_num (float64, rounded once) and the bound gamma_rounds * scale *
    |x|.w_abs plus the yardstick's own error (its sum and two scalings in float64)."""
    x64 = np.asarray(x, F32).astype(np.float64)
    y64 = (x64 @ w_num.T.astype(np.float64)) * scale[None, :]
    s = (np.abs(x64) @ w_abs.T.astype(np.float64)) * np.abs(scale)[None, :]
    exact = y64.astype(F32)
    k = x64.shape[1]
    bound = gamma(rounds) * s + U32 * np.abs(exact) + gamma(k + 2, U64) * s
    return exact, bound


def ternary_gemv(x: np.ndarray, w_raw: object, out_dim: int, in_dim: int
                 ) -> dict[str, np.ndarray]:
    """{"exact", "bound"} for skainet_ternary_f32_gemv: products by -1, 0, 1, 2 are exact,
    the in - 1 additions any tree: gamma_in."""
    if in_dim % 4:
        raise OracleError(f"ternary gemv: in_dim {in_dim} is not a multiple of 4")
    flat = _checked(w_raw, out_dim * in_dim // 4, f"ternary [{out_dim} x {in_dim}]")
    w = ternary_codes(flat, out_dim, in_dim)
    exact, bound = _exact_and_bound(x, w, np.abs(w), np.ones(out_dim), in_dim)
    return {"exact": exact, "bound": bound}


def ternary_gemv_model(x: np.ndarray, w_raw: object, out_dim: int, in_dim: int,
                       semantics: str = "skainet_neon", **opts: Any) -> np.ndarray:
    """skainet_ternary_f32_gemv in the order of `semantics` (skainet_neon: NeoGPU's LUT
    kernel)."""
    flat = _checked(w_raw, out_dim * in_dim // 4, f"ternary [{out_dim} x {in_dim}]")
    values = ternary_codes(flat, out_dim, in_dim).astype(F32)
    return make(semantics, **opts).ternary_f32(np.asarray(x, F32).reshape(-1, in_dim), values)


def lmhead_stage1_model(x: np.ndarray, planes_raw: object, row_scale_bits: np.ndarray,
                        out_dim: int, in_dim: int, semantics: str = "skainet_neon",
                        **opts: Any) -> np.ndarray:
    """skainet_ternary_lmhead_stage1 in the order of `semantics`."""
    plane = out_dim * in_dim // 4
    flat = _checked(planes_raw, 4 * plane, f"ternary planes 4 x [{out_dim} x {in_dim}]")
    planes = np.stack([ternary_codes(flat[p * plane:(p + 1) * plane], out_dim, in_dim)
                       for p in range(4)]).astype(F32)
    return make(semantics, **opts).lmhead_stage1(np.asarray(x, F32).reshape(-1, in_dim),
                                                 planes, lmhead_row_scale(row_scale_bits))


def lmhead_row_scale(bits: np.ndarray) -> np.ndarray:
    """The row scale as SKaiNET decodes it: ((e + 112) << 23) | (m << 13), sign ignored
    (equal to the fp16 value for normal positive scales)."""
    h = np.asarray(bits, np.uint16).astype(np.uint32)
    return f32_from_bits((((h >> 10) & 0x1F) + 112) << 23 | ((h & 0x3FF) << 13))


def lmhead_stage1(x: np.ndarray, planes_raw: object, row_scale_bits: np.ndarray,
                  out_dim: int, in_dim: int) -> dict[str, np.ndarray]:
    """{"exact", "bound"} for skainet_ternary_lmhead_stage1: four planes (each out*in/4
    bytes, contiguous), weight v = sum_p (code_p - 1)/3**p (27v an integer), times the row
    scale. Any order: per term the 1/3**p roundings (1), three additions, the product with
    x (1), then in - 1 additions and the row scale (1): gamma_(in+5) over sum |x| a with
    a = sum_p |code_p - 1|/3**p."""
    if in_dim % 4:
        raise OracleError(f"lm-head stage 1: in_dim {in_dim} is not a multiple of 4")
    plane = out_dim * in_dim // 4
    flat = _checked(planes_raw, 4 * plane, f"ternary planes 4 x [{out_dim} x {in_dim}]")
    codes = [ternary_codes(flat[p * plane:(p + 1) * plane], out_dim, in_dim).astype(np.int64)
             for p in range(4)]
    num = sum(c * 3 ** (3 - p) for p, c in enumerate(codes))  # 27 v, exact
    mag = sum(np.abs(c) * 3 ** (3 - p) for p, c in enumerate(codes))
    scale = lmhead_row_scale(row_scale_bits).astype(np.float64) / 27.0
    exact, bound = _exact_and_bound(x, num, mag, scale, in_dim + 5)
    return {"exact": exact, "bound": bound}


__all__ = ["DENSE_TYPES", "bitnet_gemv", "dense_values", "gemm", "gemm_bound",
           "lmhead_row_scale", "lmhead_stage1", "lmhead_stage1_model", "ternary_codes",
           "ternary_gemv", "ternary_gemv_model"]
