"""Comparing float32 results: distance in units in the last place, error against the
output's scale, and how a rigorous bound compares with the outputs."""

from __future__ import annotations

import numpy as np

from oracle.formats import OracleError


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in float32 units in the last place, per element (int64).

    Identical bits and +0 vs -0 are 0 apart; two NaNs are 0 apart; NaN against a number is
    the int32 maximum. Values are mapped onto one ordered integer line, so the distance
    counts the float32 values strictly between them plus one, across zero too. `a` and `b`
    must have the same shape (OracleError naming both otherwise: no silent broadcasting).
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise OracleError(f"ulp_distance: the arrays must have the same shape, got {a.shape} "
                          f"and {b.shape}")
    ia = np.ascontiguousarray(a).view(np.int32).astype(np.int64)
    ib = np.ascontiguousarray(b).view(np.int32).astype(np.int64)
    ka = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    kb = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    d = np.abs(ka - kb)
    na, nb = np.isnan(a), np.isnan(b)
    d = np.where(na & nb, 0, d)
    return np.where(na ^ nb, np.iinfo(np.int32).max, d)


def ulp_at(value: float) -> float:
    """The float32 spacing (one ulp) at |value|: the unit errors are read in at that scale."""
    return float(np.spacing(np.float32(abs(value))))


def error_at_scale(y: np.ndarray, ref: np.ndarray) -> float:
    """max|y - ref| in ulps of max|ref|: error against the output's scale, not per element
    (a raw ulp count on a near-zero output says nothing). 0 when identical, inf when a
    non-finite value appears on one side only."""
    y64, r64 = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if not np.array_equal(np.isfinite(y64), np.isfinite(r64)):
        return float("inf")
    ok = np.isfinite(r64)
    if not ok.any():
        return 0.0
    err = float(np.max(np.abs(y64[ok] - r64[ok]), initial=0.0))
    scale = ulp_at(float(np.max(np.abs(r64[ok]))))
    return err / scale if scale else (0.0 if err == 0 else float("inf"))


def bound_usage(y: np.ndarray, ref: np.ndarray, bound: np.ndarray) -> float:
    """max over outputs of |y - ref| / bound: <= 1 is inside the bound."""
    err = np.abs(np.asarray(y, np.float64) - np.asarray(ref, np.float64))
    with np.errstate(all="ignore"):
        ratio = np.where(err == 0, 0.0, err / np.asarray(bound, np.float64))
    return float(np.nanmax(ratio, initial=0.0))


def bound_tightness(bound: np.ndarray, ref: np.ndarray) -> float:
    """max bound / max|ref|: how wide the bound is against the outputs. Near or above 1 it
    cannot tell a right answer from a sign flip."""
    top = float(np.max(np.abs(np.asarray(ref, np.float64)), initial=0.0))
    widest = float(np.max(np.asarray(bound, np.float64), initial=0.0))
    return widest / top if top else float("inf")


def sign_blind(bound: np.ndarray, ref: np.ndarray) -> int:
    """Outputs whose bound reaches 2|ref|: there the output with its sign flipped would still
    be "within bound", so the bound cannot judge them."""
    b, r = np.asarray(bound, np.float64), np.abs(np.asarray(ref, np.float64))
    return int(np.count_nonzero(b >= 2 * r))
