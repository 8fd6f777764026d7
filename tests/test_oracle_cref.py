"""The oracle against ggml's own C code: equal bytes after quantize, equal float bits after
dequantize, for every format, on ordinary and adversarial rows and on arbitrary bytes."""

from __future__ import annotations

import numpy as np
import pytest

from oracle import PACKED_TYPES, dequantize, qtype, quantize
from oracle.samples import adversarial_rows, random_blocks, random_rows

pytestmark = pytest.mark.cref

ALL_TYPES = PACKED_TYPES + ("F16", "BF16", "F32")
CASES = adversarial_rows(np.random.default_rng(20261126))
CASES["random_normal"] = random_rows(np.random.default_rng(7), 48, 512)
CASES["random_uniform"] = np.random.default_rng(8).uniform(-5, 5, (16, 1024)).astype(np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("qt", ALL_TYPES)
def test_quantize_equals_c_reference(cref, qt, case):
    x = CASES[case]
    ours, theirs = quantize(qt, x), cref.quantize(qt, x)
    assert ours.shape == theirs.shape
    diff = np.argwhere(ours != theirs)
    assert diff.size == 0, f"{qt}/{case}: first differing byte at (row, byte) {diff[0]}"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("qt", ALL_TYPES)
def test_dequantize_of_c_bytes_equals_c_reference(cref, qt, case):
    raw = cref.quantize(qt, CASES[case])
    assert np.array_equal(_bits(dequantize(qt, raw)), _bits(cref.dequantize(qt, raw)))


@pytest.mark.parametrize("qt", ALL_TYPES)
def test_dequantize_arbitrary_bytes_equals_c_reference(cref, qt):
    """Random bytes reach every fp16 scale pattern: subnormal, -0, max, Inf and NaN scales
    propagate exactly as ggml's float arithmetic does (NaN payload bits included)."""
    raw = random_blocks(np.random.default_rng(99), qtype(qt).nbytes, 8192)
    assert np.array_equal(_bits(dequantize(qt, raw)), _bits(cref.dequantize(qt, raw)))


@pytest.mark.parametrize("qt", PACKED_TYPES)
def test_special_scales_hit_every_class(cref, qt):
    """Blocks whose fp16 scale fields are exactly 0, -0, the smallest subnormal, the largest
    finite half, Inf and NaN, spliced into real blocks."""
    q = qtype(qt)
    raw = cref.quantize(qt, random_rows(np.random.default_rng(3), 6, q.block * 2))
    blocks = raw.reshape(-1, q.nbytes).copy()
    off = 208 if qt == "Q6_K" else 0
    specials = np.array([0x0000, 0x8000, 0x0001, 0x7BFF, 0x7C00, 0x7E01], "<u2").view(np.uint8)
    blocks[:, off : off + 2] = specials.reshape(6, 2).repeat(2, axis=0)
    if qt in ("Q5_1", "Q4_K", "Q5_K"):  # the second half (m / dmin) too
        blocks[:, off + 2 : off + 4] = specials.reshape(6, 2)[::-1].repeat(2, axis=0)
    assert np.array_equal(_bits(dequantize(qt, blocks)), _bits(cref.dequantize(qt, blocks)))


def test_q6_k_all_tiny_superblock_is_all_zero_bytes(cref):
    x = np.full((1, 256), 1e-20, np.float32)
    assert not quantize("Q6_K", x).any()
    assert np.array_equal(quantize("Q6_K", x), cref.quantize("Q6_K", x))
