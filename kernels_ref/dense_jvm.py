"""Dense fp32 GEMM, C(m, n) = A(m, k) . B(k, n), in the float orders of SKaiNET's
`Fp32MatmulKernel` implementations (skainet-backend-cpu, sk/ainet/exec/kernel/), and a
rigorous bound for any order.

- `exact`: float64 products (exact) summed in float64, rounded once to float32.
- `skainet_scalar` (ScalarMatmulKernel): per output one float32 accumulator from 0,
  `sum += a[i][p] * b[p][j]` for p = 0..k-1, every product and sum rounded, no FMA.
- `skainet_panama(lanes, reduction)` (PanamaVectorMatmulKernel): per output a `lanes`-wide
  accumulator from 0 fed by FMA over the first loopBound(k) = k - k % lanes elements (lane l
  takes p = l, l+lanes, ...), `reduceLanes(ADD)` in `reduction` order (semantics.
  PANAMA_REDUCTIONS), then the tail `sum += a*b` in order, rounded.
- `skainet_panama_outer(lanes)` (PanamaVectorBf16MatmulKernel): i-p-j outer products into
  `out` from 0: for p in order, the first loopBound(n) columns `out = fma(a, b, out)`, the
  remaining columns `out += a*b` (product and sum rounded).

16-bit B operands (Bf16MatmulKernel, Fp16MatmulKernel) are decoded exactly to float32
first (`decode_b16`): every order above then applies unchanged.
"""

from __future__ import annotations

import numpy as np

from kernels_ref.bounds import U32, U64, gamma
from kernels_ref.fma import fma32
from kernels_ref.semantics import PANAMA_REDUCTIONS, fadd, fmul
from oracle import OracleError
from oracle.cfloat import F32

DENSE_SEMANTICS = ("exact", "skainet_scalar", "skainet_panama", "skainet_panama_outer")
#: 16-bit float encodings of a B operand
B16_CODECS = ("BF16", "F16")
ETA = 2.0**-149


def _operands(a: object, b: object) -> tuple[np.ndarray, np.ndarray]:
    """A (m, k) and B (k, n) as float32, finite, inner dimensions equal (OracleError)."""
    a, b = np.asarray(a), np.asarray(b)
    for name, v in (("a", a), ("b", b)):
        if v.dtype != np.float32 or v.ndim != 2:
            raise OracleError(f"gemm: {name} must be a 2-D float32 array, got {v.dtype} "
                              f"{v.shape}")
        if not np.isfinite(v).all():
            raise OracleError(f"gemm: {name} must be finite")
    if a.shape[1] != b.shape[0]:
        raise OracleError(f"gemm: inner dimensions differ: a {a.shape}, b {b.shape}")
    return a, b


def _scalar(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    acc = np.zeros((a.shape[0], b.shape[1]), F32)
    for p in range(a.shape[1]):
        acc = fadd(acc, fmul(a[:, p, None], b[None, p, :]))
    return acc


def _panama(a: np.ndarray, b: np.ndarray, lanes: int, reduction: str) -> np.ndarray:
    m, k = a.shape
    n = b.shape[1]
    body = k - k % lanes
    acc = np.zeros((m, n, lanes), F32)
    for s in range(0, body, lanes):
        acc = fma32(a[:, None, s:s + lanes], b[s:s + lanes].T[None], acc)
    total = PANAMA_REDUCTIONS[reduction](acc.reshape(m * n, lanes)).reshape(m, n)
    for p in range(body, k):
        total = fadd(total, fmul(a[:, p, None], b[None, p, :]))
    return total.astype(F32)


def decode_b16(raw: np.ndarray, codec: str) -> np.ndarray:
    """Little-endian 16-bit floats (uint8 pairs, or uint16) as float32, exactly: BF16 is the
    high half of a float32 (`bits << 16`), F16 IEEE binary16."""
    bits = np.ascontiguousarray(raw).view(np.uint16)
    if codec == "BF16":
        return (bits.astype(np.uint32) << 16).view(F32)
    if codec == "F16":
        return bits.view(np.float16).astype(F32)
    raise OracleError(f"decode_b16: codec must be one of {', '.join(B16_CODECS)}, got {codec!r}")


def _panama_outer(a: np.ndarray, b: np.ndarray, lanes: int) -> np.ndarray:
    n = b.shape[1]
    body = n - n % lanes
    out = np.zeros((a.shape[0], n), F32)
    for p in range(a.shape[1]):
        col = a[:, p, None]
        out[:, :body] = fma32(col, b[None, p, :body], out[:, :body])
        out[:, body:] = fadd(out[:, body:], fmul(col, b[None, p, body:]))
    return out


def gemm(a: object, b: object, semantics: str = "exact", lanes: int = 8,
         reduction: str = "sequential") -> np.ndarray:
    """C = A . B in float32, in the order of `semantics` (module docstring)."""
    a, b = _operands(a, b)
    if semantics == "exact":
        with np.errstate(all="ignore"):
            return (a.astype(np.float64) @ b.astype(np.float64)).astype(F32)
    if semantics == "skainet_scalar":
        return _scalar(a, b)
    if semantics in ("skainet_panama", "skainet_panama_outer"):
        if lanes not in (2, 4, 8, 16) or reduction not in PANAMA_REDUCTIONS:
            raise OracleError(f"gemm: skainet_panama needs lanes 2/4/8/16 and a reduction "
                              f"of {', '.join(PANAMA_REDUCTIONS)}, got {lanes}, {reduction}")
        return (_panama(a, b, lanes, reduction) if semantics == "skainet_panama"
                else _panama_outer(a, b, lanes))
    raise OracleError(f"gemm: unknown semantics {semantics!r}: expected one of "
                      f"{', '.join(DENSE_SEMANTICS)}")


def gemm_error_bound(a: object, b: object) -> np.ndarray:
    """Per-output float64 bound on |any float32 evaluation of A . B - gemm(..., "exact")|:
    gamma_{k+2} * sum |a||b| (any summation tree, products rounded or fused), k*2**-149 for
    products that underflow, the yardstick's own float64 error and its final rounding."""
    a, b = _operands(a, b)
    k = a.shape[1]
    s = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    exact = np.abs(gemm(a, b).astype(np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        bound = (gamma(k + 2) * s + gamma(k + 2, U64) * s + U32 * exact * (1 + 2 * U32)
                 + (k + 1) * ETA * (1 + gamma(k + 2))) * (1 + 4 * gamma(k + 2, U64))
    bound[~np.isfinite(bound)] = np.inf
    return bound
