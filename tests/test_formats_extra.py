"""The formats SKaiNET's GGUF layer reads but does not pack (Q4_1, Q8_1, Q2_K, Q3_K, Q8_K,
IQ4_NL, IQ4_XS, TQ1_0, TQ2_0) against ggml's own C code and against gguf-py: equal bytes
after quantize (ggml's quantize_row_*_ref), equal float bits after dequantize, on ordinary,
adversarial and arbitrary inputs; and the F16/BF16 conversions against ggml's, bit for bit,
over NaN, Inf, subnormal and rounding-tie patterns."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq

from harness.ggml.cref import reference_defined
from oracle import READ_TYPES, dequantize, qtype, quantize, unpack
from oracle.cfloat import bf16_to_f32, f32_to_bf16, f32_to_fp16, fp16_to_f32
from oracle.quants import IQ4_VALUES, IQ4_ZERO_CODE
from oracle.samples import adversarial_rows, random_blocks, random_rows

N = 512  # two 256-blocks, sixteen 32-blocks


def _tiled(pattern, n: int = N) -> np.ndarray:
    return np.resize(np.asarray(pattern, np.float32), n).astype(np.float32)


def _format_ties() -> dict[str, np.ndarray]:
    """Rows on the rounding edges of the new formats (each a multiple of 256 long)."""
    rng = np.random.default_rng(23)
    half = np.arange(-126, 127, dtype=np.float32) + np.float32(0.5)
    q8k = np.concatenate([[-127.0], rng.choice(half, 255)])  # iscale = 1: every code a tie
    mid = (IQ4_VALUES[:-1].astype(np.float32) + IQ4_VALUES[1:]) / np.float32(2)
    iq4 = np.concatenate([[-127.0], np.resize(mid, 31)])  # d = 1: midpoints between levels
    q41 = np.concatenate([[0.0, 15.0], np.arange(30) % 15 + 0.5])  # d = 1: x/d + .5 integral
    ternary = np.concatenate([[2.0], rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], 255)])  # x/d = .5
    return {
        "ties_q8_k": np.stack([_tiled(q8k), -_tiled(q8k)]),
        "ties_iq4": np.stack([_tiled(iq4), -_tiled(iq4)]),
        "ties_q4_1": np.stack([_tiled(q41), _tiled(q41) - np.float32(7.25)]),
        "ties_ternary": np.stack([_tiled(ternary), -_tiled(ternary)]),
        "ternary_exact": np.stack([_tiled(rng.integers(-1, 2, 256) * 0.7),
                                   _tiled(rng.integers(-1, 2, 256) * 3e-5)]),
    }


CASES = adversarial_rows(np.random.default_rng(2326))
CASES.update(_format_ties())
CASES["random_normal"] = random_rows(np.random.default_rng(231), 24, N)
CASES["random_uniform"] = np.random.default_rng(232).uniform(-5, 5, (8, N)).astype(np.float32)

#: Byte offsets of each format's fp16 scale fields (Q8_K's d is a float32 at 0).
HALF_SCALES = {"Q4_1": (0, 2), "Q8_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,),
               "IQ4_NL": (0,), "IQ4_XS": (0,), "TQ1_0": (52,), "TQ2_0": (64,)}
#: What gguf-py (gguf.quants) implements of them.
GGUF_DEQUANTIZES = ("Q4_1", "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0")
GGUF_QUANTIZES = ("Q4_1", "TQ1_0", "TQ2_0")
#: ggml has no dequantize_row_q8_1; the binding applies dequantize_row_q8_0 (see below).
C_DEQUANTIZES = READ_TYPES


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _first_diff(ours: np.ndarray, theirs: np.ndarray, nbytes: int) -> str:
    bad = np.argwhere(ours.reshape(-1, nbytes) != theirs.reshape(-1, nbytes))
    return "equal" if bad.size == 0 else f"first differing (block, byte) {tuple(bad[0])}"


def test_every_read_type_is_covered():
    assert set(READ_TYPES) == set(HALF_SCALES) | {"Q8_K"}
    for t in READ_TYPES:
        assert not qtype(t).packed and qtype(t).block in (32, 256)


# -- against ggml's C code --------------------------------------------------------------------

@pytest.mark.cref
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("qt", READ_TYPES)
def test_quantize_equals_c_reference(cref, qt, case):
    x = CASES[case]
    ours, theirs = quantize(qt, x), cref.quantize(qt, x)
    assert ours.shape == theirs.shape == (x.shape[0], qtype(qt).row_bytes(N))
    defined = reference_defined(qt, x)
    if qt != "IQ4_NL":
        assert defined.all()
    ours, theirs = np.where(defined, ours, 0), np.where(defined, theirs, 0)
    diff = _first_diff(ours, theirs, qtype(qt).nbytes)
    assert np.array_equal(ours, theirs), f"{qt}/{case}: {diff}"


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
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("qt", C_DEQUANTIZES)
def test_dequantize_of_c_bytes_equals_c_reference(cref, qt, case):
    raw = cref.quantize(qt, CASES[case])
    assert np.array_equal(_bits(dequantize(qt, raw)), _bits(cref.dequantize(qt, raw)))


@pytest.mark.cref
@pytest.mark.parametrize("qt", C_DEQUANTIZES)
def test_dequantize_arbitrary_bytes_equals_c_reference(cref, qt):
    """Arbitrary bytes: every scale pattern (subnormal, -0, max, Inf, NaN; Q8_K's float32 d
    too) and every code, propagated as ggml's float arithmetic does, NaN payloads included."""
    raw = random_blocks(np.random.default_rng(qtype(qt).ggml_type), qtype(qt).nbytes, 8192)
    ours, theirs = dequantize(qt, raw), cref.dequantize(qt, raw)
    assert not np.isfinite(theirs).all()  # the sample does reach Inf/NaN scales
    assert np.array_equal(_bits(ours), _bits(theirs))


