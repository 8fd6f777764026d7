"""The compiled twin (oracle.native) against the NumPy definitions, bit for bit.

Every semantics the twin accelerates (dequantize; matmul_wt under exact, skainet_scalar,
skainet_panama with every lane count and reduction, skainet_neon fused/unfused, feed/rm;
refmodel's `fast`) runs both ways on random shapes, on adversarial bytes (random scales
give subnormal, huge, Inf and NaN weights) and on the golden set; results must be the same
float32 bits. Two NaNs count as equal whatever their payloads: the models say nothing
about NaN payloads (kernels_ref.compare.ulp_distance treats them alike).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from harness.golden.verify import verify_set
from kernels_ref import matmul_wt
from oracle import INPUT_BLOCK_MAJOR, ROW_MAJOR, native, quantize, to_input_block_major
from oracle.quants import FORMATS
from refmodel.gemma3 import fast_matmul, fast_reference
from refmodel.weights import Matrix

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden"
PACKED = tuple(native.FORMAT_IDS)
VARIANTS = [("exact", {}), ("skainet_scalar", {})] + [
    ("skainet_panama", {"lanes": lanes, "reduction": red})
    for lanes in (4, 8, 16) for red in ("sequential", "pairwise", "halving")
] + [("skainet_neon", {"fused_final": fused, "kernel_order": order})
     for fused in (True, False) for order in ("feed", "rm")]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Identical float32 bits, NaN matching NaN."""
    na, nb = np.isnan(a), np.isnan(b)
    return (a.shape == b.shape and np.array_equal(na, nb)
            and np.array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32)))


def packed(fmt: str, rows: int, cols: int, rng: np.random.Generator,
           adversarial: bool) -> np.ndarray:
    """Quantized random weights; adversarial: 30 % of the bytes then replaced at random."""
    raw = quantize(fmt, (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32))
    if adversarial:
        flat = raw.reshape(-1)
        hit = rng.random(flat.size) < 0.3
        flat[hit] = rng.integers(0, 256, int(hit.sum()), dtype=np.uint8)
    return raw


