"""What is particular to the formats SKaiNET's GGUF layer reads but does not pack (Q4_1,
Q8_1, Q2_K, Q3_K, Q8_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0), and the F16/BF16 conversions bit for
bit against ggml's over NaN, Inf, subnormal and rounding-tie patterns.

The generic comparisons run over every format, these included: quantize bytes, dequantize
bits, arbitrary bytes and special scales against the C library in test_oracle_cref.py,
against gguf-py in test_oracle_gguf.py, on the rows of oracle.samples.adversarial_rows
(which carry these formats' rounding ties)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.ggml.cref import reference_defined
from oracle import READ_TYPES, dequantize, qtype, quantize, unpack
from oracle.cfloat import bf16_to_f32, f32_to_bf16, f32_to_fp16, fp16_to_f32
from oracle.quants import IQ4_VALUES, IQ4_ZERO_CODE
from oracle.samples import adversarial_rows, random_blocks, random_rows

N = 512  # two 256-blocks, sixteen 32-blocks
CASES = adversarial_rows(np.random.default_rng(2326))
CASES["random_normal"] = random_rows(np.random.default_rng(231), 24, N)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_every_read_type_is_a_block_format_not_packed():
    assert len(READ_TYPES) == 9
    for t in READ_TYPES:
        assert not qtype(t).packed and qtype(t).block in (32, 256)


@pytest.mark.cref
def test_iq4_nl_zero_blocks_dequantize_to_zero_either_way(cref):
    """The one place ggml's reference bytes are undefined: the codes of an IQ4_NL block with
    amax < 1e-15, which it leaves stale. The oracle writes d = 0 and the code of the level
    nearest 0 (+1, so every value is +0.0); ggml's d is 0 too, so its values are zeros."""
    x = np.concatenate([CASES["zeros"], CASES["tiny_subnormal_f32"]])
    defined = reference_defined("IQ4_NL", x).reshape(-1, 18)
    assert not defined[:, 2:].any() and defined[:, :2].all()
    raw = quantize("IQ4_NL", x)
    assert np.all(raw.reshape(-1, 18)[:, :2] == 0)
    assert np.all(raw.reshape(-1, 18)[:, 2:] == IQ4_ZERO_CODE * 0x11)
    assert np.all(_bits(dequantize("IQ4_NL", raw)) == 0)
    assert np.all(cref.dequantize("IQ4_NL", cref.quantize("IQ4_NL", x)) == 0)


@pytest.mark.cref
def test_q8_1_dequantize_is_ggml_q8_0_rule(cref):
    """ggml has no dequantize_row_q8_1; the oracle's (d * q, s unread) equals ggml's
    dequantize_row_q8_0 of the same d and codes, on arbitrary bytes, whatever s holds."""
    raw = random_blocks(np.random.default_rng(9), 36, 8192)
    as_q8_0 = np.concatenate([raw[:, 0:2], raw[:, 4:36]], axis=1)
    ours = dequantize("Q8_1", raw)
    assert np.array_equal(_bits(ours), _bits(cref.dequantize("Q8_0", as_q8_0)))
    raw[:, 2:4] ^= 0x5A
    assert np.array_equal(_bits(ours), _bits(cref.dequantize("Q8_1", raw)))


@pytest.mark.cref
@pytest.mark.parametrize(("weight", "act"), [("Q4_1", "Q8_1"), ("Q4_K", "Q8_K")])
def test_activation_quantizers_equal_ggml_cpu_from_float(cref, weight, act):
    """Q8_1 and Q8_K are what ggml-cpu quantizes activations to for Q4_1 / K-quant weights:
    the oracle equals ggml-cpu's from_float as well as the reference quantizer."""
    x = np.concatenate([CASES["random_normal"][:4], CASES["ties_q8_k"], CASES["ties_q8_0"]])
    assert cref.vec_dot_type(weight) == act
    assert np.array_equal(quantize(act, x), cref.from_float(weight, x))


@pytest.mark.cref
@pytest.mark.parametrize("qt", ("Q4_1", "Q2_K", "Q3_K", "IQ4_XS", "TQ1_0", "TQ2_0"))
def test_quantize_chunk_takes_the_reference_path(cref, qt):
    """Without an importance matrix ggml_quantize_chunk (what llama-quantize calls) gives
    these formats the same bytes as their quantize_row_*_ref, hence as the oracle."""
    x = np.concatenate([CASES["random_normal"][:4], CASES["half_integers"]])
    assert np.array_equal(cref.quantize_chunk(qt, x), quantize(qt, x))


@pytest.mark.cref
def test_iq4_nl_chunk_quantizer_is_not_the_reference(cref):
    """IQ4_NL's chunk quantizer searches 15 scales (ntry = 7) where quantize_row_iq4_nl_ref
    takes one (ntry = -1); the oracle is the reference. Noticed if ggml changes either."""
    x = CASES["random_normal"]
    assert np.array_equal(quantize("IQ4_NL", x), cref.quantize("IQ4_NL", x))
    assert not np.array_equal(cref.quantize_chunk("IQ4_NL", x), cref.quantize("IQ4_NL", x))


# -- properties of the oracle itself -----------------------------------------------------------

