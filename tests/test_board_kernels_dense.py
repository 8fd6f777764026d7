"""The non-packed kernels SKaiNET's native archive exports (dense fp32/bf16/fp16 GEMM,
BitNet TQ2_0 GEMV, ternary GEMV and lm-head stage 1): kernels_ref's models against literal
loops, and `board kernel-parity` on the board-in-a-box with the project's fixture kernels
(fixtures/board/kernels: right; fixtures/board/kernels_wrong: one deliberately wrong per
kind), never SKaiNET's result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.board.build import fixture_kernel_archive
from harness.board.parity import kernel_parity
from harness.board.session import BoardSession
from harness.board.sim import BoardSim
from kernels_ref import dense, fma32
from oracle.cfloat import f32_to_fp16
from oracle.quants import quantize

ROOT = Path(__file__).resolve().parent.parent
NEW_FORMATS = "F32,BF16,F16,TQ2_0,TERNARY,TERNARY4"
MODELLED = ("skainet_fp32_matmul", "skainet_bf16_matmul", "skainet_fp16_matmul",
            "skainet_bitnet_gemv_tq2_0", "skainet_ternary_f32_gemv",
            "skainet_ternary_lmhead_stage1")
WRONG = ("skainet_fp32_matmul", "skainet_bitnet_gemv_tq2_0", "skainet_ternary_f32_gemv",
         "skainet_ternary_lmhead_stage1")
OVERRUN = "skainet_bf16_matmul"  # ignores c_stride: writes into the driver's guard cells


# -- kernels_ref models against literal loops ----------------------------------------------

def literal_gemm(a: np.ndarray, b: np.ndarray, fused: bool) -> np.ndarray:
    """Element by element, p ascending from +0, one float32 scalar at a time."""
    c = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            acc = np.float32(0)
            for p in range(a.shape[1]):
                acc = (fma32(a[i, p], b[p, j], acc) if fused
                       else np.float32(acc + np.float32(a[i, p] * b[p, j])))
            c[i, j] = acc
    return c


@pytest.mark.parametrize("fused", [True, False])
def test_gemm_models_match_literal_loops_and_differ(fused):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 40)).astype(np.float32)
    b = (rng.standard_normal((40, 5)) * 10.0 ** rng.uniform(-4, 4, (40, 5))).astype(np.float32)
    got = dense.gemm(a, b.tobytes(), "F32", 40, 5, fused_final=fused)
    assert np.array_equal(got.view(np.uint32), literal_gemm(a, b, fused).view(np.uint32))
    other = dense.gemm(a, b.tobytes(), "F32", 40, 5, fused_final=not fused)
    assert not np.array_equal(got, other)  # the two orders are told apart on these inputs
    scalar = dense.gemm(a, b.tobytes(), "F32", 40, 5, "skainet_scalar")
    assert np.array_equal(scalar, dense.gemm(a, b.tobytes(), "F32", 40, 5, fused_final=False))


def test_gemm_signed_zero_and_bound():
    """-1 * +0 from a +0 accumulator is +0 (IEEE fma); every order lies inside the bound."""
    b = np.zeros((1, 1), np.float32)
    c = dense.gemm(np.float32([[-1.0]]), b.tobytes(), "F32", 1, 1)
    assert c.view(np.uint32)[0, 0] == 0
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 300)).astype(np.float32)
    bb = rng.standard_normal((300, 7)).astype(np.float32)
    exact = dense.gemm(a, bb.tobytes(), "F32", 300, 7, "exact").astype(np.float64)
    bound = dense.gemm_bound(a, bb.tobytes(), "F32", 300, 7)
    rev = dense.gemm(a[:, ::-1].copy(), bb[::-1].tobytes(), "F32", 300, 7)
    for y in (dense.gemm(a, bb.tobytes(), "F32", 300, 7), rev):
        assert (np.abs(y - exact) <= bound).all()


def test_fp16_and_bf16_weights_decode_exactly():
    vals = np.float32([1.0, -2.5, 6e-8, -3e-5, 65504.0, 1e-40, -0.0, 3.0e38])
    halves = f32_to_fp16(vals)
    got = dense.dense_values(halves.astype("<u2").view(np.uint8), "F16", 1, 8)
    assert np.array_equal(got[0], halves.view(np.float16).astype(np.float32))
    bits = vals.view(np.uint32) >> 16
    got = dense.dense_values(bits.astype("<u2").view(np.uint8), "BF16", 1, 8)
    assert np.array_equal(got[0].view(np.uint32), (bits << 16).astype(np.uint32))


def test_bitnet_model_matches_a_literal_loop():
    rng = np.random.default_rng(5)
    out_dim, in_dim = 3, 300  # a whole block and a partial one
    w = np.zeros((out_dim, 512), np.float32)
    w[:, :in_dim] = rng.standard_normal((out_dim, in_dim))
    raw = quantize("TQ2_0", w)
    act = rng.integers(-128, 128, (2, in_dim)).astype(np.int8)
    scale = np.float32([0.013, 0.5])
    got = dense.bitnet_gemv(act, scale, raw, out_dim, in_dim)
    blocks = raw.reshape(out_dim, 2, 66)
    for r in range(out_dim):
        for b in range(2):
            acc = np.float32(0)
            for blk in range(2):
                qs, d = blocks[r, blk, :64], blocks[r, blk, 64:].view("<f2")[0].astype(np.float32)
                partial = 0
                for e in range(min(256, in_dim - 256 * blk)):
                    code = ((int(qs[32 * (e // 128) + e % 32]) >> (2 * ((e % 128) // 32))) & 3) - 1
                    partial += int(code) * int(act[b, 256 * blk + e])
                acc = fma32(np.float32(partial), d, acc)
            assert got[b, r] == np.float32(acc * scale[b])


def test_ternary_bounds_hold_for_any_order_and_catch_a_flipped_code():
    rng = np.random.default_rng(6)
    out_dim, in_dim = 4, 256
    codes = rng.integers(0, 3, (out_dim, in_dim))
    pb = (codes.reshape(out_dim, -1, 4) << np.array([0, 2, 4, 6])).sum(-1).astype(np.uint8)
    assert np.array_equal(dense.ternary_codes(pb.reshape(-1), out_dim, in_dim), codes - 1)
    x = rng.standard_normal((1, in_dim)).astype(np.float32)
    x[0, 0] = 1.0
    ref = dense.ternary_gemv(x, pb.reshape(-1), out_dim, in_dim)
    w = (codes - 1).astype(np.float32)
    fwd = np.zeros(out_dim, np.float32)
    for e in range(in_dim):
        fwd = (fwd + w[:, e] * x[0, e]).astype(np.float32)
    pairwise = (w * x).astype(np.float32)
    while pairwise.shape[1] > 1:
        pairwise = (pairwise[:, ::2] + pairwise[:, 1::2]).astype(np.float32)
    for y in (fwd, pairwise[:, 0]):
        assert (np.abs(y - ref["exact"][0].astype(np.float64)) <= ref["bound"][0]).all()
    flipped = fwd + np.where(w[:, 0] == 1, -1, 1).astype(np.float32)  # one code moved by 1
    assert (np.abs(flipped - ref["exact"][0].astype(np.float64)) > ref["bound"][0]).all()


def literal_lut_dot(x: np.ndarray, u: np.ndarray) -> float:
    """NeoGPU's LUT dot for one row, scalar by scalar, in its compiled order."""
    acc = np.zeros((4, 4), np.float32)
    nbytes = len(x) // 4
    for bi in range(nbytes):
        g = bi % 4 if bi < nbytes & ~3 else 0
        for lane in range(4):
            acc[g, lane] = fma32(u[4 * bi + lane], x[4 * bi + lane], acc[g, lane])
    lanes = [np.float32(acc[0, i] + np.float32(np.float32(acc[1, i] + acc[2, i]) + acc[3, i]))
             for i in range(4)]
    return np.float32(np.float32(lanes[0] + lanes[1]) + np.float32(lanes[2] + lanes[3]))


