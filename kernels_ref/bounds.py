"""A rigorous per-output bound on |kernel - exact| for any float32 evaluation order.

A kernel whose float order is not modelled can still be judged without a guessed
tolerance. Write each weight as w = u*s - o (u the unsigned integer code, s its float scale,
o >= 0 the block offset: 8d for Q4_0, 16d for Q5_0, -m for Q5_1, dmin*mn for Q4_K/Q5_K,
32*d*sc for Q6_K, 0 for Q8_0) and a = |u*s| + |o|. Any float32 evaluation of sum_k x_k*w_k
that forms each term with a few roundings (products, the dequantization, fused or not) and
adds the terms in any tree (codes and offsets summed separately or not) satisfies, in the
standard model of Higham's "Accuracy and Stability of Numerical Algorithms" (sec. 3.1),

    |y - sum x_k w_k| <= gamma_K * sum |x_k| a_k,   gamma_K = K*u / (1 - K*u),  u = 2**-24,

with K = 2*in + 8 (a term passes at most 2*in - 1 additions plus its own roundings).
Underflow: a product that underflows errs by up to 2**-150 absolutely, and later
multiplications in the same term scale that error by at most the product P of
max(1, |factor|) over the term's factors (activation, its code and scale, weight code,
scales, mins); each of the <= 2*in terms adds at most 6 * 2**-150 * P (sums that fall in
the subnormal range are exact).

Kernels that quantize the activations first compute, in float, sum x^_k w_k for their
quantized x^, so their bound adds sum |x^_k - x_k| a_k and takes gamma_K over |x^|. The
yardstick `exact` is itself a float64 sum rounded to float32; its own error
(u*|exact| + gamma_in(float64)*sum|x|a) is added too, so the bound compares a kernel
directly with matmul_wt(..., semantics="exact").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels_ref import chunks
from kernels_ref.matmul import _activations, matmul_wt, semantics_obj
from oracle import ROW_MAJOR, unpack

U32 = 2.0**-24
U64 = 2.0**-53
ETA = 2.0**-149


def gamma(k: int, u: float = U32) -> float:
    """Higham's gamma_k = k*u / (1 - k*u)."""
    return k * u / (1.0 - k * u)


def _big(v: np.ndarray) -> np.ndarray:
    """max(1, |v|) reduced over all but the leading axis (a per-row float64 value)."""
    a = np.abs(np.asarray(v, dtype=np.float64)).reshape(v.shape[0], -1)
    return np.maximum(1.0, a.max(axis=1)) if a.shape[1] else np.ones(a.shape[0])


def weight_factor_bound(fmt: str, p: dict) -> np.ndarray:
    """Per row: the largest product of max(1, |factor|) over one weight's float factors."""
    code = {"Q8_0": 128.0, "Q4_0": 16.0, "Q5_0": 32.0, "Q5_1": 31.0, "Q4_K": 15.0,
            "Q5_K": 31.0, "Q6_K": 64.0}[fmt]
    out = code * _big(p["d"])
    for key in ("m", "dmin", "sc", "mn"):
        if key in p:
            out = out * _big(p[key])
    return out


def magnitudes(fmt: str, p: dict) -> np.ndarray:
    """a = |u*s| + |o| per weight, float64 (rows, in), from unpacked blocks (exact in f64)."""
    d = np.abs(p["d"].astype(np.float64))[..., None]  # (rows, nb, 1)
    if fmt == "Q8_0":
        a = np.abs(p["qs"].astype(np.float64)) * d
    elif fmt in ("Q4_0", "Q5_0"):
        off = 8.0 if fmt == "Q4_0" else 16.0
        a = (p["qs"].astype(np.float64) + off) * d + off * d
    elif fmt == "Q5_1":
        a = p["qs"].astype(np.float64) * d + np.abs(p["m"].astype(np.float64))[..., None]
    elif fmt in ("Q4_K", "Q5_K"):
        scale = d * p["sc"].astype(np.float64)  # (rows, nb, 8)
        offset = np.abs(p["dmin"].astype(np.float64))[..., None] * p["mn"].astype(np.float64)
        q = p["qs"].astype(np.float64).reshape(*scale.shape, 32)
        a = q * scale[..., None] + offset[..., None]
    else:  # Q6_K
        scale = d * np.abs(p["sc"].astype(np.float64))  # (rows, nb, 16)
        q = p["qs"].astype(np.float64).reshape(*scale.shape, 16) + 32.0
        a = q * scale[..., None] + 32.0 * scale[..., None]
    return a.reshape(a.shape[0], -1)


def error_bound(x: np.ndarray, w_raw: object, qtype: str, out_dim: int, in_dim: int,
                order: str = ROW_MAJOR, semantics: str | None = None,
                **opts: Any) -> np.ndarray:
    """Per-output float64 bound on |kernel - matmul_wt(x, ..., semantics="exact")|.

    Holds for any kernel computing x . W^T in float32 in any order. Pass `semantics` (and
    its options) for a kernel that quantizes activations (ggml; skainet_neon for Q4_K and
    Q6_K), so the bound includes that quantization error. Shape as matmul_wt's result.
    """
    qt = chunks.packed_type(qtype)
    chunks.checked_order(order)
    flat = chunks.as_packed_bytes(w_raw, qt, out_dim, in_dim)
    out_dim, in_dim = int(out_dim), int(in_dim)
    xb, was_1d = _activations(x, in_dim, qt.name)
    if not xb.shape[0]:
        return np.empty((0, out_dim), np.float64)
    x_hat = None
    if semantics is not None:
        sem = semantics_obj(semantics, **opts)
        x_hat = sem.activation_values(qt.name, xb)
    ax = np.abs(xb.astype(np.float64))
    ax_hat = ax if x_hat is None else np.abs(x_hat.astype(np.float64))
    dx = None if x_hat is None else np.abs(x_hat.astype(np.float64) - xb.astype(np.float64))

    amax = np.abs(xb.astype(np.float64)).max(axis=1)  # activation factors: x, or q8 and d_x
    x_factor = 127.0 * np.maximum(1.0, amax) * np.maximum(1.0, amax / 100.0)
    k = 2 * in_dim + 8
    g32, g64 = gamma(k), gamma(in_dim + 2, U64)
    # float64 evaluation of the sums below: relative error below gamma_{in+2}(f64)
    slack = 1.0 + 4.0 * g64
    exact = matmul_wt(xb, flat, qt.name, out_dim, in_dim, order, "exact").astype(np.float64)
    bound = np.empty((xb.shape[0], out_dim), np.float64)
    rows = chunks.rows_per_chunk(in_dim, xb.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):
        for start, stop, raw_rows in chunks.iter_row_chunks(flat, qt, out_dim, in_dim, order,
                                                            rows):
            parts = unpack(qt.name, raw_rows)
            a = magnitudes(qt.name, parts).T  # (in, rows)
            underflow = 12.0 * in_dim * 2.0**-150 * np.outer(x_factor,
                                                             weight_factor_bound(qt.name, parts))
            s = np.einsum("bk,kr->br", ax, a)  # einsum: no per-call BLAS threading cost
            s_hat = s if x_hat is None else np.einsum("bk,kr->br", ax_hat, a)
            b = g32 * s_hat + g64 * s + U32 * np.abs(exact[:, start:stop]) * (1 + 2 * U32)
            if dx is not None:
                b = b + np.einsum("bk,kr->br", dx, a)
            bound[:, start:stop] = (b + underflow * (1 + g32)) * slack + 4 * ETA
    bound[~np.isfinite(bound)] = np.inf
    return bound[0] if was_1d else bound
