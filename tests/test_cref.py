"""The ggml C reference binding against gguf-py and against itself, with exact equality.

The binding is what every bit-exact claim is checked against, so it is itself checked
here: byte-equal to gguf-py's NumPy quantizers where those exist, bit-equal dequantization,
the per-row reference equal to ggml_quantize_chunk, and the CPU q8_0 dot product equal to a
NumPy re-computation of ggml's generic summation order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq

from harness.errors import HarnessError
from harness.ggml import cref as cref_mod
from oracle.formats import PACKED_TYPES, OracleError, qtype

pytestmark = pytest.mark.cref

N = 512  # a multiple of every block size (32 and 256)
GGUF_QUANTIZES = ("Q4_0", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16")


def _adversarial_rows() -> dict[str, np.ndarray]:
    """Rows that sit on the edges of the rounding rules (REFERENCE.md §1)."""
    rng = np.random.default_rng(178)
    rows: dict[str, np.ndarray] = {
        "zeros": np.zeros(N),
        "neg_zero": np.full(N, -0.0),
        "constant": np.full(N, 0.75),
        "constant_neg": np.full(N, -3.5),
        "one_nonzero": np.eye(1, N, 77)[0] * -2.25,
        "tiny_subnormal_fp16_scale": rng.standard_normal(N) * 1e-6,
        "tiny_f32_subnormal": rng.standard_normal(N) * 1e-40,
        "near_fp16_max": rng.uniform(-1, 1, N) * 65504.0 * 120,
        "huge": rng.standard_normal(N) * 1e30,
        "mixed_huge_tiny": np.where(rng.random(N) < 0.5, 1e-7, 1e7) * rng.standard_normal(N),
        "max_magnitude_tie": np.tile(np.r_[4.0, -4.0, np.zeros(30)], N // 32),
    }
    # Q8_0: amax 127 gives d = 1 exactly, so x*id lands on k+.5 (roundf ties away from zero).
    halves = (np.arange(N) % 32 - 16) + 0.5
    halves[::32] = 127.0
    rows["q8_0_halves"] = halves
    # Q4_0: max -8 gives d = 1, so x*id + 8.5 lands on integers and on .5 before truncation.
    q4 = (np.arange(N) % 16 - 8) * 0.5
    q4[::32] = -8.0
    rows["q4_0_halves"] = q4
    # K-quants: values on a grid of scale 1/2 so nearest_int sees exact .5 ties.
    rows["k_grid_halves"] = (rng.integers(-30, 31, N) * 0.5)
    rows["step_blocks"] = np.repeat(rng.standard_normal(N // 16) * 10, 16)
    return {k: v.astype(np.float32).reshape(1, N) for k, v in rows.items()}


ADVERSARIAL = _adversarial_rows()


def _random(rows: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, N)).astype(np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _gtype(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name]


# -- against gguf-py ----------------------------------------------------------------------

def _gguf_quantize(name: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):  # gguf-py warns on the huge rows; the bytes are compared
        q = np.asarray(gq.quantize(x, _gtype(name)))
    return q.view(np.uint8).reshape(x.shape[0], -1)


def _negative_zero_first_blocks(name: str, x: np.ndarray) -> np.ndarray:
    """Mask of Q4_0/Q5_0 blocks that are all zero and start with -0.0 (see the test below)."""
    if name not in ("Q4_0", "Q5_0"):
        return np.zeros(x.shape[0] * x.shape[1] // 32, dtype=bool)
    blocks = x.reshape(-1, 32)
    return np.all(blocks == 0, axis=1) & np.signbit(blocks[:, 0])


@pytest.mark.parametrize("name", GGUF_QUANTIZES)
@pytest.mark.parametrize("case", ["random", *ADVERSARIAL])
def test_quantize_equals_gguf_py(cref, name, case):
    """Byte-equal to gguf-py, up to the one documented divergence (negative-zero blocks)."""
    x = _random() if case == "random" else ADVERSARIAL[case]
    ours = cref.quantize(name, x)
    theirs = _gguf_quantize(name, x)
    assert ours.dtype == np.uint8
    assert ours.shape == (x.shape[0], qtype(name).row_bytes(N))
    flip = _negative_zero_first_blocks(name, x)
    if flip.any():
        nbytes = qtype(name).nbytes
        theirs.reshape(-1, nbytes)[flip, 1] ^= 0x80  # d's fp16 sign bit (little-endian byte 1)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("name", ["Q4_0", "Q5_0"])
def test_gguf_py_diverges_on_all_zero_blocks_starting_with_negative_zero(cref, name):
    """ggml keeps max = 0.0f when no |x| exceeds 0, so d = 0.0f / -8 = -0.0 (fp16 0x8000) for
    every all-zero block; gguf-py takes max = x[argmax|x|] = x[0], so a block starting with
    -0.0 gets d = +0.0. Dequantized values are equal; the stored bytes are not."""
    x = np.zeros((1, N), dtype=np.float32)
    x[0, ::64] = -0.0  # even blocks start with -0.0
    x[0, 33::64] = -0.0  # odd blocks start with +0.0, -0.0 later
    raw_c, raw_py = cref.quantize(name, x), _gguf_quantize(name, x)
    d_c = raw_c.reshape(-1, qtype(name).nbytes)[:, :2].copy().view(np.uint16)[:, 0]
    d_py = raw_py.reshape(-1, qtype(name).nbytes)[:, :2].copy().view(np.uint16)[:, 0]
    assert np.all(d_c == 0x8000)
    np.testing.assert_array_equal(d_py, np.where(np.arange(d_py.size) % 2 == 0, 0x0000, 0x8000))


@pytest.mark.parametrize("name", [*PACKED_TYPES, "F16", "BF16"])
@pytest.mark.parametrize("case", ["random", *ADVERSARIAL])
def test_dequantize_equals_gguf_py(cref, name, case):
    x = _random() if case == "random" else ADVERSARIAL[case]
    raw = cref.quantize(name, x)
    ours = cref.dequantize(name, raw)
    with np.errstate(all="ignore"):
        theirs = np.asarray(gq.dequantize(raw, _gtype(name)), dtype=np.float32)
    assert ours.shape == x.shape
    np.testing.assert_array_equal(_bits(ours), _bits(theirs))


@pytest.mark.parametrize("name", PACKED_TYPES)
def test_dequantize_random_bytes_equals_gguf_py(cref, name):
    """Arbitrary blocks: every fp16 scale pattern incl. subnormal, max, -0 (finite only)."""
    q = qtype(name)
    rng = np.random.default_rng(q.ggml_type)
    raw = rng.integers(0, 256, (16, q.row_bytes(N)), dtype=np.uint8)
    ours = cref.dequantize(name, raw)
    with np.errstate(all="ignore"):
        theirs = np.asarray(gq.dequantize(raw, _gtype(name)), dtype=np.float32)
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    np.testing.assert_array_equal(_bits(ours)[finite], _bits(theirs)[finite])


# -- the reference row path and ggml_quantize_chunk agree ------------------------------------

@pytest.mark.parametrize("name", PACKED_TYPES)
@pytest.mark.parametrize("case", ["random", *ADVERSARIAL])
def test_quantize_row_ref_equals_quantize_chunk(cref, name, case):
    x = _random(seed=1) if case == "random" else ADVERSARIAL[case]
    np.testing.assert_array_equal(cref.quantize(name, x), cref.quantize_chunk(name, x))


@pytest.mark.parametrize("name", PACKED_TYPES)
def test_round_trip_error_is_small(cref, name):
    """A sanity bound (not a bit-exact claim): the binding passes the right pointers/sizes."""
    x = _random(seed=2)
    y = cref.dequantize(name, cref.quantize(name, x))
    assert float(np.sqrt(np.mean((y - x) ** 2))) < 0.2


def test_leading_dimensions_are_kept(cref):
    x = _random(6).reshape(2, 3, N)
    raw = cref.quantize("Q6_K", x)
    assert raw.shape == (2, 3, qtype("Q6_K").row_bytes(N))
    np.testing.assert_array_equal(raw.reshape(6, -1), cref.quantize("Q6_K", x.reshape(6, N)))
    assert cref.dequantize("Q6_K", raw).shape == (2, 3, N)


# -- CPU path --------------------------------------------------------------------------------

def test_vec_dot_types(cref):
    assert cref.vec_dot_type("Q8_0") == "Q8_0"
    assert cref.vec_dot_type("Q4_0") == "Q8_0"
    assert cref.vec_dot_type("Q5_0") == "Q8_0"
    assert cref.vec_dot_type("Q5_1") == "Q8_1"
    for k in ("Q4_K", "Q5_K", "Q6_K"):
        assert cref.vec_dot_type(k) == "Q8_K"


def test_q8_0_from_float_is_the_reference_quantizer(cref):
    x = np.concatenate([_random(4, seed=3), ADVERSARIAL["q8_0_halves"]])
    np.testing.assert_array_equal(cref.from_float("Q8_0", x), cref.quantize("Q8_0", x))


def _vec_dot_q8_0_generic(w: np.ndarray, a: np.ndarray) -> np.float32:
    """ggml_vec_dot_q8_0_q8_0 generic order: exact int32 sum per block, then
    sumf += (float)sumi * (d_w * d_x), all in float32, blocks in order."""
    wb, ab = w.reshape(-1, 34), a.reshape(-1, 34)
    dw = wb[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    dx = ab[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    qw = wb[:, 2:].view(np.int8).astype(np.int32)
    qx = ab[:, 2:].view(np.int8).astype(np.int32)
    sumi = (qw * qx).sum(axis=1)  # exact: |sum| <= 32 * 128 * 128
    sumf = np.float32(0.0)
    for b in range(wb.shape[0]):
        sumf = np.float32(sumf + np.float32(sumi[b]) * np.float32(dw[b] * dx[b]))
    return sumf


@pytest.mark.parametrize("seed", range(4))
def test_vec_dot_q8_0_equals_generic_order(cref, seed):
    rng = np.random.default_rng(100 + seed)
    w = cref.quantize("Q8_0", rng.standard_normal((3, N)).astype(np.float32) * 10.0 ** (seed - 2))
    x = rng.standard_normal(N).astype(np.float32)
    a = cref.from_float("Q8_0", x)
    for o in range(w.shape[0]):
        got = cref.vec_dot("Q8_0", w[o], a, N)
        assert isinstance(got, np.float32)
        assert got.view(np.uint32) == _vec_dot_q8_0_generic(w[o], a).view(np.uint32)


def test_matvec_matches_vec_dot_rows(cref):
    w = cref.quantize("Q4_K", _random(5, seed=4))
    x = _random(1, seed=5)[0]
    got = cref.matvec("Q4_K", w, x)
    a = cref.from_float("Q4_K", x)
    assert a.shape == (cref_mod.ACTIVATION_TYPES["Q8_K"].row_bytes(N),)
    want = [cref.vec_dot("Q4_K", w[o], a, N) for o in range(5)]
    np.testing.assert_array_equal(_bits(got), _bits(np.array(want)))
    # and it approximates the float product of the dequantized weights
    exact = cref.dequantize("Q4_K", w).astype(np.float64) @ x
    assert np.max(np.abs(got - exact)) < 0.05 * np.max(np.abs(exact))


def test_q8_k_round_trip(cref):
    x = _random(2, seed=6)
    raw = cref.from_float("Q6_K", x)
    assert raw.shape == (2, 2 * 292)
    y = cref.dequantize("Q8_K", raw)
    assert np.max(np.abs(y - x)) <= np.max(np.abs(x)) / 127 * 0.5 * 1.0001


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.quantize("Q4_K", np.zeros((1, 100), np.float32)), "multiple of 256"),
        (lambda c: c.quantize("Q8_0", np.zeros((1, 64), np.float64)), "float32"),
        (lambda c: c.quantize("Q9_9", np.zeros((1, 64), np.float32)), "unknown type"),
        (lambda c: c.dequantize("Q8_0", np.zeros((1, 35), np.uint8)), "34-byte blocks"),
        (lambda c: c.dequantize("Q8_0", np.zeros((1, 34), np.int8)), "uint8"),
        (lambda c: c.vec_dot("Q8_0", np.zeros(34, np.uint8), np.zeros(68, np.uint8), 64),
         "68 bytes"),
        (lambda c: c.vec_dot("Q8_0", np.zeros(68, np.uint8), np.zeros(34, np.uint8), 64),
         "activation row"),
        (lambda c: c.quantize_chunk("Q8_K", np.zeros((1, 256), np.float32)), "no case"),
    ],
)
def test_bad_input_raises_oracle_error(cref, call, message):
    with pytest.raises(OracleError, match=message):
        call(cref)


def test_vector_code_check_catches_fma(tmp_path):
    """The build check really finds FMA/AVX code: a tiny library compiled with -mfma."""
    src = tmp_path / "f.c"
    src.write_text("float f(float a, float b, float c) { return a * b + c; }\n")
    lib = tmp_path / "libf.so"
    subprocess.run(["cc", "-O2", "-mfma", "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True)
    with pytest.raises(HarnessError, match="vfmadd"):
        cref_mod.check_no_vector_code(lib)
    plain = tmp_path / "libg.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(plain), str(src)], check=True)
    cref_mod.check_no_vector_code(plain)


def test_build_is_cached_and_stamped(cref):
    assert cref_mod.is_built()
    proc = subprocess.run([sys.executable, "-m", "harness.ggml.cref", "build"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "already built" in proc.stdout


def test_build_failure_is_one_line_exit_2(tmp_path):
    """A corrupt cached sdist and no network for pip: one error line, exit 2, no traceback."""
    cache = tmp_path / "cache"
    (cache / "sdist").mkdir(parents=True)
    (cache / "sdist" / cref_mod.SDIST_NAME).write_bytes(b"not a tarball")
    env = {"SKORACLE_CACHE": str(cache), "PATH": "/usr/bin:/bin",
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness.ggml.cref", "build"], capture_output=True,
                          text=True, env=env, timeout=120, cwd=str(Path(__file__).parents[1]))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "llama-cpp-python" in proc.stderr
    assert not (cache / f"ggml-{cref_mod.LCP_VERSION}").exists()
