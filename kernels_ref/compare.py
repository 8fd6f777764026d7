"""Comparing float32 results: distance in units in the last place."""

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
