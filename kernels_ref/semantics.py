"""Float orders of the real kernels: one class per semantics, one method per block format.

Every method takes the activations and the unpacked blocks of a chunk of output rows and
returns float32 (batch, rows), computed in exactly the order of float32 operations the
modelled kernel performs. Arrays are laid out element-major, (block, element, batch, row),
so each step the kernel's order forces to be sequential is one NumPy operation across
every block, batch row and output row of the chunk; the loops in Python only walk those
few in-block steps (and the blocks, where the kernel accumulates across them in order).

Sources read to build each model are named in the class docstrings (paths inside the
SKaiNET-developers/SKaiNET repository and ggml's ggml-cpu/quants.c from llama.cpp as
vendored by llama-cpp-python 0.3.36).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from kernels_ref import activations
from kernels_ref.fma import fma32
from oracle import OracleError, dequantize
from oracle.cfloat import F32, bits_f32, f32_from_bits

# ----------------------------------------------------------------------------------------
# element-major helpers


def em_codes(a: np.ndarray, group: int | None = None) -> np.ndarray:
    """Codes (rows, nb, B) -> (nb, B, 1, rows); with `group`, (nb, B/group, group, 1, rows)."""
    t = np.moveaxis(a, 0, -1)[:, :, None, :]
    if group is not None:
        nb, b = t.shape[:2]
        t = t.reshape(nb, b // group, group, 1, t.shape[-1])
    return t


def em_scale(a: np.ndarray, ones: int) -> np.ndarray:
    """Per-block values (rows, nb[, k]) -> (nb[, k], <ones x 1>, rows) for broadcasting."""
    t = np.moveaxis(a, 0, -1)
    return t.reshape(t.shape[:-1] + (1,) * ones + t.shape[-1:])


def em_x(x: np.ndarray, block: int, group: int | None = None) -> np.ndarray:
    """Activations (batch, in) -> (nb, block, batch, 1) (or grouped like em_codes)."""
    nb = x.shape[1] // block
    t = x.reshape(x.shape[0], nb, block).transpose(1, 2, 0)[..., None]
    if group is not None:
        t = t.reshape(nb, block // group, group, x.shape[0], 1)
    return t


def f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=F32)


def seq_add(terms: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray:
    """acc (+0 when None) plus terms[0], terms[1], ... strictly in order (axis 0)."""
    acc = np.zeros(terms.shape[1:], F32) if acc is None else acc
    with np.errstate(all="ignore"):
        for t in terms:
            acc = acc + t
    return acc


def lane_fma(x: np.ndarray, w: np.ndarray, lanes: int) -> np.ndarray:
    """A `lanes`-wide vector accumulator fed by FMA, from +0: axis 1 (the block's elements)
    is walked `lanes` at a time, so lane j takes elements j, j+lanes, j+2*lanes, ..."""
    acc = np.zeros((), F32)
    for s in range(0, max(x.shape[1], w.shape[1]), lanes):
        acc = fma32(x[:, s : s + lanes], w[:, s : s + lanes], acc)
    return acc


def lane_add(x: np.ndarray, lanes: int) -> np.ndarray:
    """A `lanes`-wide vector accumulator of plain adds (acc = v + acc), from +0."""
    acc = np.zeros((), F32)
    with np.errstate(all="ignore"):
        for s in range(0, x.shape[1], lanes):
            acc = x[:, s : s + lanes] + acc
    return f32(acc)


def reduce_sequential(v: np.ndarray) -> np.ndarray:
    """((0 + v0) + v1) + ... over axis 1: the strictly ordered lane reduction."""
    return seq_add(np.moveaxis(v, 1, 0))


def reduce_pairwise(v: np.ndarray) -> np.ndarray:
    """Adjacent-pair tree over axis 1: (v0+v1)+(v2+v3) for 4 lanes, as AArch64 `faddp`
    twice (the body of `vaddvq_f32`) computes it."""
    with np.errstate(all="ignore"):
        while v.shape[1] > 1:
            v = v[:, 0::2] + v[:, 1::2]
    return v[:, 0]


def reduce_halving(v: np.ndarray) -> np.ndarray:
    """Halving tree over axis 1: the upper half of the lanes added onto the lower half,
    repeatedly — (l0+l2)+(l1+l3) for 4 lanes — as HotSpot's C2 reduces a Vector API
    `reduceLanes(ADD)` on x86 with JDK 25 (extract the high half, add, repeat)."""
    with np.errstate(all="ignore"):
        while v.shape[1] > 1:
            half = v.shape[1] // 2
            v = v[:, :half] + v[:, half:]
    return v[:, 0]


def pair_chain(v: np.ndarray) -> np.ndarray:
    """Over axis 1 (even length >= 4): adjacent pairs p_j = v[2j] + v[2j+1], then
    ((p0 + p1) + p2) + p3 + ... in order: the reduction tree gcc 12 -O3 -ffast-math emits on
    x86-64 for an unrolled float sum (e.g. (((P0+P1)+(P2+P3))+(P4+P5))+(P6+P7) over the 8
    four-lane partial vectors of a 32-element loop)."""
    with np.errstate(all="ignore"):
        p = v[:, 0::2] + v[:, 1::2]
        acc = p[:, 0] + p[:, 1]
        for j in range(2, p.shape[1]):
            acc = acc + p[:, j]
    return f32(acc)


def sse_sum32(t: np.ndarray) -> np.ndarray:
    """A 32-element float loop sum as gcc vectorizes it for SSE2 (4 float lanes), over axis 1:
    vector partial i holds elements 4i..4i+3 (lane j: elements j, j+4, ...), the 8 partials
    are combined by `pair_chain`, and the lanes by movhlps/shufps: (l0+l2)+(l1+l3)."""
    v = t.reshape(t.shape[0], 8, 4, *t.shape[2:])
    return reduce_halving(pair_chain(v))


def fmul(a: Any, b: Any) -> np.ndarray:
    with np.errstate(all="ignore"):
        return f32(f32(a) * f32(b))


def fadd(a: Any, b: Any) -> np.ndarray:
    with np.errstate(all="ignore"):
        return f32(f32(a) + f32(b))


def fsub(a: Any, b: Any) -> np.ndarray:
    with np.errstate(all="ignore"):
        return f32(f32(a) - f32(b))


#: x86-64's default NaN (the "QNaN floating-point indefinite"), what an invalid SSE
#: operation on non-NaN operands (inf*0, inf-inf) returns
SSE_DEFAULT_NAN = 0xFFC00000
#: the quiet bit of a float32 NaN
QUIET_BIT = 0x00400000


def sse_nan(result: np.ndarray, first: Any, second: Any) -> np.ndarray:
    """`result` of an SSE binary operation with x86-64's NaN rules made explicit (Intel SDM
    vol. 1, table 4-7): a NaN first source (the destination register of the two-operand
    form) comes back quieted, whatever the second; else a NaN second source, quieted; else
    a NaN result is the default NaN. So the payload does not depend on NumPy's own order."""
    first, second = f32(first), f32(second)
    out = np.where(np.isnan(result), np.uint32(SSE_DEFAULT_NAN), bits_f32(result))
    out = np.where(np.isnan(second), bits_f32(second) | np.uint32(QUIET_BIT), out)
    out = np.where(np.isnan(first), bits_f32(first) | np.uint32(QUIET_BIT), out)
    return f32_from_bits(out)


