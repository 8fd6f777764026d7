"""The kinds of kernel SKaiNET's native archive exports besides the packed matmuls, one
signature each: what kernel-parity feeds the driver and what kernels_ref says comes back.

- dense (`skainet_fp32_matmul`, `skainet_bf16_matmul`, `skainet_fp16_matmul`): C = A.B with
  B (in x out) float32 / BF16 / FP16; modelled (skainet_neon gemm): bit-exact or FAIL;
- bitnet (`skainet_bitnet_gemv_tq2_0`): int8 activations and their scale against TQ2_0 rows;
  modelled (skainet_neon bitnet_tq2_0): bit-exact or FAIL;
- ternary (`skainet_ternary_f32_gemv`) and lmhead (`skainet_ternary_lmhead_stage1`): 2-bit
  ternary codes through the vendored NeoGPU LUT kernel; modelled (skainet_neon ternary_f32,
  lmhead_stage1): bit-exact or FAIL. Its intrinsics fix every rounding, so there is no
  unfused alternative.
The driver input of a kind is one array: float32 activations, or for bitnet per row the
float32 scale's 4 bytes then the int8 activations (uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: kinds whose float order kernels_ref models (any other would be judged by a bound)
MODELLED_KINDS = ("packed", "dense", "bitnet", "ternary", "lmhead")


#: Where a dense kernel's operands sit when it is called (elements of A, B, C): A, B and C
#: at offsets inside buffers whose rows are padded, so a kernel that ignores a stride or an
#: offset reads or writes the wrong cells; C's padding holds the guard NaN `DENSE_GUARD`.
#: The board driver (fixtures/board/skainet_kernel_driver.c, run_dense) and the host child
#: (harness.board.hostkernels) call it so.
DENSE_LAYOUT = {"a_off": 1, "a_pad": 3, "b_off": 2, "b_pad": 2, "c_off": 1, "c_pad": 1}
DENSE_GUARD = 0x7FC0DEAD


@dataclass(frozen=True)
class KernelSymbol:
    symbol: str
    qtype: str  # the weight format ("TERNARY": 2-bit codes; "TERNARY4": four such planes)
    order: str  # oracle.layout block order the kernel reads (packed kinds)
    kind: str = "packed"  # packed | dense | bitnet | ternary | lmhead

    @property
    def kernel_order(self) -> str:
        """skainet_neon's `kernel_order` for this entry: "rm" for `_rm`, else "feed"."""
        return "rm" if self.order == "row_major" else "feed"


OTHER_KERNELS: tuple[KernelSymbol, ...] = (
    KernelSymbol("skainet_fp32_matmul", "F32", "row_major", "dense"),
    KernelSymbol("skainet_bf16_matmul", "BF16", "row_major", "dense"),
    KernelSymbol("skainet_fp16_matmul", "F16", "row_major", "dense"),
    KernelSymbol("skainet_bitnet_gemv_tq2_0", "TQ2_0", "row_major", "bitnet"),
    KernelSymbol("skainet_ternary_f32_gemv", "TERNARY", "row_major", "ternary"),
    KernelSymbol("skainet_ternary_lmhead_stage1", "TERNARY4", "row_major", "lmhead"),
)


def skip_reason(k: KernelSymbol, shape: tuple[int, int, int]) -> str | None:
    """Why `shape` (out, in, batch) cannot run on a non-packed kernel, or None."""
    out_dim, in_dim, batch = shape
    if k.kind in ("ternary", "lmhead") and in_dim % 4:
        return f"in {in_dim} is not a multiple of the 4 ternary codes per byte"
    return None


def _codes_bytes(codes: np.ndarray) -> np.ndarray:
    """(rows, in) codes 0..3 -> (rows, in/4) bytes, 4 per byte, low bit pair first."""
    c = codes.astype(np.uint8).reshape(codes.shape[0], -1, 4)
    return (c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)).astype(np.uint8)


def _dense_inputs(k: KernelSymbol, rng: np.random.Generator, shape: tuple[int, int, int]):
    """A (batch, in) and B (in, out) with magnitudes over six decades (FP16 subnormals)."""
    from oracle.cfloat import f32_to_bf16, f32_to_fp16

    out_dim, in_dim, batch = shape
    w = (rng.standard_normal((in_dim, out_dim))
         * 10.0 ** rng.uniform(-6, 0, (in_dim, out_dim))).astype(np.float32)
    raw = {"F32": lambda: w.astype("<f4"), "BF16": lambda: f32_to_bf16(w).astype("<u2"),
           "F16": lambda: f32_to_fp16(w).astype("<u2")}[k.qtype]()
    return rng.standard_normal((batch, in_dim)).astype(np.float32), raw.view(np.uint8).reshape(-1)