@pytest.mark.parametrize("in_dim", [48, 56, 256])  # whole groups of 4 bytes, and a tail
def test_ternary_models_match_literal_loops(in_dim):
    rng = np.random.default_rng(in_dim)
    out_dim = 3
    x = rng.standard_normal((2, in_dim)).astype(np.float32)
    planes = [rng.integers(0, 256, out_dim * in_dim // 4).astype(np.uint8) for _ in range(4)]
    scales = f32_to_fp16(np.float32([0.5, 0.031, 2.0]))
    got = dense.ternary_gemv_model(x, planes[0], out_dim, in_dim)
    lm = dense.lmhead_stage1_model(x, np.concatenate(planes), scales, out_dim, in_dim)
    third = [np.float32(1) / np.float32(v) for v in (3, 9, 27)]
    vals = [dense.ternary_codes(p, out_dim, in_dim).astype(np.float32) for p in planes]
    for r in range(out_dim):
        u = vals[0][r]
        for p in range(1, 4):
            u = fma32(vals[p][r], third[p - 1], u)
        scale = scales.view(np.float16).astype(np.float32)[r]
        for b in range(2):
            assert got[b, r] == literal_lut_dot(x[b], vals[0][r])
            assert lm[b, r] == np.float32(literal_lut_dot(x[b], u) * scale)


def test_lmhead_row_scale_decode_is_fp16_for_positive_normals():
    vals = np.float32([0.01, 0.5, 1.0, 3.25, 1000.0])
    bits = f32_to_fp16(vals)
    assert np.array_equal(dense.lmhead_row_scale(bits), bits.view(np.float16).astype(np.float32))


# -- board kernel-parity on the board-in-a-box -----------------------------------------------

def test_cli_kernel_parity_fixture_runs_every_new_kind():
    """`board kernel-parity --fixture` (it starts the board-in-a-box): every new kind's
    fixture bit-exact with its model, exit 0, labelled a fixture."""
    proc = subprocess.run([sys.executable, "-m", "harness", "board", "kernel-parity",
                           "--fixture", "--formats", NEW_FORMATS, "--shape",
                           "600x512,37x640x2,8x48", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["fixture"] and data["ok"] and "not SKaiNET's result" in data["summary"]
    verdicts = {(c["symbol"], tuple(c["shape"])): c["verdict"] for c in data["cases"]}
    shapes = {(600, 512, 1), (37, 640, 2), (8, 48, 1)}
    assert verdicts == {(s, sh): "bit-exact" for s in MODELLED for sh in shapes}
    assert data["inventory"]["not_modelled"] == {
        "skainet_smoke_double": "the FFI smoke test (output = 2*input), not a kernel"}
    assert "Traceback" not in proc.stderr


def test_cli_kernel_parity_fixture_wrong_fails_naming_each():
    """`board kernel-parity --fixture-wrong`: exit 1, every wrong kernel named FAIL on the
    terminal, the overrun with the driver's own words, labelled a fixture."""
    proc = subprocess.run([sys.executable, "-m", "harness", "board", "kernel-parity",
                           "--fixture-wrong", "--shape", "16x64x2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = proc.stdout
    assert "TEST FIXTURE" in out and "not SKaiNET's result" in out
    for symbol in (*WRONG, OVERRUN):
        assert re.search(rf"^  FAIL {symbol} .*16x64 b2: FAIL", out, re.M), symbol
    assert "wrote outside its output block" in out
    assert f"FAILING: {', '.join(sorted((*WRONG, OVERRUN)))}" in out
    assert "Traceback" not in proc.stderr


def test_cli_kernel_parity_needs_exactly_one_archive():
    proc = subprocess.run([sys.executable, "-m", "harness", "board", "kernel-parity",
                           "--fixture", "--fixture-wrong"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "give exactly one of --kernels-archive" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def wrong_parity():
    with BoardSim() as sim, BoardSession(sim.profile) as s:
        result = kernel_parity(s, fixture_kernel_archive(wrong=True),
                               shapes=((64, 256, 2), (37, 640, 2)))
    return result


@pytest.mark.parametrize("symbol", WRONG)
def test_wrong_fixture_kernel_fails_per_kind(wrong_parity, symbol):
    cases = [c for c in wrong_parity.cases if c.symbol == symbol]
    assert len(cases) == 2
    assert all(c.verdict == "FAIL" and c.mismatches for c in cases), [c.row() for c in cases]
    assert cases[0].row().startswith(f"{symbol}") and ": FAIL," in cases[0].row()


def test_dense_kernel_writing_outside_its_block_fails_naming_it(wrong_parity):
    cases = [c for c in wrong_parity.cases if c.symbol == OVERRUN]
    assert len(cases) == 2 and all(c.verdict == "FAIL" and c.failed_run for c in cases)
    assert all("wrote outside its output block" in c.row() for c in cases), cases[0].row()


def test_wrong_fixture_summary_names_each_wrong_kernel(wrong_parity):
    line = wrong_parity.summary()
    assert not wrong_parity.ok and line.startswith("[TEST FIXTURE")
    assert f"FAILING: {', '.join(sorted((*WRONG, OVERRUN)))}" in line


def test_bitnet_and_dense_cases_tell_fused_from_unfused():
    """The case data kernel-parity draws must separate the two orders, or a build without
    contraction would pass as bit-exact."""
    from harness.board.kernelkinds import OTHER_KERNELS
    from harness.board.parity import case_data

    rng = np.random.default_rng(0)
    for k in OTHER_KERNELS[:4]:
        _, _, ref = case_data(k, (600, 512, 1), rng)
        assert (ref["fused"] != ref["unfused"]).sum() >= 5, k.symbol


def test_inventory_names_why_each_other_symbol_is_not_run(tmp_path):
    """The helpers SKaiNET's archive exports next to its kernels are listed with what they
    are; an unknown `skainet_*` symbol still gets a reason; the new kinds are run."""
    from harness.board.build import CROSS_CC
    from harness.board.parity import inventory

    src = tmp_path / "helpers.c"
    src.write_text("void skainet_run_rows(void) {}\nint skainet_cpu_has_dotprod(void) "
                   "{ return 1; }\nvoid skainet_something_new(void) {}\n"
                   "void skainet_fp16_matmul(void) {}\n")
    obj = tmp_path / "helpers.o"
    subprocess.run([CROSS_CC, "-c", str(src), "-o", str(obj)], check=True)
    archive = tmp_path / "libskainet_kernels.a"
    subprocess.run(["aarch64-linux-gnu-ar", "rc", str(archive), str(obj)], check=True)
    inv = inventory(archive)
    assert [k.symbol for k in inv.run] == ["skainet_fp16_matmul"]
    assert inv.not_modelled["skainet_run_rows"].startswith("the row-range thread pool")
    assert inv.not_modelled["skainet_cpu_has_dotprod"] == "a CPU feature probe, not a kernel"
    assert "signature the driver knows" in inv.not_modelled["skainet_something_new"]


@pytest.mark.parametrize("call, message", [
    (lambda: dense.gemm(np.zeros((1, 4), np.float32), bytes(15), "F32", 4, 1),
     "F32 B [4 x 1]: expected 16 uint8 bytes, got 15"),
    (lambda: dense.gemm(np.zeros((1, 4), np.float32), bytes(8), "Q8_0", 4, 1),
     "dense weight type 'Q8_0'"),
    (lambda: dense.ternary_gemv(np.zeros((1, 6), np.float32), bytes(3), 2, 6),
     "in_dim 6 is not a multiple of 4"),
    (lambda: dense.bitnet_gemv(np.zeros((1, 256), np.int8), np.float32([1]), bytes(65), 1, 256),
     "TQ2_0 [1 x 256]: expected 66 uint8 bytes"),
])
def test_dense_models_refuse_bad_input_with_one_line(call, message):
    from oracle import OracleError

    with pytest.raises(OracleError, match=re.escape(message)):
        call()
