"""The oracle against gguf-py for every format gguf-py covers: it dequantizes every block
format but Q8_1 and Q8_K, and quantizes Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0 and TQ2_0 (no
K-quant or IQ4 quantizer)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq

from oracle import BLOCK_TYPES, dequantize, qtype, quantize
from oracle.samples import adversarial_rows, random_blocks, random_rows

CASES = adversarial_rows(np.random.default_rng(5))
CASES["random"] = random_rows(np.random.default_rng(6), 32, 512)
GGUF_QUANTIZES = ("Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q4_1", "TQ1_0", "TQ2_0")
#: gguf-py implements neither Q8_1 nor Q8_K (its GGML_QUANT_SIZES even gives Q8_1 40 bytes,
#: an older float d/s block; ggml's block_q8_1 is 36).
GGUF_DEQUANTIZES = tuple(t for t in BLOCK_TYPES if t not in ("Q8_1", "Q8_K"))
GGUF_LACKS_QUANTIZE = tuple(t for t in BLOCK_TYPES if t not in GGUF_QUANTIZES)


NEGATIVE_ZERO_CASES = ("signed_zeros", "one_nonzero")


def _gguf_quantize(qt: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gq.quantize(x, GGMLQuantizationType[qt])


@pytest.mark.parametrize("case", sorted(set(CASES) - set(NEGATIVE_ZERO_CASES)))
@pytest.mark.parametrize("qt", GGUF_QUANTIZES)
def test_quantize_equals_gguf_py(qt, case):
    assert np.array_equal(quantize(qt, CASES[case]), _gguf_quantize(qt, CASES[case]))


@pytest.mark.cref
@pytest.mark.parametrize("qt", ("Q4_0", "Q5_0", "Q5_1", "Q4_1"))
def test_gguf_py_diverges_from_ggml_on_negative_zero_blocks(cref, qt):
    """Blocks of signed zeros: ggml keeps its `max = 0.0f` start (d = 0/-8 = -0.0) and, for
    Q4_1/Q5_1, the FIRST zero as min/max; gguf-py takes a -0.0 element itself (np.min),
    so the stored fp16 sign differs. The oracle follows ggml; this notices either changing."""
    x = CASES["signed_zeros"]
    ours, c = quantize(qt, x), cref.quantize(qt, x)
    assert np.array_equal(ours, c)
    assert not np.array_equal(_gguf_quantize(qt, x), c)


@pytest.mark.parametrize("qt", GGUF_DEQUANTIZES)
def test_dequantize_equals_gguf_py(qt):
    """Finite scales only: gguf-py's own fp16 decode (NumPy astype) differs from ggml's on
    signalling-NaN payloads, which test_oracle_cref covers against the C library."""
    q = qtype(qt)
    raw = quantize(qt, random_rows(np.random.default_rng(11), 64, q.block * 4))
    raw = np.concatenate([raw.reshape(-1, q.nbytes),
                          quantize(qt, CASES["tiny_subnormal_fp16"]).reshape(-1, q.nbytes)])
    with np.errstate(all="ignore"):
        theirs = gq.dequantize(raw, GGMLQuantizationType[qt]).reshape(-1)
    assert np.array_equal(dequantize(qt, raw).reshape(-1).view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("qt", GGUF_LACKS_QUANTIZE)
def test_gguf_py_has_no_quantizer_for_the_rest(qt):
    """The reason this oracle exists: if gguf-py grows one, compare against it too."""
    with pytest.raises(NotImplementedError):
        gq.quantize(np.zeros((1, 256), np.float32), GGMLQuantizationType[qt])


@pytest.mark.parametrize("qt", ("Q8_1", "Q8_K"))
def test_gguf_py_has_no_dequantizer_for_the_activation_types(qt):
    with pytest.raises(NotImplementedError):
        gq.dequantize(np.zeros((1, qtype(qt).nbytes), np.uint8), GGMLQuantizationType[qt])


@pytest.mark.parametrize("qt", GGUF_DEQUANTIZES)
def test_random_bytes_with_finite_scales_match_gguf_py(qt):
    q = qtype(qt)
    raw = random_blocks(np.random.default_rng(12), q.nbytes, 2048)
    ours = dequantize(qt, raw)
    finite = np.isfinite(ours).all(axis=1)
    with np.errstate(all="ignore"):
        theirs = gq.dequantize(raw[finite], GGMLQuantizationType[qt]).reshape(-1, q.block)
    assert finite.sum() > 100
    assert np.array_equal(ours[finite].view(np.uint32), theirs.view(np.uint32))
