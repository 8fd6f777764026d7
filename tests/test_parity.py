"""The one judge and the one verdict vocabulary (harness.parity): every verdict reachable,
and neither the board's rule (a modelled order passes only bit-exact) nor the JVM's (a guard
cell written, a crash, a timeout fail; outside the bound or non-finite fails) loosened."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.parity.judge import FAILED, Expectation, Outcome, judge, verdict_rule
from harness.parity.runner import KernelCall, LocalRunner
from harness.parity.verdict import (
    CASE_VERDICTS,
    REPORT_VERDICTS,
    Verdict,
    report_verdict,
    worse,
)
from kernels_ref import error_bound, matmul_wt
from oracle import quantize

V = Verdict


@pytest.fixture(scope="module")
def case():
    """(y exact in the skainet_scalar order, model, exact, bound) of a small Q8_0 matmul."""
    rng = np.random.default_rng(3)
    raw = quantize("Q8_0", rng.standard_normal((8, 64)).astype(np.float32))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    model = matmul_wt(x, raw, "Q8_0", 8, 64, semantics="skainet_scalar")
    exact = matmul_wt(x, raw, "Q8_0", 8, 64, semantics="exact")
    bound = error_bound(x, raw, "Q8_0", 8, 64)
    return model, exact, bound


def one_ulp_off(y: np.ndarray) -> np.ndarray:
    out = y.copy()
    out[0, 1] = np.nextafter(out[0, 1], np.float32(np.inf))
    return out


def test_equal_bits_with_a_model_is_bit_exact_and_names_the_model(case):
    model, exact, bound = case
    other = one_ulp_off(model)
    j = judge(Outcome(y=model.copy()), Expectation([("first", other), ("second", model)],
                                                   exact=exact, bound=bound))
    assert j.verdict == V.BIT_EXACT and j.reference == "second" and j.max_ulp == 0


def test_a_binding_model_fails_one_ulp_inside_the_bound(case):
    """Board rule kept: with an order model, within the bound is no pass."""
    model, exact, bound = case
    y = one_ulp_off(model)
    j = judge(Outcome(y=y), Expectation([("neon", model)], binding=True, exact=exact,
                                        bound=bound))
    assert j.verdict == V.FAIL and j.max_ulp == 1 and j.mismatches == 1
    assert j.bound_used is None  # the bound was not even consulted


def test_a_binding_model_tells_zero_signs_apart(case):
    model = np.zeros((2, 8), np.float32)
    j = judge(Outcome(y=-model), Expectation([("m", model)], binding=True))
    assert j.verdict == V.FAIL and j.mismatches == model.size and j.max_ulp == 0


def test_an_alternative_order_is_noted_but_never_passes(case):
    model, _, _ = case
    unfused = one_ulp_off(model)
    j = judge(Outcome(y=unfused.copy()), Expectation([("fused", model)], binding=True,
                                                     alternatives=[("unfused", unfused)]))
    assert j.verdict == V.FAIL and j.model_matches == {"fused": False, "unfused": True}


def test_candidate_orders_missed_fall_to_the_bound(case):
    """JVM rule kept: a kernel matching none of the candidate orders is judged by the
    bound: inside is within-bound, outside is FAIL with the outputs named."""
    model, exact, bound = case
    exp = Expectation([("scalar", model)], exact=exact, bound=bound)
    j = judge(Outcome(y=one_ulp_off(model)), exp)
    assert j.verdict == V.WITHIN_BOUND and j.reference == "scalar" and j.max_ulp == 1
    far = model.copy()
    far[1, 2] += 4 * bound[1, 2] + 1
    j = judge(Outcome(y=far), exp)
    assert j.verdict == V.FAIL and [list(i) for i in j.outside] == [[1, 2]]


def test_unmodelled_within_bound_even_when_equal_to_exact(case):
    _, exact, bound = case
    j = judge(Outcome(y=exact.astype(np.float32)), Expectation(exact=exact, bound=bound))
    assert j.verdict == V.WITHIN_BOUND and j.reference == "exact" and j.bound_used <= 1


def test_non_finite_outputs_fail_though_the_ratio_ignores_nan(case):
    _, exact, bound = case
    y = exact.astype(np.float32)
    y[0, 0] = np.nan
    j = judge(Outcome(y=y), Expectation(exact=exact, bound=bound))
    assert j.bound_used <= 1  # the ratio alone would have passed it
    assert j.verdict == V.FAIL and not len(j.outside)


def test_a_blind_bound_is_not_judged_never_a_pass(case):
    _, exact, bound = case
    y = exact.astype(np.float32)
    assert judge(Outcome(y=y), Expectation(exact=exact, bound=bound, blind=True)).verdict \
        == V.NOT_JUDGED
    y[0, 0] += 10 * bound[0, 0] + 1
    assert judge(Outcome(y=y), Expectation(exact=exact, bound=bound, blind=True)).verdict \
        == V.FAIL


def test_guard_cells_fail_even_with_right_outputs(case):
    model, exact, bound = case
    j = judge(Outcome(y=model.copy(), violations=["wrote output[32]"]),
              Expectation([("m", model)], exact=exact, bound=bound))
    assert j.verdict == V.FAIL and j.reference == "guard cells"


@pytest.mark.parametrize("status,verdict", [("crash", V.CRASH), ("timeout", V.TIMEOUT),
                                            ("interrupted", V.INTERRUPTED),
                                            ("unavailable", V.UNAVAILABLE),
                                            (FAILED, V.FAIL), ("died", V.FAIL)])
def test_runs_that_end_without_outputs(case, status, verdict):
    model, _, _ = case
    assert judge(Outcome(status, error="x"), Expectation([("m", model)])).verdict == verdict
    assert verdict_rule(status) == verdict


def test_an_ok_status_without_outputs_is_a_failure():
    assert judge(Outcome(y=None), Expectation()).verdict == V.FAIL


def test_verdict_names_are_the_report_words_and_json_strings():
    assert REPORT_VERDICTS == ("bit-exact", "pass", "within-bound", "not-judged",
                               "known-failure", "unavailable", "FAIL", "error")
    assert CASE_VERDICTS == ("bit-exact", "within-bound", "skipped", "not-runnable", "FAIL",
                             "crash", "timeout")
    assert json.dumps({"v": V.BIT_EXACT}) == '{"v": "bit-exact"}' and f"{V.FAIL}" == "FAIL"
    assert {report_verdict(v) for v in ("crash", "timeout")} == {"FAIL"}
    assert {report_verdict(v) for v in ("skipped", "not-runnable", "interrupted")} == \
        {"unavailable"}
    assert worse("bit-exact", "timeout") == "timeout" and worse("crash", "FAIL") == "crash"


def test_local_runner_gives_outputs_or_unavailable():
    x = np.ones((1, 32), np.float32)
    call = KernelCall("host", x, np.zeros(0, np.uint8), 1, 32)
    ok = LocalRunner(lambda k: k.x.sum(axis=1, keepdims=True)).run(call)
    assert ok.status == "ok" and ok.y.tolist() == [[32.0]] and ok.y.dtype == np.float32

    def no_model(k):
        from oracle import OracleError
        raise OracleError("no model of this format")

    gone = LocalRunner(no_model).run(call)
    assert gone.status == V.UNAVAILABLE and "no model" in gone.error
    assert judge(gone, Expectation()).verdict == V.UNAVAILABLE