def dense_gemm(a: np.ndarray, b: np.ndarray, fused: bool,
               sse_first: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """C = A.B with one float32 accumulator per element from +0 and p ascending: each step
    fma(a[i,p], b[p,j], c) when `fused`, else c + a[i,p]*b[p,j] rounded twice.
    `sse_first` = (a_first, c_first), bool per column of C: x86-64 SSE, whose NaN payloads
    follow the operand order (`sse_nan`): the product's first source is a[i,p] where
    a_first, else b[p,j]; the sum's is c where c_first, else the product."""
    c = np.zeros((a.shape[0], b.shape[1]), F32)
    for p in range(a.shape[1]):
        col, row = a[:, p : p + 1], b[p][None, :]
        if fused:
            c = fma32(col, row, c)
        elif sse_first is None:
            c = fadd(c, fmul(col, row))
        else:
            a_first, c_first = sse_first
            prod = fmul(col, row)
            prod = sse_nan(prod, np.where(a_first, col, row), np.where(a_first, row, col))
            c = sse_nan(fadd(prod, c), np.where(c_first, c, prod), np.where(c_first, prod, c))
    return c


def lut_dot(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """NeoGPU's ternary LUT dot, (batch, K) x (rows, K) -> (batch, rows): byte bi (elements
    4bi..4bi+3, one per lane) goes to vector accumulator bi % 4 by `vfmaq_f32` while four
    whole bytes remain, the tail bytes to accumulator 0; then per lane
    acc0 + ((acc1 + acc2) + acc3) and `vaddvq_f32` = (l0 + l1) + (l2 + l3). The source
    writes (acc0 + acc1) + (acc2 + acc3); aarch64-linux-gnu-gcc 12.2 at -O3 -ffast-math
    (-march=armv8-a and armv8.2-a+fp16+dotprod alike) sums acc1..acc3 once the main loop
    ends and adds acc0 after the tail (read from its disassembly, checked bit for bit)."""
    batch, k = x.shape
    nbytes = k // 4
    main = nbytes & ~3
    xe, ue = x.reshape(batch, 1, nbytes, 4), u.reshape(1, u.shape[0], nbytes, 4)
    acc = np.zeros((batch, u.shape[0], 4, 4), F32)  # (.., accumulator, lane)
    for t in range(0, main, 4):
        acc = fma32(ue[:, :, t:t + 4], xe[:, :, t:t + 4], acc)
    for bi in range(main, nbytes):
        acc[:, :, 0] = fma32(ue[:, :, bi], xe[:, :, bi], acc[:, :, 0])
    lanes = fadd(acc[:, :, 0], fadd(fadd(acc[:, :, 1], acc[:, :, 2]), acc[:, :, 3]))
    return fadd(fadd(lanes[..., 0], lanes[..., 1]), fadd(lanes[..., 2], lanes[..., 3]))


def as_f32(ints: np.ndarray) -> np.ndarray:
    """C's (float) conversion of integers: round to nearest even (exact below 2**24)."""
    return ints.astype(np.int64).astype(F32)



def int_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer dot products a (n, batch, k) . b (n, k, rows) -> float64 (n, batch, rows).

    The operands are small integers, so every product and partial sum is exact in float64
    (well below 2**53), so no summation order can change the result. einsum, not BLAS:
    the many small products here pay OpenBLAS's per-call threading cost otherwise."""
    return np.einsum("...bk,...kr->...br", a, b, dtype=np.float64)


# ----------------------------------------------------------------------------------------
# registry


class Semantics:
    """Base: a named float order. Subclasses implement one method per format, named like
    the format in lower case, taking (x, parts, prep) and returning float32 (batch, rows)."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    #: format -> why this semantics has no kernel for it
    refused: ClassVar[dict[str, str]] = {}
    #: whether run() needs unpacked codes and scales (exact works from dequantized values)
    needs_parts: ClassVar[bool] = True
    #: whether the modelled kernel quantizes the activations (error_bound adds that error)
    quantizes_activations: ClassVar[frozenset[str]] = frozenset()

    #: (first row of the current chunk, rows in the whole matrix), set by matmul_wt before
    #: each run(): a few kernels treat the block stored last in their array differently
    window: tuple[int, int] = (0, 0)

    def __init__(self, **opts: Any) -> None:
        unknown = set(opts) - set(self.params)
        if unknown:
            allowed = ", ".join(self.params) or "none"
            raise OracleError(f"semantics {self.name!r}: unknown option(s) "
                              f"{', '.join(sorted(unknown))} (options: {allowed})")
        self.opts = {**self.params, **opts}
        self.check_opts()

    def check_opts(self) -> None:
        """Validate option values (OracleError)."""

    def check_format(self, fmt: str) -> None:
        """OracleError naming semantics and format when no such kernel exists."""
        if fmt in self.refused:
            raise OracleError(f"semantics {self.name!r} has no kernel for {fmt}: "
                              f"{self.refused[fmt]}")
        if not hasattr(self, fmt.lower()):
            raise OracleError(f"semantics {self.name!r} has no kernel for {fmt}")

    def prepare(self, fmt: str, x: np.ndarray) -> Any:
        """Per-call work on the activations (e.g. quantizing them), shared by all chunks."""
        return None

    def run(self, fmt: str, x: np.ndarray, raw_rows: np.ndarray, parts: dict | None,
            prep: Any) -> np.ndarray:
        """float32 (batch, rows) for the chunk whose row-order bytes are `raw_rows`."""
        return getattr(self, fmt.lower())(x, parts, prep)

    def activation_values(self, fmt: str, x: np.ndarray) -> np.ndarray | None:
        """The float activations the kernel effectively multiplies (codes times scales), for
        kernels that quantize them; None when it uses x itself."""
        return None


REGISTRY: dict[str, type[Semantics]] = {}


def register(cls: type[Semantics]) -> type[Semantics]:
    REGISTRY[cls.name] = cls
    return cls


def make(name: str, **opts: Any) -> Semantics:
    """Instantiate a semantics by name (OracleError listing the known ones)."""
    try:
        cls = REGISTRY[name]
    except (KeyError, TypeError):
        raise OracleError(f"unknown semantics {name!r}: expected one of "
                          f"{', '.join(REGISTRY)}") from None
    return cls(**opts)


# ----------------------------------------------------------------------------------------
# exact


@register
class Exact(Semantics):
    """The yardstick: float64 sum of x times the dequantized float32 weights (oracle's
    `dequantize`, i.e. ggml's dequantize_row_*), rounded to float32 once at the end.
    Each float32 x float32 product is exact in float64. The order of the float64 sum is
    fixed (so a compiled twin can match it bit for bit): LANES accumulators from -0, lane l
    adding the products of elements l, l+LANES, ... in order, then the lanes added as an
    adjacent-pair tree (`lane_tree_sum`)."""

    name = "exact"
    description = "float64 accumulation of the dequantized weights, rounded once to float32"
    needs_parts = False
    #: float64 accumulators of the sum (lane l: elements l, l+LANES, l+2*LANES, ...)
    LANES: ClassVar[int] = 16

    def check_format(self, fmt: str) -> None:
        pass

    #: formats whose dequantized weight is q*d, exact in float32 (<= 8-bit code x fp16 scale)
    SCALED_CODES: ClassVar[tuple[str, ...]] = ("Q8_0", "Q4_0", "Q5_0")

    def run(self, fmt, x, raw_rows, parts, prep):
        w = dequantize(fmt, raw_rows).astype(np.float64)  # (rows, in), exact
        with np.errstate(all="ignore"):
            # every product exact in float64; the sums in the fixed lane order
            return lane_tree_sum(prep[:, None, :] * w[None], self.LANES).astype(F32)

    def prepare(self, fmt, x):
        return x.astype(np.float64)

    def gemm(self, a, b, dtype="F32"):
        """C = A.B for float32 A (m, k), B (k, n): float64 sums of exact products, rounded
        once (the yardstick of the dense kernels)."""
        with np.errstate(all="ignore"):
            return (a.astype(np.float64) @ b.astype(np.float64)).astype(F32)


def lane_tree_sum(products: np.ndarray, lanes: int) -> np.ndarray:
    """Sum over the last axis in a fixed order, in the products' own dtype: `lanes`
    accumulators starting at -0 (the identity of IEEE addition), lane l adding elements l,
    l+lanes, ... in order (a cumsum, strictly sequential), then the lanes added as an
    adjacent-pair tree, (l0+l1)+(l2+l3) for 4. The last axis is padded with -0 to a whole
    number of lane steps."""
    n = products.shape[-1]
    pad = -n % lanes
    if pad:
        fill = np.full(products.shape[:-1] + (pad,), -0.0, products.dtype)
        products = np.concatenate([products, fill], axis=-1)
    steps = products.reshape(products.shape[:-1] + (-1, lanes))
    with np.errstate(all="ignore"):
        v = np.cumsum(steps, axis=-2, dtype=products.dtype)[..., -1, :]
        while v.shape[-1] > 1:
            v = v[..., 0::2] + v[..., 1::2]
    return v[..., 0]


# ----------------------------------------------------------------------------------------
# SKaiNET scalar (commonMain) kernels


def q6k_weights(p: dict) -> np.ndarray:
    """Q6_K weights as SKaiNET's dequantBlock builds them: (d*sc)*(q-32), (nb, 256, 1, rows)."""
    scale = fmul(em_scale(p["d"], 3), em_scale(p["sc"], 2).astype(F32))  # (nb, 16, 1, 1, rows)
    w = fmul(scale, em_codes(p["qs"], 16).astype(F32))
    return w.reshape(w.shape[0], 256, *w.shape[3:])


def kquant_scale_offset(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """(d*sc, dmin*mn) per 32-group, (nb, 8, 1, rows): SKaiNET's scale and offset."""
    scale = fmul(em_scale(p["d"], 2), em_scale(p["sc"], 1).astype(F32))
    offset = fmul(em_scale(p["dmin"], 2), em_scale(p["mn"], 1).astype(F32))
    return scale, offset


def flat_blocks(t: np.ndarray) -> np.ndarray:
    """(nb, k, batch, rows) -> (nb*k, batch, rows): the sequence a row accumulator walks."""
    return t.reshape(-1, *t.shape[-2:])


@register
class SkainetScalar(Semantics):
    """SKaiNET's scalar kernels (skainet-backend-cpu commonMain, sk/ainet/exec/kernel/
    ScalarQ8_0MatmulKernel.kt, ScalarQ4_0-, ScalarQ5_0-, ScalarQ5_1-, ScalarQ4_K-,
    ScalarQ5_K-, ScalarQ6_KMatmulKernel.kt): one float32 accumulator per output starting at
    0, every operation rounded (JVM and Kotlin/Native float semantics, no FMA):

    - Q8_0: per element in input order, `acc += input*code*d` = acc + ((x*code)*d).
    - Q4_0: per block, j = 0..15: acc += (x[j]*(lo-8))*d, then acc += (x[j+16]*(hi-8))*d.
    - Q5_0: w = d*(q-16); per j = 0..15: acc += (x[j]*w[j] + x[j+16]*w[j+16]).
    - Q5_1: w = d*q + m; the same pairing as Q5_0.
    - Q4_K / Q5_K: per 32-group in order, codeSum = sum of x*code and inputSum = sum of x (each
      from 0, in order); acc += codeSum*(d*sc) - inputSum*(dmin*mn).
    - Q6_K: the block dequantized as (d*sc)*(q-32), then acc += x*w in input order.
    """

    name = "skainet_scalar"
    description = ("SKaiNET scalar kernel: one float32 accumulator per output, element by "
                   "element in the kernel's order, no FMA")

    def q8_0(self, x, p, prep):
        t = fmul(fmul(em_x(x, 32), em_codes(p["qs"]).astype(F32)), em_scale(p["d"], 2))
        return seq_add(flat_blocks(t))

    def q4_0(self, x, p, prep):
        t = fmul(fmul(em_x(x, 32), em_codes(p["qs"]).astype(F32)), em_scale(p["d"], 2))
        interleave = np.stack([np.arange(16), np.arange(16, 32)], axis=1).reshape(-1)
        return seq_add(flat_blocks(t[:, interleave]))

    @staticmethod
    def _pair_sums(x, w):
        xw = fmul(em_x(x, 32), w)
        return seq_add(flat_blocks(fadd(xw[:, :16], xw[:, 16:])))

    def q5_0(self, x, p, prep):
        return self._pair_sums(x, fmul(em_scale(p["d"], 2), em_codes(p["qs"]).astype(F32)))

    def q5_1(self, x, p, prep):
        w = fadd(fmul(em_scale(p["d"], 2), em_codes(p["qs"]).astype(F32)), em_scale(p["m"], 2))
        return self._pair_sums(x, w)

    def _kquant_min(self, x, p):
        xg = em_x(x, 256, 32)  # (nb, 8, 32, batch, 1)
        code_sum = seq_add(np.moveaxis(fmul(xg, em_codes(p["qs"], 32).astype(F32)), 2, 0))
        input_sum = seq_add(np.moveaxis(xg, 2, 0))  # (nb, 8, batch, 1)
        scale, offset = kquant_scale_offset(p)
        return seq_add(flat_blocks(fsub(fmul(code_sum, scale), fmul(input_sum, offset))))

    def q4_k(self, x, p, prep):
        return self._kquant_min(x, p)

    def q5_k(self, x, p, prep):
        return self._kquant_min(x, p)

    def q6_k(self, x, p, prep):
        return seq_add(flat_blocks(fmul(em_x(x, 256), q6k_weights(p))))

    def gemm(self, a, b, dtype="F32"):
        """C = A.B, each element from +0 over p ascending: c + a[i,p]*b[p,j], rounded twice
        (the scalar C loop of the dense kernels without contraction)."""
        return dense_gemm(a, b, fused=False)


# ----------------------------------------------------------------------------------------
# SKaiNET Panama (JDK Vector API) kernels


#: reduceLanes(ADD) orders a JVM can use, by name (the `reduction` option).
PANAMA_REDUCTIONS = {"sequential": reduce_sequential, "pairwise": reduce_pairwise,
                     "halving": reduce_halving}


@register
class SkainetPanama(Semantics):
    """SKaiNET's JVM Vector API kernels (skainet-backend-cpu jvmMain, sk/ainet/exec/kernel/
    PanamaVectorQ8_0MatmulKernel.kt, -Q4_0-, -Q5_0-, -Q5_1-, PanamaVectorQ4KMatmulKernel.kt,
    -Q5_K-, -Q6_K- (its dequant is JvmQuantizedVectorKernels.dequantQ6_KBlock)). `lanes` is
    FloatVector.SPECIES_PREFERRED.length() (4 on NEON, 8 on AVX2, 16 on AVX-512): per block a
    lane vector of `FloatVector.fma` (lane j takes elements j, j+lanes, ...), then
    `reduceLanes(ADD)`, then into the float32 row accumulator (plain JVM float ops):

    - Q8_0 / Q4_0: fma of x with the float codes (q-8 for Q4_0); acc += blockSum*d. (With 2 or
      4 lanes the Q8_0 kernel loads 8 code bytes per step, so on the array's last block its
      last load passes the array end; the model assumes the kernel gets that far.)
    - Q5_0 / Q5_1: fma of x with the dequantized codeBuf (d*(q-16); d*q + m); acc += blockSum.
    - Q4_K / Q5_K: per 32-group, a code vector (fma x*code) and an input vector (x + acc);
      both reduced; acc += codeSum*(d*sc) - inputSum*(dmin*mn). With 2 or 4 lanes the
      8-byte code load of the array's last group would pass the array end, so there the
      loop stops early and a scalar tail finishes it (assumes the weight ByteArray ends
      with the tensor, offset 0 — how SKaiNET allocates packed tensors).
    - Q6_K: fma of x with (d*sc)*(q-32); acc += blockSum.

    `reduction`: "sequential" is ((0 + l0) + l1) + ... — the Java fallback and HotSpot's
    strictly ordered intrinsics (JDK 21); "pairwise" is the adjacent-pair tree AArch64
    `faddp` gives, which newer HotSpot may use for Vector API reductions (order unspecified
    by the API); "halving" adds the upper half of the lanes onto the lower half, repeatedly
    (4 lanes: (l0+l2)+(l1+l3)) — C2-compiled code on x86 with JDK 25 (REFERENCE §3a).
    """

    name = "skainet_panama"
    description = ("SKaiNET JVM Vector API kernel: per block lane-vector FMA, reduceLanes(ADD), "
                   "then the row accumulator (params lanes, reduction)")
    params: ClassVar[dict[str, Any]] = {"lanes": 8, "reduction": "sequential"}

    def check_opts(self):
        if self.opts["lanes"] not in (2, 4, 8, 16):
            raise OracleError(f"semantics 'skainet_panama': lanes must be 2, 4, 8 or 16 "
                              f"(FloatVector species length), got {self.opts['lanes']!r}")
        if self.opts["reduction"] not in PANAMA_REDUCTIONS:
            raise OracleError("semantics 'skainet_panama': reduction must be one of "
                              f"{', '.join(PANAMA_REDUCTIONS)}, got {self.opts['reduction']!r}")

    def _reduce(self, v):
        return PANAMA_REDUCTIONS[self.opts["reduction"]](v)

    def _block_sums(self, x, w, block):
        return self._reduce(lane_fma(em_x(x, block), w, self.opts["lanes"]))  # (nb, batch, rows)

    def q8_0(self, x, p, prep):
        s = self._block_sums(x, em_codes(p["qs"]).astype(F32), 32)
        return seq_add(fmul(s, em_scale(p["d"], 1)))

    q4_0 = q8_0

    def q5_0(self, x, p, prep):
        w = fmul(em_scale(p["d"], 2), em_codes(p["qs"]).astype(F32))
        return seq_add(self._block_sums(x, w, 32))

    def q5_1(self, x, p, prep):
        w = fadd(fmul(em_scale(p["d"], 2), em_codes(p["qs"]).astype(F32)), em_scale(p["m"], 2))
        return seq_add(self._block_sums(x, w, 32))

    def _kquant_min(self, x, p):
        lanes = self.opts["lanes"]
        xg = em_x(x, 256, 32)
        nb = xg.shape[0]
        xf = xg.reshape(nb * 8, 32, *xg.shape[3:])
        cf = em_codes(p["qs"], 32).astype(F32)
        cf = cf.reshape(nb * 8, 32, *cf.shape[3:])
        code_sum = self._reduce(lane_fma(xf, cf, lanes)).reshape(nb, 8, -1, cf.shape[-1])
        input_sum = self._reduce(lane_add(xf, lanes)).reshape(nb, 8, -1, 1)
        scale, offset = kquant_scale_offset(p)
        term = fsub(fmul(code_sum, scale), fmul(input_sum, offset))
        start, out_dim = self.window
        last = out_dim - 1 - start
        if self._byte_load() > lanes and 0 <= last < code_sum.shape[-1]:
            term[nb - 1, 6:, :, last] = self._array_end_terms(x, p, last, scale, offset)
        return seq_add(flat_blocks(term))

    def _byte_load(self) -> int:
        """Bytes one ByteVector load reads: SPECIES_128 for 16 float lanes, else SPECIES_64."""
        return 16 if self.opts["lanes"] == 16 else 8

    def _array_end_terms(self, x, p, row, scale, offset):
        """Q4_K/Q5_K's last 32-byte qs group in the weight array (the last input block of
        the last output row, in SKaiNET's input-block-major array): the SIMD loop stops
        where a `byteLoadLen`-byte load would pass the array end (`qsRegion + idx +
        byteLoadLen <= weight.size`), and the scalar tail adds the rest after the lane
        reduction, unfused. Returns the two group terms, (2, batch)."""
        lanes = self.opts["lanes"]
        simd = (32 - self._byte_load()) // lanes * lanes + lanes  # elements the loop takes
        nb = p["qs"].shape[1]
        out = []
        for s in (6, 7):
            xs = x[:, 256 * (nb - 1) + 32 * s : 256 * (nb - 1) + 32 * (s + 1)]  # (batch, 32)
            c = p["qs"][row, nb - 1, 32 * s : 32 * (s + 1)].astype(F32)
            xt, ct = xs.T[None], c[None, :, None]  # (1, 32, batch), (1, 32, 1)
            cs = self._reduce(lane_fma(xt[:, :simd], ct[:, :simd], lanes))[0]
            isum = self._reduce(lane_add(xt[:, :simd], lanes))[0]
            for k in range(simd, 32):
                cs = fadd(cs, fmul(xs[:, k], c[k]))
                isum = fadd(isum, xs[:, k])
            out.append(fsub(fmul(cs, scale[nb - 1, s, 0, row]),
                            fmul(isum, offset[nb - 1, s, 0, row])))
        return np.stack(out)

    def q4_k(self, x, p, prep):
        return self._kquant_min(x, p)

    def q5_k(self, x, p, prep):
        return self._kquant_min(x, p)

    def q6_k(self, x, p, prep):
        return seq_add(self._block_sums(x, q6k_weights(p), 256))


# ----------------------------------------------------------------------------------------
# SKaiNET native C kernels on AArch64 (NEON)


@register
class SkainetNeon(Semantics):
    """SKaiNET's native C kernels on AArch64 (skainet-backend-native-cpu/native/src/
    q8_0_matmul.c, q4_0_matmul.c, q5_0_matmul.c, q5_1_matmul.c, q5k_matmul.c, q4k_matmul.c,
    q6k_matmul.c;
    skainet_simd.h: `vaddvq_f32` horizontal add = (l0+l1)+(l2+l3)), built -O3 -ffast-math
    -march=armv8.2-a+fp16+dotprod. The NEON intrinsics fix the in-block order; the scalar C
    around them is the compiler's to contract and reassociate under -ffast-math.

    `kernel_order` names the exported entry: "feed" (`skainet_<fmt>_matmul`, block-outer over
    input-block-major bytes) or "rm" (`skainet_<fmt>_matmul_rm`, row-outer over row-major
    bytes). Per output row both walk the blocks in ascending order; they differ only where
    the compiler contracts the block term differently (Q5_1, fused). The bytes' layout is
    matmul_wt's `order`, independent of this.

    `fused_final=True` models that scalar C as aarch64-linux-gnu-gcc 12.2 compiles it with
    those flags (read from its disassembly, and checked bit for bit by running the compiled
    loops under qemu-aarch64); `fused_final=False` is the source order, every operation
    rounded (a build without -ffast-math). Per format, fused / unfused:

    - Q8_0: per block 4 lanes of `vfmaq_f32` (lane j: elements j, j+4, ..., j+28), horizontal
      add, then acc = fma(block_sum, d, acc) / acc + block_sum*d.
    - Q4_0: as Q8_0 with the codes nibble - 8 (elements 0..15 the low nibbles, 16..31 the
      high ones), the NEON body of q4_0_block_term.
    - Q5_0: code_dot as Q8_0 with the unsigned 5-bit codes; input_sum of the block's x as a
      4-wide vector sum + horizontal add / in order; acc = fma(code_dot - 16*input_sum, d, acc)
      / acc + d*(code_dot - 16*input_sum).
    - Q5_1: code_dot, input_sum as Q5_0; acc = fma(m, input_sum, fma(d, code_dot, acc)) /
      acc + (d*code_dot + m*input_sum). The row-major entry (`kernel_order="rm"`) inlines the
      same block term into a row-outer loop, and gcc contracts it differently there:
      acc = acc + fma(d, code_dot, m*input_sum).
    - Q5_K: per 32-group a 4-lane fma code vector and add input vector, horizontal adds; per
      lo/hi group pair A = fma(sc_lo, cs_lo, sc_hi*cs_hi), B = fma(dmin*is_lo, mn_lo,
      mn_hi*(dmin*is_hi)), local += fma(A, d, -B) / local += cs*(d*sc) - is*(dmin*mn) per
      group; then acc += local.
    - Q4_K: activations quantized per 256 (d_in = maxabs/127 — gcc: maxabs*float(1/127) —,
      q = lrintf(x*(127/maxabs)) clamped to +-127); exact integer sums A = sum sc*dot,
      B = sum mn*sum(q8); acc = fma(fma(A, d, -(B*dmin)), d_in, acc) /
      acc + d_in*(d*A - dmin*B).
    - Q6_K: activations as Q4_K; W = exact sum of sc*dot; acc = fma(d*d_in, W, acc) /
      acc + (d*d_in)*W.
    """

    name = "skainet_neon"
    description = ("SKaiNET native C kernel on aarch64: per block 4-lane vfmaq_f32, pairwise "
                   "horizontal add, then the row accumulator (param fused_final)")
    params: ClassVar[dict[str, Any]] = {"fused_final": True, "kernel_order": "feed"}
    #: the exported entries: feed order (block-outer) and row-major (`_rm`, row-outer)
    KERNEL_ORDERS: ClassVar[tuple[str, ...]] = ("feed", "rm")
    quantizes_activations: ClassVar[frozenset[str]] = frozenset({"Q4_K", "Q6_K"})

    def check_opts(self):
        if not isinstance(self.opts["fused_final"], bool | np.bool_):
            raise OracleError("semantics 'skainet_neon': fused_final must be True or False, "
                              f"got {self.opts['fused_final']!r}")
        self._check_kernel_order()

    def _check_kernel_order(self) -> None:
        if self.opts["kernel_order"] not in self.KERNEL_ORDERS:
            raise OracleError(f"semantics {self.name!r}: kernel_order must be one of "
                              f"{', '.join(self.KERNEL_ORDERS)}, got {self.opts['kernel_order']!r}")

    @property
    def fused(self) -> bool:
        return bool(self.opts["fused_final"])

    def _input_sums(self, x, block):
        """Per-block sum of x, (nb, batch, 1): gcc's 4-wide vectorized reduction, or in order."""
        xe = em_x(x, block)
        if self.fused:
            return reduce_pairwise(lane_add(xe, 4))
        return seq_add(np.moveaxis(xe, 1, 0))

    def _neon_dot(self, x, w, block):
        return reduce_pairwise(lane_fma(em_x(x, block), w, 4))  # (nb, batch, rows)

    def _accumulate_blocks(self, t, d):
        """acc += t[b] * d[b] block by block, in order: one fused fma32 per block under
        fused_final, else a rounded multiply then a rounded add (products commute)."""
        acc = np.zeros(t.shape[1:], F32)
        for b in range(t.shape[0]):
            acc = fma32(t[b], d[b], acc) if self.fused else fadd(acc, fmul(t[b], d[b]))
        return acc

    def q8_0(self, x, p, prep):
        bs = self._neon_dot(x, em_codes(p["qs"]).astype(F32), 32)
        return self._accumulate_blocks(bs, em_scale(p["d"], 1))

    def gemm(self, a, b, dtype="F32"):
        """The dense kernels (fp32_matmul.c, bf16_matmul.c, fp16_matmul.c): i-p-j, each
        C element from +0 with p ascending; `vfmaq_f32` over 4 columns (fp32) or gcc's
        contraction of `c += a*b` (bf16, fp16, the column tail): c = fma(a[i,p], b[p,j], c).
        fp16's column tiles and decoded rows change no element's order. fused_final=False:
        c + a*b rounded twice (a build without -ffast-math contraction)."""
        return dense_gemm(a, b, fused=self.fused)

    def bitnet_tq2_0(self, act, act_scale, codes, d):
        """bitnet_gemv.c (skainet_bitnet_gemv_tq2_0): per TQ2_0 block an exact int32 sum of
        code*activation (`sdot`, or the scalar tail block; codes in {-1, 0, 1, 2}), then
        sum = fma((float)partial, d, sum) over the blocks in order, then sum*activation_scale
        (fused_final=False: sum + partial*d rounded twice). act: int8 (batch, blocks*256)
        zero-padded; codes: int8 (rows, blocks, 256); d: float32 (rows, blocks)."""
        partial = np.einsum("bke,rke->bkr", act.reshape(act.shape[0], -1, 256).astype(np.int64),
                            codes.astype(np.int64)).astype(F32)  # exact: |partial| < 2**24
        acc = np.zeros((act.shape[0], codes.shape[0]), F32)
        for blk in range(codes.shape[1]):
            term, scale = partial[:, blk, :], d[None, :, blk]
            acc = fma32(term, scale, acc) if self.fused else fadd(acc, fmul(term, scale))
        return fmul(acc, act_scale[:, None])

    def ternary_f32(self, x, values):
        """skainet_ternary_f32.c over the vendored NeoGPU hs_ml_ternary_neon.c
        (anjaustin/neogpu at 083710a9, the version exporting the three symbols SKaiNET's
        vendor README names), `proj_rows`: values code - 1 from its 256-entry LUT (code 3
        gives +2), `lut_dot`. Its 4 threads split rows only. values: float32 (rows, K)."""
        return lut_dot(x, values)

    #: NeoGPU's plane weights W1..W3, float32 constants 1/3, 1/9, 1/27
    PLANE_WEIGHTS: ClassVar[tuple[np.float32, ...]] = tuple(
        F32(1.0) / F32(v) for v in (3.0, 9.0, 27.0))

    def lmhead_stage1(self, x, planes, row_scale):
        """hs_ml_lmhead_stage1 (same file), `lmhead_stage1_rows`: per element
        u = fma(v3, 1/27, fma(v2, 1/9, fma(v1, 1/3, v0))) of the four planes' LUT values
        (`vfmaq_n_f32`), `lut_dot` of u with x, then times the row scale. planes: float32
        (4, rows, K); row_scale: float32 (rows,) as the kernel decodes it."""
        u = planes[0]
        for plane, weight in zip(planes[1:], self.PLANE_WEIGHTS, strict=True):
            u = fma32(plane, weight, u)
        return fmul(lut_dot(x, u), row_scale[None, :])

    def q4_0(self, x, p, prep):
        return self.q8_0(x, p, prep)  # unpack gives the signed codes nibble - 8, in order

    def _q5_sums(self, x, p, offset):
        codes = (em_codes(p["qs"]).astype(np.int16) + offset).astype(F32)  # unsigned 0..31
        return self._neon_dot(x, codes, 32), self._input_sums(x, 32)

    def q5_0(self, x, p, prep):
        code_dot, input_sum = self._q5_sums(x, p, 16)
        t = fsub(code_dot, fmul(F32(16), input_sum))
        return self._accumulate_blocks(t, em_scale(p["d"], 1))

    def q5_1(self, x, p, prep):
        code_dot, input_sum = self._q5_sums(x, p, 0)
        d, m = em_scale(p["d"], 1), em_scale(p["m"], 1)
        if not self.fused:
            return seq_add(fadd(fmul(d, code_dot), fmul(m, input_sum)))
        acc = np.zeros(code_dot.shape[1:], F32)
        row_major = self.opts["kernel_order"] == "rm"
        for b in range(code_dot.shape[0]):
            if row_major:
                acc = fadd(acc, fma32(d[b], code_dot[b], fmul(m[b], input_sum[b])))
            else:
                acc = fma32(m[b], input_sum[b], fma32(d[b], code_dot[b], acc))
        return acc

    def q5_k(self, x, p, prep):
        xg = em_x(x, 256, 32)
        nb = xg.shape[0]
        xf = xg.reshape(nb * 8, 32, *xg.shape[3:])
        cf = em_codes(p["qs"], 32).astype(F32)
        cf = cf.reshape(nb * 8, 32, *cf.shape[3:])
        code_sum = reduce_pairwise(lane_fma(xf, cf, 4)).reshape(nb, 8, -1, cf.shape[-1])
        input_sum = reduce_pairwise(lane_add(xf, 4)).reshape(nb, 8, -1, 1)
        local = np.zeros(code_sum[:, 0].shape, F32)
        if self.fused:
            # gcc 12 -O3 -ffast-math factors d and dmin out of each lo/hi group pair:
            # A = sc_lo*cs_lo + sc_hi*cs_hi, B = mn_lo*(dmin*is_lo) + mn_hi*(dmin*is_hi),
            # local += A*d - B (fused where gcc fuses)
            d, dmin = em_scale(p["d"], 1), em_scale(p["dmin"], 1)
            sc, mn = em_scale(p["sc"], 1).astype(F32), em_scale(p["mn"], 1).astype(F32)
            for lo, hi in ((0, 1), (2, 3), (4, 5), (6, 7)):
                a = fma32(sc[:, lo], code_sum[:, lo], fmul(sc[:, hi], code_sum[:, hi]))
                b = fma32(fmul(dmin, input_sum[:, lo]), mn[:, lo],
                          fmul(mn[:, hi], fmul(dmin, input_sum[:, hi])))
                local = fadd(local, fma32(a, d, -b))
        else:
            scale, offset = kquant_scale_offset(p)
            for g in range(8):
                term = fsub(fmul(code_sum[:, g], scale[:, g]), fmul(input_sum[:, g], offset[:, g]))
                local = fadd(local, term)
        return seq_add(local)

    def _quantize(self, x):
        """The Q4_K/Q6_K kernels' activation quantizer as this build compiles it."""
        return activations.skainet_native_q8(x, fast_math=self.fused)

    def prepare(self, fmt, x):
        if fmt in self.quantizes_activations:
            return self._quantize(x)
        return None

    def activation_values(self, fmt, x):
        if fmt not in self.quantizes_activations:
            return None
        a = self._quantize(x)
        with np.errstate(all="ignore"):
            return (a["qs"].astype(F32) * a["d"][..., None]).reshape(x.shape)

    def q4_k(self, x, p, prep):
        q8 = prep["qs"].astype(np.int32)  # (batch, nb, 256)
        nb = q8.shape[1]
        codes = p["qs"].astype(np.int32) * np.repeat(p["sc"].astype(np.int32), 32, axis=-1)
        big_a = int_dot(q8.transpose(1, 0, 2), codes.transpose(1, 2, 0))  # (nb, batch, rows)
        sums = q8.reshape(q8.shape[0], nb, 8, 32).sum(axis=-1)  # (batch, nb, 8)
        big_b = int_dot(sums.transpose(1, 0, 2), p["mn"].astype(np.int32).transpose(1, 2, 0))
        fa, fb = as_f32(big_a), as_f32(big_b)
        d, dmin = em_scale(p["d"], 1), em_scale(p["dmin"], 1)
        di = prep["d"].T[:, :, None]  # (nb, batch, 1)
        acc = np.zeros(fa.shape[1:], F32)
        for b in range(nb):
            if self.fused:
                u = fma32(fa[b], d[b], -fmul(fb[b], dmin[b]))
                acc = fma32(u, di[b], acc)
            else:
                term = fmul(di[b], fsub(fmul(d[b], fa[b]), fmul(dmin[b], fb[b])))
                acc = fadd(acc, term)
        return acc

    def q6_k(self, x, p, prep):
        q8 = prep["qs"].astype(np.int32)
        nb = q8.shape[1]
        codes = p["qs"].astype(np.int32) * np.repeat(p["sc"].astype(np.int32), 16, axis=-1)
        fw = as_f32(int_dot(q8.transpose(1, 0, 2), codes.transpose(1, 2, 0)))
        d = em_scale(p["d"], 1)
        di = prep["d"].T[:, :, None]
        acc = np.zeros(fw.shape[1:], F32)
        for b in range(nb):
            if self.fused:
                acc = fma32(fmul(d[b], di[b]), fw[b], acc)
            else:
                acc = fadd(acc, fmul(fmul(d[b], di[b]), fw[b]))
        return acc


# ----------------------------------------------------------------------------------------
# SKaiNET native C kernels on x86-64 (SSE2, the scalar C auto-vectorized)


@register
class SkainetX86(SkainetNeon):
    """SKaiNET's native C kernels as built for linux-x86_64 (skainet-backend-native-cpu/
    native/CMakeLists.txt: -O3 -ffast-math -funroll-loops, no -march): the NEON bodies compile
    out, the scalar C is vectorized for SSE2 (4 float lanes) and reassociated, and there is
    no FMA (every product and sum rounded). Read from the disassembly of Debian's gcc 12.2.0
    build of these sources (SKaiNET-developers/SKaiNET, src/: q8_0_matmul.c, q4_0_matmul.c,
    q5_1_matmul.c, q5k_matmul.c, q4k_matmul.c, q6k_matmul.c with the shared block terms and
    skainet_row_threads.c; q5_0_matmul.c at 3127b31b, feed order only; the dense
    fp32_matmul.c, bf16_matmul.c, fp16_matmul.c) and checked bit for bit against it.
    Another compiler, or another gcc, may reassociate differently.

    `sse_sum32` is the in-block sum of a 32-element loop; `kernel_order` as skainet_neon's.

    - Q8_0: block_sum = sse_sum32(x*code); acc = acc + block_sum*d.
    - Q4_0: pair sums s_k = x[k]*(lo_k-8) + x[k+16]*(hi_k-8), k = 0..15, combined by
      `pair_chain`; acc = acc + block_sum*d.
    - Q5_0 (feed only: the row-major entry's source was not read): code_dot = the pair
      sums x[k]*c_k + x[k+16]*c_{k+16} (unsigned 5-bit codes) added in order; input_sum =
      sse_sum32(x); acc = acc + (code_dot - 16*input_sum)*d.
    - Q5_1: code_dot and input_sum as Q5_0; feed: acc = (acc + m*input_sum) + d*code_dot;
      row-major: acc = acc + (d*code_dot + m*input_sum).
    - Q5_K: per 32-group code_sum = sse_sum32(x*code), input_sum = sse_sum32(x); per lo/hi
      group pair A = sc_lo*cs_lo + sc_hi*cs_hi, B = (is*dmin)*mn, local = (local - B_hi) +
      (A*d - B_lo); acc = acc + local.
    - Q4_K / Q6_K: skainet_neon's order with fused_final=False (integer dots, then
      acc + d_in*(d*A - dmin*B) and acc + (d*d_in)*W), the activations quantized as there
      but lrintf is cvtss2si (a non-finite x*inv gives code 0).
    - dense GEMMs (`gemm`): per C element c + a*b from +0, p ascending, rounded twice; the
      NaN payloads by SSE's operand order per column (`x86_dense_first`).
    """

    name = "skainet_x86"
    #: the compiler whose build the order was read from
    ESTABLISHED_ON: ClassVar[str] = "gcc 12.2.0 (Debian 12.2.0-14)"
    description = ("SKaiNET native C kernel on x86-64 (gcc -O3 -ffast-math, SSE2): in-block "
                   "sums reassociated over 4 lanes, no FMA (param kernel_order)")
    params: ClassVar[dict[str, Any]] = {"kernel_order": "feed"}
    #: (format, kernel_order) pairs whose x86 order was not established, and why
    UNREAD: ClassVar[dict[tuple[str, str], str]] = {
        ("Q5_0", "rm"): "the source of skainet_q5_0_matmul_rm was not read, so its x86 "
                        "order is not established"}

    def check_opts(self):
        self._check_kernel_order()  # no fused_final: x86-64 has no FMA here

    def check_format(self, fmt):
        super().check_format(fmt)
        why = self.UNREAD.get((fmt, self.opts["kernel_order"]))
        if why:
            raise OracleError(f"semantics 'skainet_x86' has no kernel for {fmt} with "
                              f"kernel_order={self.opts['kernel_order']!r}: {why}")

    @property
    def fused(self) -> bool:
        return False

    def _quantize(self, x):
        return activations.skainet_native_q8(x, fast_math=True, conversion="x86")

    @property
    def _row_major(self) -> bool:
        return self.opts["kernel_order"] == "rm"

    def _not_read(self, kernel: str) -> None:
        raise OracleError(f"semantics 'skainet_x86' has no order for {kernel}: its x86-64 "
                          "build was not read")

    def gemm(self, a, b, dtype="F32"):
        """The dense kernels (fp32_matmul.c, bf16_matmul.c, fp16_matmul.c): gcc vectorizes
        the j loop, so every C element keeps its own accumulator from +0 (memset) with p
        ascending, c = c + a[i,p]*b[p,j] rounded twice (mulps then addps, no FMA): the
        source order, exactly skainet_scalar's. fp16's branch-free decode is exact (its one
        float subtraction, 2**-14*(1 + m/1024) - 2**-14, is exact and NaN payloads pass
        through, quieted by the product). What the vectorization does decide is which
        operand an SSE instruction takes first, and so which NaN payload survives when
        both are NaN (`x86_dense_first`)."""
        return dense_gemm(a, b, fused=False, sse_first=x86_dense_first(dtype, b.shape[1]))

    def bitnet_tq2_0(self, act, act_scale, codes, d):
        self._not_read("the BitNet TQ2_0 GEMV")

    def ternary_f32(self, x, values):
        self._not_read("the ternary GEMV")

    def lmhead_stage1(self, x, planes, row_scale):
        self._not_read("the ternary lm-head stage 1")

    def q8_0(self, x, p, prep):
        bs = sse_sum32(fmul(em_x(x, 32), em_codes(p["qs"]).astype(F32)))
        return seq_add(fmul(bs, em_scale(p["d"], 1)))

    def q4_0(self, x, p, prep):
        t = fmul(em_x(x, 32), em_codes(p["qs"]).astype(F32))
        return seq_add(fmul(pair_chain(fadd(t[:, :16], t[:, 16:])), em_scale(p["d"], 1)))

    def _q5_sums(self, x, p, offset):
        xe = em_x(x, 32)
        t = fmul(xe, (em_codes(p["qs"]).astype(np.int16) + offset).astype(F32))
        return seq_add(np.moveaxis(fadd(t[:, :16], t[:, 16:]), 1, 0)), sse_sum32(xe)

    def q5_0(self, x, p, prep):
        code_dot, input_sum = self._q5_sums(x, p, 16)
        return seq_add(fmul(fsub(code_dot, fmul(F32(16), input_sum)), em_scale(p["d"], 1)))

    def q5_1(self, x, p, prep):
        code_dot, input_sum = self._q5_sums(x, p, 0)
        dot = fmul(em_scale(p["d"], 1), code_dot)
        offset = fmul(em_scale(p["m"], 1), input_sum)
        if self._row_major:
            return seq_add(fadd(dot, offset))
        acc = np.zeros(dot.shape[1:], F32)
        for b in range(dot.shape[0]):
            acc = fadd(fadd(acc, offset[b]), dot[b])
        return acc

    def q5_k(self, x, p, prep):
        xg = em_x(x, 256, 32)  # (nb, 8, 32, batch, 1)
        nb = xg.shape[0]
        flat = xg.reshape(nb * 8, 32, *xg.shape[3:])
        codes = em_codes(p["qs"], 32).astype(F32)
        code_sum = sse_sum32(fmul(flat, codes.reshape(nb * 8, 32, *codes.shape[3:])))
        code_sum = code_sum.reshape(nb, 8, *code_sum.shape[1:])  # (nb, 8, batch, rows)
        input_sum = sse_sum32(flat).reshape(nb, 8, -1, 1)
        d, dmin = em_scale(p["d"], 1), em_scale(p["dmin"], 1)
        sc, mn = em_scale(p["sc"], 1).astype(F32), em_scale(p["mn"], 1).astype(F32)
        local = np.zeros(code_sum[:, 0].shape, F32)
        for lo, hi in ((0, 1), (2, 3), (4, 5), (6, 7)):
            a = fadd(fmul(sc[:, lo], code_sum[:, lo]), fmul(sc[:, hi], code_sum[:, hi]))
            b_lo = fmul(fmul(input_sum[:, lo], dmin), mn[:, lo])
            b_hi = fmul(fmul(input_sum[:, hi], dmin), mn[:, hi])
            local = fadd(fsub(local, b_hi), fsub(fmul(a, d), b_lo))
        return seq_add(local)


def x86_dense_first(dtype: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(a_first, c_first), bool (n,) each: the columns of C whose product a[i,p]*b[p,j] the
    x86-64 dense kernel computes with a as the first SSE source (else b), and whose sum
    with c as the first source (else the product), by where gcc 12.2's vectorized loop and
    its tails put them (read from the build's disassembly, probed with NaN payloads):

    - F32: 4-wide body, then a 2-wide and a scalar step; the scalar step (the last column
      when n is odd) takes a first; every sum takes the product first.
    - BF16: 8-wide body; of the remaining r = n % 8 columns, a 4-wide step (r >= 4) takes
      a then the product first in its lanes 0 and 1 and b then c first in lanes 2 and 3;
      a 2-wide step b first; the last column when r % 4 == 3 a first (r % 4 == 1: b).
    - F16: per 512-column tile (the decode buffer), 4-wide body; the tile's last w % 4
      columns (w its width) take a first; every sum takes the product first.
    """
    j = np.arange(n)
    none = np.zeros(n, bool)
    if dtype == "F32":
        return (n % 2 == 1) & (j == n - 1), none
    if dtype == "BF16":
        base = n - n % 8
        step4 = n % 8 >= 4
        return (step4 & ((j == base) | (j == base + 1))) | ((n % 4 == 3) & (j == n - 1)), \
            step4 & ((j == base + 2) | (j == base + 3))
    if dtype == "F16":
        start = j - j % X86_FP16_TILE
        width = np.minimum(X86_FP16_TILE, n - start)
        return j - start >= width - width % 4, none
    raise OracleError(f"dense weight type {dtype!r}: expected one of F32, BF16, F16")


#: the columns skainet_fp16_matmul decodes at a time (its stack buffer)
X86_FP16_TILE = 512


# ----------------------------------------------------------------------------------------
# ggml CPU (generic C order)


@register
class Ggml(Semantics):
    """ggml's CPU matmul as its generic C code computes it (ggml-cpu/quants.c:
    quantize_row_q8_0/q8_1/q8_K (ggml-quants.c *_ref), ggml_vec_dot_q8_0_q8_0_generic,
    _q4_0_q8_0_generic, _q5_0_q8_0_generic, _q5_1_q8_1_generic, _q4_K_q8_K_generic,
    _q5_K_q8_K_generic, _q6_K_q8_K_generic). Activations are quantized first (Q8_0 for
    Q4_0/Q5_0/Q8_0, Q8_1 for Q5_1, Q8_K for the K-quants); each block's integer dot is exact;
    the float combination is, per block in order, from sumf = 0:

    - Q8_0: sumf += sumi*(d_w*d_x);   Q4_0: sumf += (sumi*d_w)*d_x;
    - Q5_0: sumf += (d_w*d_x)*sumi;   Q5_1: sumf += (d_w*d_x)*sumi + m_w*s_x;
    - Q4_K/Q5_K: d = d_w*d_x; sums[l] += d*aux32[l] over 8 integer lanes (lane l: elements
      = l mod 8); sumf -= (dmin_w*d_x)*sum(bsums*mins); at the end sumf += sums[0..7] in order;
    - Q6_K: sums[l] += (d_w*d_x)*aux32[l]; sumf = sums[0] + ... + sums[7].

    `rounding` selects the Q8_0/Q8_1 activation quantizer: "roundf" (the reference, ties away
    from zero, what the x86 build without SIMD runs), "even" (ARM NEON `vcvtnq`) or "x86"
    (the AVX/AVX2 build llama.cpp runs on x86: id = 127/amax instead of 1/d, ties to even;
    ggml-cpu/arch/x86/quants.c quantize_row_q8_0/q8_1). Q8_K always uses nearest_int (ties
    to even; x86's quantize_row_q8_K is the reference one).
    """

    name = "ggml"
    description = ("ggml CPU path: activations quantized (Q8_0/Q8_1/Q8_K), exact integer block "
                   "dots, float combination in the generic C order (param rounding)")
    params: ClassVar[dict[str, Any]] = {"rounding": "roundf"}
    quantizes_activations: ClassVar[frozenset[str]] = frozenset(
        {"Q8_0", "Q4_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"})

    def check_opts(self):
        if self.opts["rounding"] not in activations.ROUNDINGS:
            raise OracleError(f"semantics 'ggml': rounding must be one of "
                              f"{', '.join(activations.ROUNDINGS)}, got {self.opts['rounding']!r}")

    def prepare(self, fmt, x):
        if fmt in ("Q4_K", "Q5_K", "Q6_K"):
            return activations.ggml_q8_k(x)
        if fmt == "Q5_1":
            return activations.ggml_q8_1(x, self.opts["rounding"])
        return activations.ggml_q8_0(x, self.opts["rounding"])

    def activation_values(self, fmt, x):
        a = self.prepare(fmt, x)
        with np.errstate(all="ignore"):
            return (a["qs"].astype(F32) * a["d"][..., None]).reshape(x.shape)

    @staticmethod
    def _sumi(a, p):
        """Exact per-block integer dots, as float32 (nb, batch, rows)."""
        return as_f32(int_dot(a["qs"].transpose(1, 0, 2), p["qs"].transpose(1, 2, 0)))

    @staticmethod
    def _scales(a, p, key="d"):
        return a["d"].T[:, :, None], em_scale(p[key], 1)  # (nb, batch, 1), (nb, 1, rows)

    def q8_0(self, x, p, a):
        sumi = self._sumi(a, p)
        dx, dw = self._scales(a, p)
        return seq_add(fmul(sumi, fmul(dw, dx)))

    def q4_0(self, x, p, a):
        sumi = self._sumi(a, p)
        dx, dw = self._scales(a, p)
        return seq_add(fmul(fmul(sumi, dw), dx))

    def q5_0(self, x, p, a):
        sumi = self._sumi(a, p)
        dx, dw = self._scales(a, p)
        return seq_add(fmul(fmul(dw, dx), sumi))

    def q5_1(self, x, p, a):
        sumi = self._sumi(a, p)
        dx, dw = self._scales(a, p)
        sx, mw = a["s"].T[:, :, None], em_scale(p["m"], 1)
        return seq_add(fadd(fmul(fmul(dw, dx), sumi), fmul(mw, sx)))

    @staticmethod
    def _aux32(a, p, group):
        """aux32[l] per block: sum over the block's elements e with e % 8 == l of
        scale(e) * q8[e] * code[e], exact; float32 (nb, 8, batch, rows)."""
        q8 = a["qs"].astype(np.int32)  # (batch, nb, 256)
        nb = q8.shape[1]
        sc = np.repeat(p["sc"].astype(np.int32), group, axis=-1)
        w = p["qs"].astype(np.int32) * sc  # (rows, nb, 256)
        q8l = q8.reshape(q8.shape[0], nb, 32, 8).transpose(1, 3, 0, 2)  # (nb, 8, batch, 32)
        wl = w.reshape(w.shape[0], nb, 32, 8).transpose(1, 3, 2, 0)  # (nb, 8, 32, rows)
        return as_f32(int_dot(q8l, wl))

    def _kquant_lanes(self, x, p, a, group):
        aux = self._aux32(a, p, group)  # (nb, 8, batch, rows)
        d = fmul(em_scale(p["d"], 1), a["d"].T[:, :, None])  # (nb, batch, rows)
        sums = np.zeros(aux.shape[1:], F32)
        for b in range(aux.shape[0]):
            sums = fadd(sums, fmul(d[b], aux[b]))
        return sums, d

    def _kquant_min(self, x, p, a):
        sums, _ = self._kquant_lanes(x, p, a, 32)
        bs = a["bsums"].reshape(*a["bsums"].shape[:2], 8, 2).sum(axis=-1)  # (batch, nb, 8)
        sumi = as_f32(int_dot(bs.transpose(1, 0, 2), p["mn"].astype(np.int32).transpose(1, 2, 0)))
        dmin = fmul(em_scale(p["dmin"], 1), a["d"].T[:, :, None])
        sumf = np.zeros(sums.shape[1:], F32)
        for b in range(sumi.shape[0]):
            sumf = fsub(sumf, fmul(dmin[b], sumi[b]))
        return seq_add(sums, sumf)

    def q4_k(self, x, p, a):
        return self._kquant_min(x, p, a)

    def q5_k(self, x, p, a):
        return self._kquant_min(x, p, a)

    def q6_k(self, x, p, a):
        sums, _ = self._kquant_lanes(x, p, a, 16)
        return seq_add(sums)


#: semantics name -> one-line description
SEMANTICS: dict[str, str] = {name: cls.description for name, cls in REGISTRY.items()}
