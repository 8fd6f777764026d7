"""The non-matmul ops of the Gemma-3 forward, float32, in ggml's CPU order where it is modelled.

Each function names the ggml CPU routine (ggml/src/ggml-cpu/ops.cpp, vec.h of the ggml
vendored in llama-cpp-python 0.3.36) whose order it follows:

- rms_norm: ggml_compute_forward_rms_norm_f32 — float64 running sum of the float32
  squares in index order, mean = (float)(sum/n), scale = 1.0f/sqrtf(mean + eps), then
  (x*scale)*w in float32 (the ggml_mul by the weight). Followed exactly.
- rope_neox: ggml_rope_cache_init + rotate_pairs (NEOX) — theta_scale = powf(base,
  -2.0f/n_rot), theta = (float)pos then *= theta_scale per pair in float32, cos/sin of the
  float32 theta, y0 = x0*c - x1*s, y1 = x0*s + x1*c without fusion. Followed; powf, cosf
  and sinf are taken correctly rounded (float64 then rounded), which glibc's are to within
  its documented 1 ulp.
- gelu: ggml_gelu_f32's tanh formula in float32 (`exact` order); with `fp16_table`
  ggml_vec_geglu_f32 under GGML_GELU_FP16 — x rounded to fp16, the table value
  fp16(gelu(x16)), x for x >= 10, 0 for x <= -10. tanhf as correctly rounded.
- soft_max: ggml_compute_forward_soft_max_f32 with scale 1 — max, expf(x - max) in float32,
  float64 sum in index order, then times (float)(1/sum).
- attention products (kq and kqv): the sums are float64 then rounded once (the order of
  ggml's SIMD dot products is not modelled); with `kv_f16` the K/V cache and the other
  operand of each product are fp16 as in llama.cpp's default cache without flash attention.
"""

from __future__ import annotations

import functools

import numpy as np

F32 = np.float32
GELU_COEF_A = F32(0.044715)
SQRT_2_OVER_PI = F32(0.79788456080286535587989211986876)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: np.float32) -> np.ndarray:
    """RMSNorm of each row of x (float32 (..., n)) times w (n,), in ggml's order."""
    sq = (x * x).astype(np.float64)
    total = np.cumsum(sq, axis=-1)[..., -1]  # cumsum: strictly sequential, like the C loop
    mean = (total / x.shape[-1]).astype(F32)
    scale = (F32(1) / np.sqrt(mean + F32(eps))).astype(F32)
    return ((x * scale[..., None]).astype(F32) * w).astype(F32)


@functools.lru_cache(maxsize=8)
def rope_cache(pos: int, n_rot: int, base: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (n_rot/2,) float32 for one position: ggml_rope_cache_init, freq_scale 1,
    ext_factor 0, attn_factor 1. Cached (read-only): every layer of a step asks again."""
    theta_scale = F32(np.float64(base) ** np.float64(F32(-2.0) / F32(n_rot)))
    thetas = np.empty(n_rot // 2, F32)
    theta = F32(pos)
    for i in range(n_rot // 2):
        thetas[i] = theta
        theta = F32(theta * theta_scale)
    t64 = thetas.astype(np.float64)
    c, s = np.cos(t64).astype(F32), np.sin(t64).astype(F32)
    c.setflags(write=False)
    s.setflags(write=False)
    return c, s


def rope_neox(x: np.ndarray, pos: int, n_rot: int, base: np.float32) -> np.ndarray:
    """NEOX RoPE of x float32 (n_head, head_dim) at `pos`: pairs (i, i + n_rot/2)."""
    c, s = rope_cache(pos, n_rot, base)
    half = n_rot // 2
    x0, x1 = x[:, :half], x[:, half:n_rot]
    y = x.copy()
    y[:, :half] = (x0 * c).astype(F32) - (x1 * s).astype(F32)
    y[:, half:n_rot] = (x0 * s).astype(F32) + (x1 * c).astype(F32)
    return y


def gelu_f32(x: np.ndarray) -> np.ndarray:
    """0.5f*x*(1.0f + tanhf(SQRT_2_OVER_PI*x*(1.0f + GELU_COEF_A*x*x))), float32 steps."""
    x = x.astype(F32)
    inner = (F32(1) + (GELU_COEF_A * x).astype(F32) * x).astype(F32)
    arg = ((SQRT_2_OVER_PI * x).astype(F32) * inner).astype(F32)
    t = np.tanh(arg.astype(np.float64)).astype(F32)
    return ((F32(0.5) * x).astype(F32) * (F32(1) + t)).astype(F32)


def geglu(gate: np.ndarray, up: np.ndarray, fp16_table: bool) -> np.ndarray:
    """gelu(gate) * up (ggml_geglu_split); `fp16_table` = ggml's GGML_GELU_FP16 lookup."""
    if not fp16_table:
        return (gelu_f32(gate) * up).astype(F32)
    with np.errstate(over="ignore"):
        g16 = gate.astype(np.float16).astype(F32)
        table = gelu_f32(g16).astype(np.float16).astype(F32)
    act = np.where(gate <= F32(-10), F32(0), np.where(gate >= F32(10), gate, table))
    return (act * up).astype(F32)


def soft_max(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of float32 x, ggml's order (no masked columns given)."""
    mx = x.max(axis=-1, keepdims=True)
    e = np.exp((x - mx).astype(F32).astype(np.float64)).astype(F32)
    total = np.cumsum(e.astype(np.float64), axis=-1)[..., -1:]
    return (e * (1.0 / total).astype(F32)).astype(F32)


def attend(q: np.ndarray, keys: np.ndarray, values: np.ndarray, n_head_kv: int,
           kv_f16: bool, fast: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One query row against the visible cache. q (n_head, d) already scaled; keys/values
    (n_kv, n_head_kv, d). Returns kq and its softmax (n_head, 1, n_kv) and kqv (n_head, d)."""
    n_head = q.shape[0]
    group = n_head // n_head_kv
    kh = np.repeat(keys.transpose(1, 0, 2), group, axis=0)  # (n_head, n_kv, d)
    vh = np.repeat(values.transpose(1, 0, 2), group, axis=0)
    if kv_f16:
        q = q.astype(np.float16).astype(F32)
    if fast:
        kq = np.einsum("hd,hkd->hk", q, kh).astype(F32)
    else:
        kq = np.einsum("hd,hkd->hk", q, kh, dtype=np.float64).astype(F32)
    p = soft_max(kq)
    pv = p.astype(np.float16).astype(F32) if kv_f16 else p
    if fast:
        kqv = np.einsum("hk,hkd->hd", pv, vh).astype(F32)
    else:
        kqv = np.einsum("hk,hkd->hd", pv, vh, dtype=np.float64).astype(F32)
    return kq[:, None, :], p[:, None, :], kqv
