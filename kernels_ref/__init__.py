"""Reference kernels for packed quantized weights, in each real kernel's float order.

    y = matmul_wt(x, w_raw, "Q8_0", out_dim, in_dim, order="row_major", semantics="exact")
    e = gather_rows(table_raw, "Q8_0", rows, cols, ids, scale=None, order="row_major")
    b = error_bound(x, w_raw, "Q8_0", out_dim, in_dim)   # rigorous |kernel - exact| bound

kernels_ref.dense models SKaiNET's other native kernels from their bytes: the dense
fp32/bf16/fp16 GEMM (`gemm`), the BitNet TQ2_0 GEMV (`bitnet_gemv`), the ternary GEMV and
lm-head stage 1 (`ternary_gemv_model`, `lmhead_stage1_model`); kernels_ref.dense_jvm the
fp32/bf16/fp16 GEMM orders of SKaiNET's JVM kernels (scalar, Panama lanes x reductions).

SEMANTICS maps each semantics name to a one-line description; the classes in
`kernels_ref.semantics` name the source functions they model.
"""

from kernels_ref import q8reference  # noqa: F401  (registers skainet_q8_reference)
from kernels_ref.bounds import error_bound
from kernels_ref.compare import ulp_distance
from kernels_ref.fma import fma32
from kernels_ref.matmul import gather_rows, matmul_wt
from kernels_ref.semantics import SEMANTICS

__all__ = ["SEMANTICS", "error_bound", "fma32", "gather_rows", "matmul_wt", "ulp_distance"]
