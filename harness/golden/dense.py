"""Golden cases of SKaiNET's non-packed kernels, with the expected output of every float
order `kernels_ref` models:

- `gemm`: C(m, n) = A(m, k) . B(k, n), A float32, B float32, BF16 or F16 bytes in (k, n)
  row-major order (native: kernels_ref.dense; JVM: kernels_ref.dense_jvm), and one bound
  that holds for any order. `shape.out` is n, `shape.in` k, `shape.batch` m; `weight` is B
  under its own GGML type (F32 = 0, F16 = 1, BF16 = 30), a `[k x n]` matrix (ne `[n, k]`).
- `bitnet_gemv`: int8 activations with one float32 scale per row against TQ2_0 rows.
- `ternary_gemv` / `ternary_lmhead`: float32 activations against 2-bit ternary codes (one
  plane, or four planes with fp16 row scales), the exact result, NeoGPU's LUT order and an
  any-order bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

import oracle
from kernels_ref import dense, dense_jvm
from oracle.cfloat import F32

KIND = "gemm"
FORMATS = ("F32", "BF16", "F16")
T_BOUND_ANY = "bound.any_order"


@dataclass(frozen=True)
class DenseVariant:
    """One stored expected output of a dense case: its id, how it was computed, the model."""

    id: str
    text: str
    run: Callable[[np.ndarray, np.ndarray, str, int, int], np.ndarray]


def _native(a, b_raw, dtype, k, n, *, semantics: str, **opts) -> np.ndarray:
    return dense.gemm(a, b_raw, dtype, k, n, semantics, **opts)


def _jvm(a, b_raw, dtype, k, n, *, semantics: str, **opts) -> np.ndarray:
    b = dense.dense_values(b_raw, dtype, k, n)
    return dense_jvm.gemm(np.asarray(a, F32), b, semantics, **opts)


def _variants() -> tuple[DenseVariant, ...]:
    v = [DenseVariant("exact", "exact", partial(_native, semantics="exact")),
         DenseVariant("skainet_scalar", "skainet_scalar (JVM ScalarMatmulKernel)",
                      partial(_jvm, semantics="skainet_scalar"))]
    for fused in (True, False):
        v.append(DenseVariant(f"skainet_neon.{'fused' if fused else 'unfused'}",
                              f"skainet_neon fused_final={str(fused).lower()}",
                              partial(_native, semantics="skainet_neon", fused_final=fused)))
    for lanes in (4, 8, 16):
        for red in ("sequential", "pairwise", "halving"):
            v.append(DenseVariant(f"skainet_panama.lanes{lanes}.{red}",
                                  f"skainet_panama lanes={lanes} reduction={red}",
                                  partial(_jvm, semantics="skainet_panama", lanes=lanes,
                                          reduction=red)))
    for lanes in (4, 8, 16):
        v.append(DenseVariant(f"skainet_panama_outer.lanes{lanes}",
                              f"skainet_panama_outer lanes={lanes}",
                              partial(_jvm, semantics="skainet_panama_outer", lanes=lanes)))
    return tuple(v)


#: Every expected output a dense case stores, in file order.
VARIANTS: tuple[DenseVariant, ...] = _variants()


def weight_bytes(w: np.ndarray, dtype: str) -> np.ndarray:
    """B (k, n) float32 as its stored bytes, uint8 (k, n * element bytes)."""
    return oracle.quantize(dtype, np.asarray(w, F32))


def bound_any_order(a: np.ndarray, b_raw: np.ndarray, dtype: str, k: int, n: int
                    ) -> np.ndarray:
    """dense_jvm's rigorous bound on |any float32 order - exact|, rounded up to float32."""
    b = dense_jvm.gemm_error_bound(np.asarray(a, F32), dense.dense_values(b_raw, dtype, k, n))
    b32 = b.astype(F32)
    low = b32.astype(np.float64) < b
    b32[low] = np.nextafter(b32[low], F32(np.inf))
    return np.ascontiguousarray(b32)


def expected(a: np.ndarray, b_raw: np.ndarray, dtype: str, k: int, n: int
             ) -> dict[str, np.ndarray]:
    """{variant id: C (m, n) float32} for every stored variant."""
    return {v.id: np.ascontiguousarray(v.run(a, b_raw, dtype, k, n), F32).reshape(-1, n)
            for v in VARIANTS}


# --- BitNet GEMV: int8 activations with one float32 scale per row, TQ2_0 weight rows ------

BITNET_KIND = "bitnet_gemv"
BITNET_FORMAT = "TQ2_0"
#: (variant id, fused_final) of skainet_bitnet_gemv_tq2_0 (kernels_ref.dense.bitnet_gemv)
BITNET_VARIANTS: tuple[tuple[str, bool], ...] = (("skainet_neon.fused", True),
                                                 ("skainet_neon.unfused", False))


def bitnet_expected(act: np.ndarray, scale: np.ndarray, w_raw: np.ndarray, out_dim: int,
                    in_dim: int) -> dict[str, np.ndarray]:
    """{variant id: y (batch, out) float32} for the BitNet TQ2_0 GEMV."""
    return {vid: np.ascontiguousarray(
        dense.bitnet_gemv(act, scale, w_raw, out_dim, in_dim, fused_final=fused), F32)
        for vid, fused in BITNET_VARIANTS}


# --- ternary GEMV: float32 activations against 2-bit codes (skainet_ternary_f32_gemv) -----

TERNARY_KIND = "ternary_gemv"
TERNARY_VARIANTS: tuple[tuple[str, str], ...] = (
    ("exact", "exact"),
    ("skainet_neon", "skainet_neon (NeoGPU's LUT kernel, lut_dot)"),
)


def _up_to_f32(b: np.ndarray) -> np.ndarray:
    b32 = np.asarray(b, np.float64).astype(F32)
    low = b32.astype(np.float64) < b
    b32[low] = np.nextafter(b32[low], F32(np.inf))
    return np.ascontiguousarray(b32)


def ternary_expected(x: np.ndarray, w_raw: np.ndarray, out_dim: int, in_dim: int,
                     row_scale_bits: np.ndarray | None = None
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({variant id: y (batch, out)}, the any-order bound rounded up to float32) for the
    ternary GEMV, or with fp16 row scales for the lm-head stage 1 over four planes."""
    flat = np.ascontiguousarray(w_raw, np.uint8).reshape(-1)
    if row_scale_bits is None:
        ref = dense.ternary_gemv(x, flat, out_dim, in_dim)
        model = dense.ternary_gemv_model(x, flat, out_dim, in_dim)
    else:
        ref = dense.lmhead_stage1(x, flat, row_scale_bits, out_dim, in_dim)
        model = dense.lmhead_stage1_model(x, flat, row_scale_bits, out_dim, in_dim)
    outs = {"exact": np.ascontiguousarray(ref["exact"], F32),
            "skainet_neon": np.ascontiguousarray(model, F32).reshape(-1, out_dim)}
    return outs, _up_to_f32(ref["bound"])
