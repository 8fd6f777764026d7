"""skainet_x86 on hand-checked cases: blocks and activations chosen so that the orders a
compiler could pick give different floats, and the expected value worked out by hand for
the order gcc 12.2.0 -O3 -ffast-math gives SKaiNET's C kernels on x86-64 (SSE2, no FMA).

Each case names what it pins and what the other orders would give; B = 2**30, so that
B + 1 rounds back to B in float32 (the spacing there is 128)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_ref import matmul_wt
from kernels_ref.activations import skainet_native_q8
from oracle import OracleError, unpack

F = np.float32
B = 2.0**30
ONE = (0x00, 0x3C)  # fp16 1.0, little-endian


def block(size: int, **at: object) -> np.ndarray:
    """One block of `size` bytes: zeros, with the byte values given as {offset: value(s)}."""
    raw = np.zeros(size, np.uint8)
    for key, value in at.items():
        start = int(key.removeprefix("b"))
        vals = np.atleast_1d(np.asarray(value, np.uint8))
        raw[start : start + vals.size] = vals
    return raw


def run(fmt: str, raw: np.ndarray, x: dict[int, float], in_dim: int,
        kernel_order: str = "feed", semantics: str = "skainet_x86", **opts) -> float:
    """The one output of a single row `raw` (row-major bytes) for activations zero but `x`."""
    xs = np.zeros(in_dim, F)
    for k, v in x.items():
        xs[k] = v
    extra = {"kernel_order": kernel_order} if semantics in ("skainet_x86", "skainet_neon") \
        else {}
    y = matmul_wt(xs, raw[None, :], fmt, 1, in_dim, semantics=semantics, **extra, **opts)
    return float(y[0])


def test_q8_0_lanes_combine_as_l0_plus_l2_plus_l1_plus_l3() -> None:
    """Codes 1, d 1; x = B, 1, -B, 1 in lanes 0..3: (l0+l2)+(l1+l3) = 2, where the
    adjacent-pair tree (NEON's faddp) gives 0 and a sequential sum 1."""
    raw = block(34, b0=ONE, b2=[1] * 32)
    x = {0: B, 1: 1.0, 2: -B, 3: 1.0}
    assert run("Q8_0", raw, x, 32) == 2.0
    assert run("Q8_0", raw, x, 32, semantics="skainet_neon") == 0.0


def test_q8_0_partial_vectors_combine_in_pairs() -> None:
    """All in lane 0: x[0] = B, x[4] = 1, x[8] = -B, x[12] = 1 are partials P0..P3, summed
    (P0+P1)+(P2+P3) = 0; in order they would give 1, exactly 2."""
    raw = block(34, b0=ONE, b2=[1] * 32)
    assert run("Q8_0", raw, {0: B, 4: 1.0, 8: -B, 12: 1.0}, 32) == 0.0
    assert run("Q8_0", raw, {0: B, 4: 1.0, 8: -B, 12: 1.0}, 32, semantics="exact") == 2.0


@pytest.mark.parametrize("kernel_order", ["feed", "rm"])
def test_q4_0_pair_sums_chain(kernel_order: str) -> None:
    """Codes 1 (nibbles 9), d 1: pair sums s_k = x[k] + x[k+16] chained as
    ((s0+s1)+(s2+s3))+...: x = B, 1, -B, 1 gives 0, where Q8_0's lane order gives 2 and a
    sequential sum 1."""
    raw = block(18, b0=ONE, b2=[0x99] * 16)
    assert run("Q4_0", raw, {0: B, 1: 1.0, 2: -B, 3: 1.0}, 32, kernel_order) == 0.0


def test_q5_0_code_dot_in_order_input_sum_in_lanes() -> None:
    """Codes 17 (weights 1), d 1; x = B, 1, -B, 1. The code dot adds the pair sums in order:
    ((17B + 17) - 17B) + 17 = 17; the input sum in lanes: 2; (17 - 16*2)*1 = -15 (exact 2;
    with both in lanes 2; with both in order 1)."""
    raw = block(22, b0=ONE, b2=[0xFF] * 4, b6=[0x11] * 16)
    assert unpack("Q5_0", raw[None, :])["qs"][0, 0, 0] == 1  # code 17 - 16
    assert run("Q5_0", raw, {0: B, 1: 1.0, 2: -B, 3: 1.0}, 32) == -15.0


def test_q5_0_row_major_is_refused_not_guessed() -> None:
    with pytest.raises(OracleError, match="skainet_q5_0_matmul_rm was not read"):
        run("Q5_0", block(22, b0=ONE), {}, 32, kernel_order="rm")


@pytest.mark.parametrize("kernel_order,want", [("feed", 1.0), ("rm", 0.0)])
def test_q5_1_block_term_meets_the_accumulator(kernel_order: str, want: float) -> None:
    """Block 0 (d 1, m 0, code[0] 1) leaves acc = B. Block 1 (d 1, m 1, code[1] 1):
    x[32] = -B, x[33] = 1 give m*input_sum = -B (the 1 rounds away) and d*code_dot = 1.
    Feed order: (acc + m*is) + d*cd = 1; row-major: acc + (d*cd + m*is) = 0; exact 2."""
    b0 = block(24, b0=ONE, b8=[0x01])
    b1 = block(24, b0=ONE, b2=ONE, b8=[0x00, 0x01])
    raw = np.concatenate([b0, b1])
    got = run("Q5_1", raw, {0: B, 32: -B, 33: 1.0}, 64, kernel_order)
    assert got == want


@pytest.mark.parametrize("kernel_order", ["feed", "rm"])
def test_q5_k_group_pair_combination(kernel_order: str) -> None:
    """d = dmin = 1, sub-blocks 0 and 1 with scale 1 and min 1, code 1 at x[0] and x[32]:
    x[0] = B, x[32] = 1. A = cs_lo + cs_hi = B (the 1 rounds away), B_lo = B, B_hi = 1;
    (local - B_hi) + (A*d - B_lo) = -1. The source's order, group by group, gives 0, the
    groups' minima swapped 0; exact 0."""
    raw = block(176, b0=ONE, b2=ONE, b4=[1, 1, 0, 0, 1, 1], b48=[0x11])
    p = unpack("Q5_K", raw[None, :])
    assert p["sc"][0, 0, :2].tolist() == [1, 1] and p["mn"][0, 0, :2].tolist() == [1, 1]
    assert p["qs"][0, 0, 0] == 1 and p["qs"][0, 0, 32] == 1
    assert run("Q5_K", raw, {0: B, 32: 1.0}, 256, kernel_order) == -1.0
    assert run("Q5_K", raw, {0: B, 32: 1.0}, 256, semantics="skainet_scalar") == 0.0


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K"])
def test_quantizer_converts_like_cvtss2si(fmt: str) -> None:
    """maxabs = 1e-38: 127/maxabs overflows, x*inv is +inf. x86's cvtss2si gives the integer
    indefinite (low 32 bits 0: code 0, output 0); AArch64 saturates (low bits -1)."""
    x = np.zeros((1, 256), F)
    x[0, 0] = 1e-38
    assert skainet_native_q8(x, conversion="x86")["qs"][0, 0, 0] == 0
    assert skainet_native_q8(x, conversion="aarch64")["qs"][0, 0, 0] == -1
    size = {"Q4_K": 144, "Q6_K": 210}[fmt]
    raw = block(size, b0=ONE, b4=[1] * 12, b16=[0x11] * 128) if fmt == "Q4_K" else \
        block(size, b0=[0x11] * 128, b192=[1] * 16, b208=ONE)
    assert run(fmt, raw, {0: 1e-38}, 256) == 0.0
    assert run(fmt, raw, {0: 1e-38}, 256, semantics="skainet_neon", fused_final=False) != 0.0


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K"])
def test_quantizing_kernels_are_neon_without_fma_on_finite_activations(fmt: str) -> None:
    rng = np.random.default_rng(3)
    from oracle import quantize

    raw = quantize(fmt, rng.standard_normal((6, 512)).astype(F))
    x = rng.standard_normal((2, 512)).astype(F)
    for order in ("feed", "rm"):
        x86 = matmul_wt(x, raw, fmt, 6, 512, semantics="skainet_x86", kernel_order=order)
        neon = matmul_wt(x, raw, fmt, 6, 512, semantics="skainet_neon", fused_final=False,
                         kernel_order=order)
        assert np.array_equal(x86.view(np.uint32), neon.view(np.uint32))


# -- the dense GEMMs (fp32_matmul.c, bf16_matmul.c, fp16_matmul.c) ---------------------------

QNAN_A, QNAN_C, SNAN_B = 0x7FC0000A, 0x7FC0000C, 0x7F80000B  # SNAN_B quiets to 0x7FC0000B


def gemm_bits(a: list[list[float]] | np.ndarray, b: np.ndarray, dtype: str = "F32",
              semantics: str = "skainet_x86", **opts) -> np.ndarray:
    """C's float32 bits for A (m, k) and B given as (k, n) float32 values (F32) or 16-bit
    patterns (BF16, F16)."""
    from kernels_ref import dense

    a = np.asarray(a, F) if not isinstance(a, np.ndarray) else a
    k, n = b.shape
    raw = np.ascontiguousarray(b, "<f4" if dtype == "F32" else "<u2").view(np.uint8)
    return dense.gemm(a, raw.reshape(-1), dtype, k, n, semantics, **opts).view(np.uint32)


def nan_f32(*bits: int) -> np.ndarray:
    return np.array(bits, np.uint32).view(F)


def test_dense_adds_p_ascending_from_plus_zero() -> None:
    """a = 1, B, -B against ones: ((0 + 1) + B) - B = 0 (1 + B rounds to B); p descending
    gives 1, as does the exact sum."""
    ones = np.ones((3, 1), F)
    assert gemm_bits([[1.0, B, -B]], ones).view(F)[0, 0] == 0.0
    assert gemm_bits([[1.0, B, -B]], ones, semantics="exact").view(F)[0, 0] == 1.0
    assert gemm_bits([[-1.0]], np.zeros((1, 1), F))[0, 0] == 0  # +0 + (-0) = +0


def test_dense_rounds_the_product_before_the_sum() -> None:
    """No FMA on x86-64 without -march: c = -(1 + 2**-11), then (1 + 2**-12)**2 rounds to
    1 + 2**-11 (a tie to even) before it is added: 0. Contracted into an FMA (the NEON
    build) it is the exact 2**-24."""
    a, b = [[-(1 + 2.0**-11), 1 + 2.0**-12]], np.array([[1.0], [1 + 2.0**-12]], F)
    assert gemm_bits(a, b).view(F)[0, 0] == 0.0
    assert gemm_bits(a, b, semantics="skainet_neon").view(F)[0, 0] == 2.0**-24


def test_dense_invalid_product_is_the_default_nan_and_subnormals_are_ieee() -> None:
    """inf*0 gives x86's default NaN 0xFFC00000; subnormal products and sums are kept (the
    kernels run with FTZ/DAZ off: 2**-140*1 + 2**-127*0.5 = 2**-128 + 2**-140 exactly)."""
    assert gemm_bits([[np.inf]], np.zeros((1, 1), F))[0, 0] == 0xFFC00000
    got = gemm_bits([[2.0**-140, 2.0**-127]], np.array([[1.0], [0.5]], F)).view(F)[0, 0]
    assert got == F(2.0**-128 + 2.0**-140) and got != 0.0


def test_fp16_decode_is_exact_and_keeps_nan_payloads() -> None:
    """The branch-free decode: 0x0001 = 2**-24, 0x83FF = -1023*2**-24 (subnormals, renormalised
    exactly), 0xFC00 = -inf, and the signalling NaN 0x7C01 keeps its payload, quieted by the
    product: 0x7FC02000."""
    b = np.array([[0x0001, 0x83FF, 0xFC00, 0x7C01]], np.uint16)
    got = gemm_bits([[1.0]], b, "F16")[0]
    assert got.view(F)[:3].tolist() == [2.0**-24, -1023 * 2.0**-24, -np.inf]
    assert got[3] == 0x7FC02000


def test_fp32_nan_operand_order_by_column() -> None:
    """a and b both NaN: SSE keeps the first source's payload. n = 3: columns 0 and 1 are the
    2-wide step (b first), column 2 the scalar step (a first)."""
    got = gemm_bits(nan_f32(QNAN_A).reshape(1, 1), nan_f32(SNAN_B, SNAN_B, SNAN_B)[None, :])
    assert [hex(v) for v in got[0]] == ["0x7fc0000b", "0x7fc0000b", "0x7fc0000a"]


def test_bf16_four_wide_tail_takes_operands_in_two_orders() -> None:
    """n = 4 (the 8-wide body never runs): lanes 0, 1 multiply a first and add the product
    first, lanes 2, 3 multiply b first and add c first. k = 1, a = NaN A, b = NaN B: A, A,
    B, B. k = 2, a = NaN A then NaN C, b = 1: c = A after p = 0, then the product C meets
    it: C, C, A, A."""
    b_nan = np.full((1, 4), 0x7F8B, np.uint16)  # a signalling bf16 NaN: 0x7FCB0000 quieted
    got = gemm_bits(nan_f32(QNAN_A).reshape(1, 1), b_nan, "BF16")[0]
    assert [hex(v) for v in got] == ["0x7fc0000a"] * 2 + ["0x7fcb0000"] * 2
    got = gemm_bits(nan_f32(QNAN_A, QNAN_C).reshape(1, 2), np.full((2, 4), 0x3F80, np.uint16),
                    "BF16")[0]
    assert [hex(v) for v in got] == ["0x7fc0000c"] * 2 + ["0x7fc0000a"] * 2


def test_dense_operand_order_tables() -> None:
    """Where each kernel's tails fall: fp16 per 512-column tile (the last n % 4 of each),
    bf16 after its 8-wide body, fp32 the odd last column."""
    from kernels_ref.semantics import x86_dense_first

    def cols(mask: np.ndarray) -> list[int]:
        return np.flatnonzero(mask).tolist()

    assert cols(x86_dense_first("F16", 515)[0]) == [512, 513, 514]
    assert cols(x86_dense_first("F16", 1027)[0]) == [1024, 1025, 1026]
    assert cols(x86_dense_first("F16", 512)[0]) == []
    assert cols(x86_dense_first("BF16", 15)[0]) == [8, 9, 14]
    assert cols(x86_dense_first("BF16", 15)[1]) == [10, 11]
    assert cols(x86_dense_first("BF16", 17)[0]) == []
    assert cols(x86_dense_first("F32", 7)[0]) == [6] and cols(x86_dense_first("F32", 8)[0]) == []
    with pytest.raises(OracleError, match="dense weight type 'Q8_0'"):
        x86_dense_first("Q8_0", 4)
