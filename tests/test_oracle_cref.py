"""The oracle against ggml's own C code: equal bytes after quantize, equal float bits after
dequantize, for every format (packed, read-only and float), on ordinary and adversarial
rows and on arbitrary bytes. Bytes ggml's reference leaves undefined are not compared
(harness.ggml.cref.reference_defined)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.ggml.cref import reference_defined
from oracle import BLOCK_TYPES, FLOAT_TYPES, dequantize, qtype, quantize
from oracle.samples import adversarial_rows, random_blocks, random_rows

pytestmark = pytest.mark.cref

ALL_TYPES = BLOCK_TYPES + FLOAT_TYPES
#: Byte offsets of each block format's fp16 scale fields (d first; m / dmin / s second).
HALF_SCALES = {"Q4_0": (0,), "Q5_0": (0,), "Q8_0": (0,), "Q5_1": (0, 2), "Q4_K": (0, 2),
               "Q5_K": (0, 2), "Q6_K": (208,), "Q4_1": (0, 2), "Q8_1": (0, 2),
               "Q2_K": (80, 82), "Q3_K": (108,), "Q8_K": (), "IQ4_NL": (0,), "IQ4_XS": (0,),
               "TQ1_0": (52,), "TQ2_0": (64,)}
#: Q8_K's d is a float32 at byte 0.
F32_SCALES = {"Q8_K": (0,)}
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
    defined = reference_defined(qt, x)
    assert defined.all() or qt == "IQ4_NL"
    diff = np.argwhere((ours != theirs) & defined)
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


def test_scale_table_covers_every_block_format():
    assert set(HALF_SCALES) == set(BLOCK_TYPES)


@pytest.mark.parametrize("qt", BLOCK_TYPES)
def test_special_scales_hit_every_class(cref, qt):
    """Blocks whose fp16 scale fields are exactly 0, -0, the smallest subnormal, the largest
    finite half, Inf and NaN (float32 ones for Q8_K's d), spliced into real blocks."""
    q = qtype(qt)
    raw = cref.quantize(qt, random_rows(np.random.default_rng(3), 6, q.block * 2))
    blocks = raw.reshape(-1, q.nbytes).copy()
    specials = np.array([0x0000, 0x8000, 0x0001, 0x7BFF, 0x7C00, 0x7E01], "<u2").view(np.uint8)
    for k, off in enumerate(HALF_SCALES[qt]):  # the second field in reverse order
        field = specials.reshape(6, 2)[:: 1 if k == 0 else -1]
        blocks[:, off : off + 2] = field.repeat(2, axis=0)
    f32 = np.array([0.0, -0.0, 1.4e-45, 3.4028235e38, np.inf, np.nan], "<f4").view(np.uint8)
    for off in F32_SCALES.get(qt, ()):
        blocks[:, off : off + 4] = f32.reshape(6, 4).repeat(2, axis=0)
    assert np.array_equal(_bits(dequantize(qt, blocks)), _bits(cref.dequantize(qt, blocks)))


def test_q6_k_all_tiny_superblock_is_all_zero_bytes(cref):
    x = np.full((1, 256), 1e-20, np.float32)
    assert not quantize("Q6_K", x).any()
    assert np.array_equal(quantize("Q6_K", x), cref.quantize("Q6_K", x))