def activations(batch: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Wide exponent range, with signed zeros and subnormals mixed in."""
    x = rng.standard_normal((batch, cols)) * np.exp2(rng.integers(-30, 20, (batch, cols)))
    x = x.astype(np.float32)
    x.flat[::7] = -0.0
    x.flat[3::11] = np.float32(1e-41)
    return x


@pytest.fixture
def native_calls(monkeypatch) -> list:
    """Records every call that reaches the compiled GEMV."""
    calls: list = []
    real = native.gemv

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(native, "gemv", counting)
    return calls


def test_the_twin_is_built_and_loads():
    assert native.available(), "oracle.native did not build (gcc) or load"
    assert native.library_path().is_file()


@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize("adversarial", [False, True], ids=["quantized", "random-bytes"])
def test_dequantize_is_the_numpy_definition(fmt, adversarial):
    rng = np.random.default_rng(7)
    block = FORMATS[fmt].qt.block
    raw = packed(fmt, 37, 3 * block, rng, adversarial).reshape(-1, FORMATS[fmt].qt.nbytes)
    got = native.dequantize_blocks(fmt, raw, block)
    assert got is not None
    assert same_bits(got, FORMATS[fmt].dequantize_blocks(raw))


@pytest.mark.parametrize("fmt", PACKED)
@pytest.mark.parametrize("name,opts", VARIANTS,
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_matmul_wt_twin_is_the_numpy_definition(fmt, name, opts, native_calls):
    rng = np.random.default_rng(zlib.crc32(repr((fmt, name, opts)).encode()))
    block = FORMATS[fmt].qt.block
    for rows, blocks, batch, adversarial, order in [(13, 3, 2, False, ROW_MAJOR),
                                                    (19, 2, 1, True, INPUT_BLOCK_MAJOR),
                                                    (8, 1, 3, True, ROW_MAJOR)]:
        cols = blocks * block
        w = packed(fmt, rows, cols, rng, adversarial)
        if order == INPUT_BLOCK_MAJOR:
            w = to_input_block_major(w, fmt)
        x = activations(batch, cols, rng)
        # small chunks: several per matrix, the last row of the matrix in the last one
        chunk = 5 * cols * batch
        got = matmul_wt(x, w, fmt, rows, cols, order, name, chunk_elements=chunk, **opts)
        with native.disabled():
            want = matmul_wt(x, w, fmt, rows, cols, order, name, chunk_elements=chunk, **opts)
        assert same_bits(got, want), (fmt, name, opts, rows, cols, batch, order)
    assert native_calls and all(native_calls), "the compiled twin did not run"


@pytest.mark.parametrize("fmt", PACKED)
def test_fast_twin_is_fast_reference(fmt, native_calls):
    rng = np.random.default_rng(3)
    block = FORMATS[fmt].qt.block
    cols = 4 * block
    for adversarial in (False, True):
        w = packed(fmt, 21, cols, rng, adversarial)
        x = activations(2, cols, rng)
        got = fast_matmul(x, Matrix("w", fmt, 21, cols, w))
        assert same_bits(got, fast_reference(x, fmt, w))
    assert native_calls and all(native_calls)


def test_fast_reference_sums_in_its_lane_order():
    """fast_reference is what its docstring says: 16 float32 lanes from -0, then pairs
    (in index order the sum would be 1: 1e8 - 1e8 + 1; in lanes 1 is lost in lane 0)."""
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 1], x[0, 16] = 1e8, -1e8, 1.0
    w = quantize("Q8_0", np.ones((1, 32), np.float32))  # every weight exactly 1
    lanes = np.full(16, -0.0, np.float32)
    for k in range(32):
        lanes[k % 16] += x[0, k]
    while lanes.size > 1:
        lanes = lanes[0::2] + lanes[1::2]
    assert lanes[0] == 0.0
    assert fast_reference(x, "Q8_0", w)[0, 0] == lanes[0]


def test_golden_set_verifies_through_the_twin_and_without_it(native_calls):
    with_twin = verify_set(GOLDEN)
    assert native_calls and all(native_calls)
    assert with_twin.exit_code == 0, [r for r in with_twin.rows if r.status][:3]
    with native.disabled():
        assert verify_set(GOLDEN).exit_code == 0


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("SKORACLE_NATIVE", "0")
    assert native.lib() is None
    monkeypatch.delenv("SKORACLE_NATIVE")
    assert native.lib() is not None


def test_without_a_compiler_the_numpy_definitions_run(monkeypatch, tmp_path):
    """No build possible (no compiler, empty cache): same results from the NumPy, no
    half-written library left behind."""
    rng = np.random.default_rng(11)
    w = packed("Q8_0", 9, 64, rng, False)
    x = activations(1, 64, rng)
    want = matmul_wt(x, w, "Q8_0", 9, 64, semantics="skainet_neon")
    monkeypatch.setenv("SKORACLE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(native, "_LIB", None)
    assert native.lib() is None and not native.available()
    assert same_bits(matmul_wt(x, w, "Q8_0", 9, 64, semantics="skainet_neon"), want)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_the_portable_build_gives_the_same_bits(monkeypatch):
    """Built without -mavx2 -mfma (plain loops, libm fmaf), as on a CPU without them."""
    rng = np.random.default_rng(5)
    cases = []
    for fmt in ("Q5_0", "Q8_0", "Q5_K", "Q6_K"):
        block = FORMATS[fmt].qt.block
        w, x = packed(fmt, 11, 2 * block, rng, True), activations(2, 2 * block, rng)
        for name, opts in VARIANTS[:2] + VARIANTS[5:6] + VARIANTS[-4:]:
            cases.append((fmt, w, x, name, opts,
                          matmul_wt(x, w, fmt, 11, 2 * block, semantics=name, **opts)))
    monkeypatch.setattr(native, "cpu_flags", lambda: ())
    monkeypatch.setattr(native, "_LIB", None)
    assert native.available()
    for fmt, w, x, name, opts, want in cases:
        got = matmul_wt(x, w, fmt, 11, w.shape[1] // FORMATS[fmt].qt.nbytes
                        * FORMATS[fmt].qt.block, semantics=name, **opts)
        assert same_bits(got, want), (fmt, name, opts)