FP16_SPECIALS = np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x7BFF, 0x7C00, 0xFC00, 0x7E01],
                         "<u2")
F32_SPECIALS = np.array([0.0, -0.0, 1.4e-45, 1.1e-38, 3.4028235e38, np.inf, -np.inf, np.nan],
                        "<f4")


@pytest.mark.cref
@pytest.mark.parametrize("qt", READ_TYPES)
def test_special_scales_hit_every_class(cref, qt):
    """Real blocks with their scale fields replaced by 0, -0, the smallest subnormal, the
    largest subnormal and finite value, +-Inf and NaN (fp16, or float32 for Q8_K)."""
    q = qtype(qt)
    raw = cref.quantize(qt, random_rows(np.random.default_rng(3), 8, 2 * q.block))
    blocks = raw.reshape(-1, q.nbytes).copy()
    if qt == "Q8_K":
        blocks[:, 0:4] = F32_SPECIALS.view(np.uint8).reshape(8, 4).repeat(2, axis=0)
    for k, off in enumerate(HALF_SCALES.get(qt, ())):
        specials = np.roll(FP16_SPECIALS, 3 * k).view(np.uint8).reshape(8, 2)
        blocks[:, off : off + 2] = specials.repeat(2, axis=0)
    assert np.array_equal(_bits(dequantize(qt, blocks)), _bits(cref.dequantize(qt, blocks)))


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


# -- against gguf-py --------------------------------------------------------------------------

def _gguf(fn, arr, qt):
    with np.errstate(all="ignore"):
        return np.asarray(fn(arr, GGMLQuantizationType[qt]))


@pytest.mark.parametrize(("qt", "case"), [(qt, case) for qt in GGUF_QUANTIZES
                                            for case in sorted(CASES)
                                            if (qt, case) != ("Q4_1", "signed_zeros")])
def test_quantize_equals_gguf_py(qt, case):
    x = CASES[case]
    ours, theirs = quantize(qt, x), _gguf(gq.quantize, x, qt).view(np.uint8)
    assert np.array_equal(ours, theirs), _first_diff(ours, theirs, qtype(qt).nbytes)


@pytest.mark.cref
def test_gguf_py_diverges_from_ggml_on_q4_1_signed_zero_blocks(cref):
    """As for Q5_1: ggml keeps the FIRST zero of a block of signed zeros as its min, gguf-py
    takes np.min's -0.0, so the stored fp16 m differs in its sign bit. The oracle follows
    ggml; this notices either changing."""
    x = CASES["signed_zeros"]
    ours, c = quantize("Q4_1", x), cref.quantize("Q4_1", x)
    assert np.array_equal(ours, c)
    theirs = _gguf(gq.quantize, x, "Q4_1").view(np.uint8)
    diff = np.argwhere(theirs.reshape(-1, 20) != c.reshape(-1, 20))
    assert diff.size and set(diff[:, 1]) == {3}  # only m's high byte (its sign)


@pytest.mark.parametrize("qt", GGUF_DEQUANTIZES)
def test_dequantize_equals_gguf_py(qt):
    """Quantized rows and arbitrary blocks with finite scales (gguf-py's own fp16 decode
    differs from ggml's on signalling-NaN payloads, which the C comparison covers)."""
    q = qtype(qt)
    raw = np.concatenate([quantize(qt, CASES[c]).reshape(-1, q.nbytes) for c in sorted(CASES)]
                         + [random_blocks(np.random.default_rng(17), q.nbytes, 4096)])
    ours = dequantize(qt, raw)
    finite = np.isfinite(ours).all(axis=1)
    assert finite.sum() > 1000
    theirs = _gguf(gq.dequantize, raw[finite], qt).reshape(-1, q.block)
    assert np.array_equal(_bits(ours[finite]), _bits(theirs))


@pytest.mark.parametrize("qt", ("Q8_1", "Q8_K"))
def test_gguf_py_has_no_q8_1_or_q8_k(qt):
    """gguf-py implements neither (and its GGML_QUANT_SIZES gives Q8_1 40 bytes, an older
    float d/s block; ggml's block_q8_1 is 36). If it grows one, compare against it too."""
    with pytest.raises(NotImplementedError):
        _gguf(gq.dequantize, np.zeros((1, qtype(qt).nbytes), np.uint8), qt)


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
