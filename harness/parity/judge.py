"""The one judge: a case's outputs against what kernels_ref says they must be.

The rule (`verdict_rule`), shared by the JVM matrix, the board's kernel parity and `run`:
- a crash or a timeout is that verdict (failing); a call the user interrupted is
  "interrupted" and one that cannot run here "unavailable" (no verdict); any other failed
  run is FAIL;
- a guard cell or an overwrite outside the output is FAIL, whatever the numbers;
- equal bits with an order model is "bit-exact";
- a binding order model (the target's order is known, e.g. skainet_neon on the board) that is
  not matched bit for bit is FAIL, however small the error;
- otherwise (no model, or models that are only candidates for an order the kernel may not
  use) the output must lie inside the rigorous error bound, finite, for "within-bound";
  anything else is FAIL; where the bound is too wide to tell a sign flip from a pass
  (`Expectation.blind`), inside it is "not-judged", never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.parity.verdict import Verdict
from kernels_ref.compare import bound_tightness, bound_usage, error_at_scale, ulp_distance

#: Outcome.status values a runner reports (besides the crash/timeout verdicts themselves).
OK, FAILED = "ok", "failed"


@dataclass
class Outcome:
    """What a case runner gives back for one case: outputs, status, timings and extras."""

    status: str = OK  # ok | crash | timeout | interrupted | unavailable | failed
    y: np.ndarray | None = None
    error: Any = None  # the failure as the target reports it (text, or a JVM error dict)
    violations: Sequence[str] = ()  # guard cells / writes outside the output range
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)  # drift, probed order, lanes, ...


@dataclass
class Expectation:
    """What the outputs must be. `models`: (name, outputs) of the order models, the first
    the one a mismatch is measured against; `binding`: a model exists for the target's
    order (bit-exact or FAIL), else they are candidates and a miss falls to the bound."""

    models: Sequence[tuple[str, np.ndarray]] = ()
    binding: bool = False
    exact: np.ndarray | None = None
    bound: np.ndarray | None = None
    #: other orders compared bit for bit for the detail only, never a pass (e.g.
    #: fused_final=False: a native build without -ffast-math)
    alternatives: Sequence[tuple[str, np.ndarray]] = ()
    #: the bound reaches 2|exact| (quantized activations): inside it judges nothing
    blind: bool = False

    @property
    def modelled(self) -> bool:
        """A binding order model exists: only bit-exact passes."""
        return self.binding and bool(self.models)


@dataclass
class Judgement:
    """The verdict and the measures behind it."""

    verdict: Verdict
    reference: str = ""  # the model matched or measured against, "exact", "guard cells"
    matched: str | None = None  # the model matched bit for bit
    model_matches: dict[str, bool] = field(default_factory=dict)
    max_ulp: int | None = None
    mismatches: int = 0
    scale_ulps: float = 0.0
    bound_used: float | None = None
    tightness: float | None = None
    outside: np.ndarray | None = None  # indices outside the bound (bound judged only)


def verdict_rule(status: str = OK, *, violations: bool = False, matched: bool = False,
                 modelled: bool = False, within_bound: bool | None = None,
                 blind: bool = False) -> Verdict:
    """THE verdict rule (module docstring), on the facts a judgement found."""
    if status in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.INTERRUPTED, Verdict.UNAVAILABLE):
        return Verdict(status)
    if status != OK or violations:
        return Verdict.FAIL
    if matched:
        return Verdict.BIT_EXACT
    if modelled:
        return Verdict.FAIL
    if not within_bound:
        return Verdict.FAIL
    return Verdict.NOT_JUDGED if blind else Verdict.WITHIN_BOUND


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal float32 bits, element for element (-0 differs from +0, NaN payloads count)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _measure(j: Judgement, y: np.ndarray, ref: np.ndarray) -> None:
    """max ulp, outputs whose bits differ (a zero of the other sign counts, as in the
    verdict), and the error at the output's scale."""
    y32, r32 = np.asarray(y, np.float32), np.asarray(ref, np.float32)
    j.max_ulp = int(ulp_distance(y32, r32).max(initial=0))
    j.mismatches = int((y32.view(np.uint32) != r32.view(np.uint32)).sum())
    j.scale_ulps = error_at_scale(y, ref)


def _within(j: Judgement, y: np.ndarray, exact: np.ndarray, bound: np.ndarray) -> bool:
    """Inside the bound on every output, by the ratio and element for element, and finite:
    the strictest reading of both legs' checks."""
    j.bound_used = bound_usage(y, exact, bound)
    j.tightness = bound_tightness(bound, exact)
    over = np.abs(np.asarray(y, np.float64) - exact) > bound
    j.outside = np.argwhere(over)
    return j.bound_used <= 1.0 and not over.any() and bool(np.isfinite(y).all())


def judge(out: Outcome, exp: Expectation) -> Judgement:
    """Judge one case's outcome against the expectation with `verdict_rule`."""
    if out.status != OK or out.y is None:
        return Judgement(verdict_rule(out.status if out.status != OK else FAILED))
    if out.violations:
        return Judgement(verdict_rule(violations=True), reference="guard cells")
    y = out.y
    j = Judgement(Verdict.FAIL)
    j.model_matches = {name: bits_equal(y, ref) for name, ref in exp.models}
    j.matched = next((n for n, ok in j.model_matches.items() if ok), None)
    j.model_matches |= {name: bits_equal(y, ref) for name, ref in exp.alternatives}
    within = None
    if exp.models:
        name, ref = next(((n, r) for n, r in exp.models if n == j.matched), exp.models[0])
        j.reference = name
        _measure(j, y, ref)
    elif exp.exact is not None:
        j.reference = "exact"
        _measure(j, y, exp.exact)
    if j.matched is None and not exp.modelled and exp.exact is not None \
            and exp.bound is not None:
        within = _within(j, y, exp.exact, exp.bound)
    j.verdict = verdict_rule(matched=j.matched is not None, modelled=exp.modelled,
                             within_bound=within, blind=exp.blind)
    return j


__all__ = ["FAILED", "OK", "Expectation", "Judgement", "Outcome", "bits_equal", "judge",
           "verdict_rule"]


def off_model_note(y: np.ndarray, exact: np.ndarray, bound: np.ndarray) -> str:
    """For outputs that missed their binding order model (the verdict stays FAIL): how far
    they are from the exact result, and whether they still lie inside its rigorous bound
    (a build, or a class, that orders its sums unlike the model)."""
    j = judge(Outcome(y=y), Expectation(exact=exact, bound=bound))
    return (f"vs exact: error/bound {j.bound_used:.3g}, "
            + ("inside the rigorous bound: the build orders its sums unlike the model"
               if j.verdict == Verdict.WITHIN_BOUND else "outside the rigorous bound too"))
