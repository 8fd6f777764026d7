"""Shape handling and error messages of the public oracle API, as properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle import (
    FLOAT_TYPES,
    PACKED_TYPES,
    QTYPES,
    READ_TYPES,
    OracleError,
    dequantize,
    qtype,
    quantize,
    unpack,
)

FORMATS = st.sampled_from(PACKED_TYPES)


@settings(max_examples=60, deadline=None)
@given(qt=FORMATS, lead=st.lists(st.integers(0, 3), max_size=2), blocks=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1))
def test_shapes_round_trip(qt, lead, blocks, seed):
    q = qtype(qt)
    x = np.random.default_rng(seed).standard_normal((*lead, blocks * q.block)).astype(np.float32)
    raw = quantize(qt, x)
    assert raw.dtype == np.uint8 and raw.shape == (*lead, blocks * q.nbytes)
    y = dequantize(qt, raw)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert unpack(qt, raw)["qs"].shape == (*lead, blocks, q.block)
    # leading axes are independent rows: quantizing row by row gives the same bytes
    flat = x.reshape(int(np.prod(lead)), blocks * q.block)
    if flat.size:
        assert np.array_equal(raw.reshape(flat.shape[0], -1)[-1], quantize(qt, flat[-1]))


@settings(max_examples=60, deadline=None)
@given(qt=FORMATS, n=st.integers(1, 1000))
def test_bad_row_length_names_type_expected_and_actual(qt, n):
    q = qtype(qt)
    if n % q.block == 0:
        n += 1
    with pytest.raises(OracleError) as err:
        quantize(qt, np.zeros(n, np.float32))
    msg = str(err.value)
    assert qt in msg and str(q.block) in msg and str(n) in msg


@settings(max_examples=60, deadline=None)
@given(qt=FORMATS, nbytes=st.integers(1, 1000))
def test_bad_byte_length_names_type_expected_and_actual(qt, nbytes):
    q = qtype(qt)
    if nbytes % q.nbytes == 0:
        nbytes += 1
    for fn in (dequantize, unpack):
        with pytest.raises(OracleError) as err:
            fn(qt, np.zeros(nbytes, np.uint8))
        msg = str(err.value)
        assert qt in msg and str(q.nbytes) in msg and str(nbytes) in msg


@settings(max_examples=40, deadline=None)
@given(qt=FORMATS, bad=st.sampled_from([np.nan, np.inf, -np.inf]), pos=st.integers(0, 255))
def test_non_finite_input_is_refused(qt, bad, pos):
    x = np.zeros(256, np.float32)
    x[pos] = bad
    with pytest.raises(OracleError, match=rf"{qt}.*finite.*\({pos},\)"):
        quantize(qt, x)


@pytest.mark.parametrize("name", ["Q4_2", "IQ2_XS", "q9_9", ""])
def test_unknown_type(name):
    with pytest.raises(OracleError, match="unknown type"):
        quantize(name, np.zeros(32, np.float32))
    assert issubclass(OracleError, ValueError)


def test_type_names_are_case_insensitive_and_table_is_complete():
    assert set(PACKED_TYPES) == {"Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}
    assert set(READ_TYPES) == {"Q4_1", "Q8_1", "Q2_K", "Q3_K", "Q8_K", "IQ4_NL", "IQ4_XS",
                               "TQ1_0", "TQ2_0"}
    assert set(QTYPES) == set(PACKED_TYPES) | set(READ_TYPES) | set(FLOAT_TYPES)
    assert qtype("q8_0") is QTYPES["Q8_0"]
    x = np.ones(32, np.float32)
    assert np.array_equal(quantize("q8_0", x), quantize("Q8_0", x))


def test_dtype_errors():
    with pytest.raises(OracleError, match="float"):
        quantize("Q8_0", np.zeros(32, np.int32))
    with pytest.raises(OracleError, match="uint8"):
        dequantize("Q8_0", np.zeros(34, np.int8))


def _rebuild(qt: str, u: dict[str, np.ndarray]) -> np.ndarray:
    """dequantize_row_<type>'s float formula, applied to unpack's fields."""
    f = np.float32
    if qt in ("Q8_0", "Q4_0", "Q5_0"):
        return u["qs"].astype(f) * u["d"][..., None]
    if qt == "Q5_1":
        return u["qs"].astype(f) * u["d"][..., None] + u["m"][..., None]
    if qt in ("Q4_K", "Q5_K"):
        d1 = u["d"][..., None] * u["sc"].astype(f)
        m1 = u["dmin"][..., None] * u["mn"].astype(f)
        q = u["qs"].reshape(*u["qs"].shape[:-1], 8, 32).astype(f)
        return (d1[..., None] * q - m1[..., None]).reshape(u["qs"].shape)
    ds = u["d"][..., None] * u["sc"].astype(f)
    q = u["qs"].reshape(*u["qs"].shape[:-1], 16, 16).astype(f)
    return (ds[..., None] * q).reshape(u["qs"].shape)


@pytest.mark.parametrize("qt", PACKED_TYPES)
def test_unpack_fields_rebuild_dequantize(qt):
    """unpack's codes and scales are exactly what dequantize multiplies (kernels use them)."""
    q = qtype(qt)
    raw = quantize(qt, np.random.default_rng(4).standard_normal((3, 2 * q.block)).astype("f4"))
    u = unpack(qt, raw)
    assert u["qs"].shape == (3, 2, q.block) and u["d"].shape == (3, 2)
    rebuilt = _rebuild(qt, u).reshape(3, -1)
    assert np.array_equal(rebuilt.view(np.uint32), dequantize(qt, raw).view(np.uint32))