def _rebuild(qt: str, u: dict[str, np.ndarray]) -> np.ndarray:
    """dequantize_row_<type>'s float formula, applied to unpack's fields (two blocks)."""
    f = np.float32
    if qt in ("Q8_1", "TQ1_0", "TQ2_0"):
        return u["qs"].astype(f) * u["d"][..., None]
    if qt == "Q8_K":
        return u["d"][..., None] * u["qs"].astype(f)
    if qt == "Q4_1":
        return u["qs"].astype(f) * u["d"][..., None] + u["m"][..., None]
    if qt == "IQ4_NL":
        return u["d"][..., None] * IQ4_VALUES[u["qs"]].astype(f)
    groups = 8 if qt == "IQ4_XS" else 16
    q = u["qs"].reshape(*u["qs"].shape[:-1], groups, 256 // groups)
    q = IQ4_VALUES[q].astype(f) if qt == "IQ4_XS" else q.astype(f)
    dl = u["d"][..., None] * u["sc"].astype(f)
    if qt == "Q2_K":
        ml = u["dmin"][..., None] * u["mn"].astype(f)
        return (dl[..., None] * q - ml[..., None]).reshape(u["qs"].shape)
    return (dl[..., None] * q).reshape(u["qs"].shape)


@pytest.mark.parametrize("qt", READ_TYPES)
def test_unpack_fields_rebuild_dequantize(qt):
    q = qtype(qt)
    raw = quantize(qt, random_rows(np.random.default_rng(4), 3, 2 * q.block))
    u = unpack(qt, raw)
    assert u["qs"].shape == (3, 2, q.block) and u["d"].shape == (3, 2)
    assert np.array_equal(_bits(_rebuild(qt, u).reshape(3, -1)), _bits(dequantize(qt, raw)))


@pytest.mark.parametrize("qt", ("TQ1_0", "TQ2_0"))
def test_ternary_round_trip_is_exact(qt):
    """Ternary input comes back as t * fp16(amax), the BitNet contract."""
    t = np.random.default_rng(5).integers(-1, 2, (4, N)).astype(np.float32)
    t[:, ::256] = 1.0  # amax 1 in every block
    scale = np.float32(0.3)
    y = dequantize(qt, quantize(qt, t * scale))
    d = fp16_to_f32(f32_to_fp16(np.array([scale], np.float32)))[0]
    assert np.array_equal(_bits(y), _bits(t * d))


# -- F16 / BF16 conversions, bit for bit ------------------------------------------------------

def _f32_patterns() -> np.ndarray:
    """2^20 random float32 bit patterns plus every class edge: signed zeros, subnormals,
    fp16/bf16 rounding ties (odd and even), the overflow edges, +-Inf, quiet and signalling
    NaNs with payloads."""
    rng = np.random.default_rng(16)
    rand = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    edges = []
    for e in range(0, 256):  # every exponent: the fp16 and bf16 halfway points +-1 ulp
        base = np.uint32(e << 23)
        for m in (0, 1, 0x0FFF, 0x1000, 0x1001, 0x2FFF, 0x3000, 0x7FFF, 0x8000, 0x8001,
                  0x17FFF, 0x18000, 0x18001, 0x7FFFFF):
            edges.append(base | np.uint32(m))
    edges += [0x477FE000, 0x477FEFFF, 0x477FF000, 0x7F7FFFFF, 0x7F800001, 0x7FBFFFFF,
              0x7FC00000, 0x7FC00001, 0x7FFFFFFF, 0x7F807FFF, 0x7F808000]
    edges = np.array(edges, np.uint32)
    all_ = np.concatenate([rand, edges, edges | np.uint32(0x80000000)])
    return all_.view(np.float32)


@pytest.mark.cref
@pytest.mark.parametrize("fmt", ("F16", "BF16"))
def test_float_encode_equals_ggml_for_every_class(cref, fmt):
    """cfloat's f32 -> fp16 / bf16 against ggml_fp32_to_fp16_row (GGML_FP32_TO_FP16) and
    ggml_fp32_to_bf16_row_ref (ggml_compute_fp32_to_bf16: nearest even, NaN forced quiet),
    NaN and Inf included (oracle.quantize refuses those; the conversions define them)."""
    x = _f32_patterns()
    ours = f32_to_fp16(x) if fmt == "F16" else f32_to_bf16(x)
    theirs = cref.quantize(fmt, x[None, :]).view("<u2")[0]
    bad = np.flatnonzero(ours != theirs)
    assert bad.size == 0, f"{fmt}: f32 bits {x.view(np.uint32)[bad[0]]:#010x}"


@pytest.mark.cref
@pytest.mark.parametrize("fmt", ("F16", "BF16"))
def test_float_decode_equals_ggml_for_all_65536_patterns(cref, fmt):
    h = np.arange(1 << 16, dtype=np.uint32).astype("<u2")
    ours = fp16_to_f32(h) if fmt == "F16" else bf16_to_f32(h)
    assert np.array_equal(_bits(ours), _bits(cref.dequantize(fmt, h.view(np.uint8)[None])[0]))
    assert np.array_equal(_bits(dequantize(fmt, h.view(np.uint8))), _bits(ours))