def _bitnet_inputs(rng: np.random.Generator, shape: tuple[int, int, int]):
    """TQ2_0 rows sharing a common sign pattern, and int8 activations over the whole range
    that follow it on the first and every other batch row: block sums near 2**15, so
    partial*d is inexact and fused accumulation differs from unfused. Positive scales."""
    from oracle.quants import quantize

    out_dim, in_dim, batch = shape
    blocks = -(-in_dim // 256)
    common = np.sign(rng.standard_normal(in_dim))
    w = np.zeros((out_dim, blocks * 256), np.float32)
    w[:, :in_dim] = common * rng.uniform(0.6, 1.0, (out_dim, 1)) + 0.3 * rng.standard_normal(
        (out_dim, in_dim))
    act = rng.integers(-128, 128, (batch, in_dim))
    act[::2] = np.clip(np.sign(common) * 127 + rng.integers(-8, 9, in_dim), -128, 127)
    act = act.astype(np.int8)
    scale = (np.abs(rng.standard_normal(batch)) * 0.01 + 1e-4).astype("<f4")
    x = np.concatenate([scale.reshape(batch, 1).view(np.uint8), act.view(np.uint8)], axis=1)
    return x, np.ascontiguousarray(quantize("TQ2_0", w), np.uint8).reshape(-1)


def _ternary_inputs(k: KernelSymbol, rng: np.random.Generator, shape: tuple[int, int, int]):
    """Codes 0..2 (values -1, 0, 1: the loaders' contract); lmhead: four planes then
    positive fp16 row scales."""
    from oracle.cfloat import f32_to_fp16

    out_dim, in_dim, batch = shape
    planes = 4 if k.kind == "lmhead" else 1
    w = [_codes_bytes(rng.integers(0, 3, (out_dim, in_dim))).reshape(-1) for _ in range(planes)]
    if k.kind == "lmhead":
        scales = f32_to_fp16((np.abs(rng.standard_normal(out_dim)) * 0.1 + 0.01)
                             .astype(np.float32)).astype("<u2")
        w.append(scales.view(np.uint8))
    return rng.standard_normal((batch, in_dim)).astype(np.float32), np.concatenate(w)


def case_inputs(k: KernelSymbol, rng: np.random.Generator, shape: tuple[int, int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(driver input, weight bytes) for one case of a non-packed kernel."""
    if k.kind == "dense":
        return _dense_inputs(k, rng, shape)
    if k.kind == "bitnet":
        return _bitnet_inputs(rng, shape)
    return _ternary_inputs(k, rng, shape)


def reference(k: KernelSymbol, x: np.ndarray, w: np.ndarray, out_dim: int, in_dim: int,
              model: str | None = "skainet_neon") -> dict[str, np.ndarray]:
    """What kernels_ref says a non-packed kernel outputs: under skainet_neon (the board)
    {"fused", "unfused"} (fused_final True / False), or {"fused"} alone where intrinsics fix
    every rounding; a dense kernel under another `model` (skainet_x86: a host build)
    {"model"}, and without one (None) the exact result and its rigorous bound."""
    from kernels_ref import dense

    if k.kind == "dense" and model != "skainet_neon":
        if model is None:
            return dense_bound_reference(k, x, w, out_dim, in_dim)
        return {"model": dense.gemm(x, w, k.qtype, in_dim, out_dim, model)}
    if k.kind == "dense":
        return {name: dense.gemm(x, w, k.qtype, in_dim, out_dim, fused_final=f)
                for name, f in (("fused", True), ("unfused", False))}
    if k.kind == "bitnet":
        scale = np.ascontiguousarray(x[:, :4]).view("<f4").reshape(-1)
        act = np.ascontiguousarray(x[:, 4:]).view(np.int8)
        return {name: dense.bitnet_gemv(act, scale, w, out_dim, in_dim, fused_final=f)
                for name, f in (("fused", True), ("unfused", False))}
    if k.kind == "ternary":
        return {"fused": dense.ternary_gemv_model(x, w, out_dim, in_dim)}
    plane = out_dim * in_dim // 4
    bits = np.ascontiguousarray(w[4 * plane:]).view("<u2")
    return {"fused": dense.lmhead_stage1_model(x, w[:4 * plane], bits, out_dim, in_dim)}


def dense_bound_reference(k: KernelSymbol, x: np.ndarray, w: np.ndarray, out_dim: int,
                          in_dim: int) -> dict[str, np.ndarray]:
    """{"exact", "bound"} of a dense kernel: the exact product and its any-order bound."""
    from kernels_ref import dense

    return {"exact": dense.gemm(x, w, k.qtype, in_dim, out_dim, "exact"),
            "bound": dense.gemm_bound(x, w, k.qtype, in_dim, out_dim)}


__all__ = ["DENSE_GUARD", "DENSE_LAYOUT", "MODELLED_KINDS", "OTHER_KERNELS", "KernelSymbol",
           "case_inputs", "dense_bound_reference", "reference", "skip_reason"]
