"""The one verdict vocabulary: every surface (CLI, `run`, the report, pytest) names a case's
outcome with a `Verdict`. Str-valued, so JSON, Markdown and HTML show the same words as
before ("bit-exact", "FAIL", ...) and a verdict compares equal to its name."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What a case came to, from held-to-a-model to broken."""

    BIT_EXACT = "bit-exact"  # equal bits with an order model
    PASS = "pass"  # a check with no numbers held (a hash, an exit reason, a fit)
    WITHIN_BOUND = "within-bound"  # order not modelled: inside the rigorous error bound
    NOT_JUDGED = "not-judged"  # compared, but the comparison can tell nothing (detail: why)
    KNOWN_FAILURE = "known-failure"  # a failure the product already names, reported only
    UNAVAILABLE = "unavailable"  # cannot run here (no build, no board)
    SKIPPED = "skipped"  # a case of a matrix not run (shape, format, earlier hang)
    NOT_RUNNABLE = "not-runnable"  # the runtime cannot run it (e.g. no Vector API)
    INTERRUPTED = "interrupted"  # not run: the user stopped the run
    FAIL = "FAIL"  # a wrong output, a guard cell written, a failed run
    CRASH = "crash"  # the code under test threw
    TIMEOUT = "timeout"  # a call did not return
    ERROR = "error"  # the input could not be checked


V = Verdict
#: A report row's verdicts, best first; a leg's status derives from them.
REPORT_VERDICTS: tuple[Verdict, ...] = (V.BIT_EXACT, V.PASS, V.WITHIN_BOUND, V.NOT_JUDGED,
                                        V.KNOWN_FAILURE, V.UNAVAILABLE, V.FAIL, V.ERROR)
#: Report verdicts that fail a leg.
REPORT_FAILING: tuple[Verdict, ...] = (V.FAIL, V.ERROR)
#: A parity case's verdicts best to worst (the colour scale of the JVM heat map).
CASE_VERDICTS: tuple[Verdict, ...] = (V.BIT_EXACT, V.WITHIN_BOUND, V.SKIPPED, V.NOT_RUNNABLE,
                                      V.FAIL, V.CRASH, V.TIMEOUT)
#: Worst last: which case verdict a matrix cell of several cases shows.
CASE_RANK: tuple[Verdict, ...] = (V.BIT_EXACT, V.WITHIN_BOUND, V.SKIPPED, V.INTERRUPTED,
                                  V.NOT_RUNNABLE, V.FAIL, V.CRASH, V.TIMEOUT)
#: A parity case that passes, and one that fails (the run exits 1).
CASE_PASSING: tuple[Verdict, ...] = (V.BIT_EXACT, V.WITHIN_BOUND)
CASE_FAILING: tuple[Verdict, ...] = (V.FAIL, V.CRASH, V.TIMEOUT)

_REPORT_OF = {V.CRASH: V.FAIL, V.TIMEOUT: V.FAIL, V.NOT_RUNNABLE: V.UNAVAILABLE,
              V.SKIPPED: V.UNAVAILABLE, V.INTERRUPTED: V.UNAVAILABLE}


def report_verdict(v: str) -> Verdict:
    """A case verdict in the report's vocabulary: a crash or timeout is a FAIL row, a case
    not run an unavailable one."""
    v = Verdict(v)
    return _REPORT_OF.get(v, v)


def worse(a: str, b: str) -> Verdict:
    """The worse of two case verdicts by `CASE_RANK`."""
    return Verdict(max(a, b, key=lambda v: CASE_RANK.index(Verdict(v))))


#: A case that could not be judged here (no Vector API, a lane width this CPU lacks): a
#: failure when the user asked for it, a skip with the reason when a default brought it.
UNAVAILABLE_VERDICTS: tuple[Verdict, ...] = (V.UNAVAILABLE, V.NOT_RUNNABLE)
ITEM_PASSED, ITEM_FAILED, ITEM_SKIPPED, ITEM_XFAILED = "passed", "failed", "skipped", "xfailed"


def item_outcome(v: str, asked: bool = False) -> str:
    """A verdict as a test item's outcome (pytest, junit XML): bit-exact, within-bound and
    pass pass; FAIL, crash, timeout and error fail; unavailable fails when `asked`, else
    it is skipped; a known failure is xfailed; a case not run or not judged is skipped
    (never a pass)."""
    v = Verdict(v)
    if v in (*CASE_PASSING, V.PASS):
        return ITEM_PASSED
    if v in (*CASE_FAILING, V.ERROR):
        return ITEM_FAILED
    if v in UNAVAILABLE_VERDICTS:
        return ITEM_FAILED if asked else ITEM_SKIPPED
    if v == V.KNOWN_FAILURE:
        return ITEM_XFAILED
    return ITEM_SKIPPED
