"""SKaiNET's Q8-activation reference kernels: `Q4_KQ8ActivationReferenceKernel` and
`Q6_KQ8ActivationReferenceKernel` (skainet-backend-cpu, sk/ainet/exec/kernel/), the JVM
transcriptions of the native Q4_K/Q6_K kernels' int8 activation path, kept as test support.

They quantize each 256-block of activations with a quantizer of their own, which is neither
ggml's `quantize_row_q8_K` (`activations.ggml_q8_k`: iscale = -127/max, nearest_int) nor the
native C one (`activations.skainet_native_q8`: lrintf, ties to even):

    maxAbs = max |x|          (an all-zero block: d_in = 0, codes 0)
    inv    = 127f / maxAbs    d_in = maxAbs / 127f    (two float32 divisions)
    q      = x*inv >= 0 ? (int)(x*inv + 0.5f) : -(int)(-x*inv + 0.5f),  clamped to +-127

`(int)` is the JVM's conversion (toward zero, saturating, NaN -> 0), and the `+ 0.5f` is a
float32 addition, so 0.49999997 rounds to 1, not 0. The integer sums are exact (Int/Long);
then, per 256-block in order, from 0f, every operation rounded (JVM float semantics, no FMA):

- Q4_K: out += d_in * (d * float(sum sc*dot) - dmin * float(sum mn*sum(q8)))
- Q6_K: out += (d * d_in) * float(sum sc*dot)

which is `skainet_neon(fused_final=False)`'s block term on these codes."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from kernels_ref import semantics
from oracle import QK_K
from oracle.cfloat import F32


def _java_f2i(v: np.ndarray) -> np.ndarray:
    """The JVM's float -> int conversion (`(int) f`, Kotlin `toInt()`): toward zero,
    saturating at the int range, NaN -> 0; int64 result."""
    v = np.asarray(v, np.float64)
    with np.errstate(invalid="ignore"):
        t = np.trunc(np.where(np.isnan(v), 0.0, v))
    return np.clip(t, -2.0**31, 2.0**31 - 1).astype(np.int64)


def skainet_jvm_q8(x: np.ndarray) -> dict[str, np.ndarray]:
    """The reference kernels' activation quantizer (module docstring), per 256-block of
    x (batch, n): d_in float32 (batch, nb) and int8 codes (batch, nb, 256)."""
    xb = np.asarray(x, F32).reshape(x.shape[0], -1, QK_K)
    maxabs = np.abs(xb).max(axis=-1).astype(F32)
    zero = maxabs == 0
    safe = np.where(zero, F32(1), maxabs).astype(F32)
    with np.errstate(all="ignore"):
        inv = (F32(127) / safe).astype(F32)
        d_in = (safe / F32(127)).astype(F32)
        v = (xb * inv[..., None]).astype(F32)
        up = _java_f2i((v + F32(0.5)).astype(F32))
        down = -_java_f2i((-v + F32(0.5)).astype(F32))
    q = np.clip(np.where(v >= 0, up, down), -127, 127)
    return {"d": np.where(zero, F32(0), d_in).astype(F32),
            "qs": np.where(zero[..., None], 0, q).astype(np.int8)}


@semantics.register
class SkainetQ8Reference(semantics.SkainetNeon):
    """SKaiNET's `Q4_KQ8ActivationReferenceKernel` / `Q6_KQ8ActivationReferenceKernel`
    (module docstring): the JVM quantizer `skainet_jvm_q8`, exact integer block sums, the
    block term in source order, every float32 operation rounded."""

    name = "skainet_q8_reference"
    description = ("SKaiNET's Q4_K/Q6_K Q8-activation reference kernels (JVM): activations "
                   "to int8 per 256 (round half away via +0.5f), integer dots, no FMA")
    params: ClassVar[dict[str, Any]] = {}
    refused: ClassVar[dict[str, str]] = {
        f: "SKaiNET's Q8-activation reference kernels exist for Q4_K and Q6_K only"
        for f in ("Q8_0", "Q4_0", "Q5_0", "Q5_1", "Q5_K")}

    def check_opts(self) -> None:
        pass

    @property
    def fused(self) -> bool:
        return False

    def prepare(self, fmt: str, x: np.ndarray) -> Any:
        return skainet_jvm_q8(x) if fmt in self.quantizes_activations else None

    def activation_values(self, fmt: str, x: np.ndarray) -> np.ndarray | None:
        if fmt not in self.quantizes_activations:
            return None
        a = skainet_jvm_q8(x)
        with np.errstate(all="ignore"):
            return (a["qs"].astype(F32) * a["d"][..., None]).reshape(x.shape)


semantics.SEMANTICS[SkainetQ8Reference.name] = SkainetQ8Reference.description
