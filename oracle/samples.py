"""Deterministic sample rows, ordinary and adversarial, for cross-checks and fixtures.

The adversarial rows are the inputs where a wrong rounding rule or float order shows:
all-zero and signed-zero blocks, constant blocks, a lone non-zero, values that land exactly
on .5 after scaling, tiny values giving subnormal (or zero) fp16 scales, values past the
fp16 range, and huge next to tiny.
"""

from __future__ import annotations

import numpy as np

from oracle.formats import QK_K
from oracle.quants import IQ4_VALUES

F32 = np.float32


def random_rows(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Normal rows with a per-row scale spread over a few decades."""
    scale = np.exp(rng.uniform(-4, 2, size=(rows, 1)))
    return (rng.standard_normal((rows, n)) * scale).astype(F32)


def _tiled(pattern: np.ndarray, n: int) -> np.ndarray:
    return np.resize(pattern.astype(F32), n).astype(F32)


def adversarial_rows(rng: np.random.Generator, n: int = 2 * QK_K) -> dict[str, np.ndarray]:
    """Named (rows, n) float32 cases; n must be a multiple of 256 so every format applies."""
    if n % QK_K:
        raise ValueError(f"adversarial rows need n % {QK_K} == 0, got {n}")
    half_steps = np.arange(-16, 16, dtype=F32) + F32(0.5)  # k + .5: ties after scale 1
    q8_ties = half_steps.copy()
    q8_ties[0] = 127.0  # amax 127 -> d = 1, id = 1: every code is an exact .5 tie
    q4_ties = np.concatenate([[-8.0], np.arange(-7.5, 8.0, 0.5)])[:32]  # max -8 -> d = 1
    q5_ties = np.concatenate([[-16.0], np.arange(-15.5, 16.0, 1.0)])[:32]  # max -16 -> d = 1
    one_hot = np.zeros(n, F32)
    one_hot[37] = 3.25
    signed_zero = np.where(rng.random(n) < 0.5, F32(-0.0), F32(0.0)).astype(F32)
    cases = {
        "zeros": np.zeros((2, n), F32),
        "signed_zeros": np.stack([signed_zero, -np.abs(signed_zero)]),
        "constant": np.stack([np.full(n, 0.75, F32), np.full(n, -3.0, F32)]),
        "one_nonzero": np.stack([one_hot, -one_hot]),
        "ties_q8_0": np.stack([_tiled(q8_ties, n), -_tiled(q8_ties, n)]),
        "ties_q4_0": np.stack([_tiled(q4_ties, n), _tiled(-q4_ties, n)]),
        "ties_q5": np.stack([_tiled(q5_ties, n), _tiled(np.round(q5_ties) + 0.5, n)]),
        "half_integers": (rng.integers(-40, 40, (2, n)) + F32(0.5)).astype(F32),
        "tiny_subnormal_fp16": (rng.standard_normal((2, n)) * F32(1e-6)).astype(F32),
        "tiny_subnormal_f32": (rng.standard_normal((2, n)) * F32(1e-41)).astype(F32),
        "near_fp16_max": (rng.uniform(-1, 1, (2, n)) * F32(65504.0 * 127)).astype(F32),
        "past_fp16_max": (rng.uniform(-1, 1, (2, n)) * F32(1e9)).astype(F32),
        "huge_and_tiny": np.where(
            rng.random((2, n)) < 0.1, F32(3e30), rng.standard_normal((2, n)) * F32(1e-30)
        ).astype(F32),
        "float32_extremes": np.stack(
            [_tiled(np.array([3.0e38, -3.0e38, 1.0, 0.0]), n),
             _tiled(np.array([1.4e-45, -1.4e-45, 0.0, 2.0e-38]), n)]
        ),
        "steps": np.stack([np.linspace(-1, 1, n, dtype=F32), np.linspace(0, 5, n, dtype=F32)]),
        "positive_only": np.abs(rng.standard_normal((2, n))).astype(F32) + F32(1.0),
    }
    cases.update(_read_format_ties(rng, n))
    return {k: np.ascontiguousarray(v, dtype=F32) for k, v in cases.items()}


def _read_format_ties(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Rows on the rounding edges of the formats SKaiNET only reads: Q8_K with iscale = 1
    (every code a nearest_int tie), IQ4 with d = 1 and values on the midpoints between
    levels, Q4_1 with d = 1 (x/d + .5 integral), TQ1_0/TQ2_0 with x/d = +-.5 (lroundf ties
    away from zero), and exactly ternary rows."""
    half = np.arange(-126, 127, dtype=F32) + F32(0.5)
    q8k = np.concatenate([[-127.0], rng.choice(half, QK_K - 1)])
    levels = IQ4_VALUES.astype(F32)
    mid = (levels[:-1] + levels[1:]) / F32(2)
    iq4 = np.concatenate([[-127.0], np.resize(mid, 31)])
    q41 = np.concatenate([[0.0, 15.0], np.arange(30) % 15 + 0.5])
    tern = np.concatenate([[2.0], rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], QK_K - 1)])
    exact = [rng.integers(-1, 2, QK_K) * s for s in (0.7, 3e-5)]
    return {
        "ties_q8_k": np.stack([_tiled(q8k, n), -_tiled(q8k, n)]),
        "ties_iq4": np.stack([_tiled(iq4, n), -_tiled(iq4, n)]),
        "ties_q4_1": np.stack([_tiled(q41, n), _tiled(q41, n) - F32(7.25)]),
        "ties_ternary": np.stack([_tiled(tern, n), -_tiled(tern, n)]),
        "ternary_exact": np.stack([_tiled(e, n) for e in exact]),
    }


def random_blocks(rng: np.random.Generator, nbytes: int, count: int) -> np.ndarray:
    """Arbitrary packed bytes, so every fp16 scale pattern (subnormal, Inf, NaN, -0) occurs."""
    return rng.integers(0, 256, size=(count, nbytes), dtype=np.uint8)


def random_q8_0_matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Packed Q8_0 bytes (rows, cols/32*34) in GGUF row order, built directly from random
    codes and valid positive fp16 scales: a lm_head-sized table without quantizing floats."""
    from oracle.cfloat import f32_to_fp16
    from oracle.formats import qtype

    qt = qtype("Q8_0")
    nb = qt.blocks_in(cols)
    blocks = np.empty((rows, nb, qt.nbytes), np.uint8)
    d = rng.random((rows, nb), dtype=np.float32) * np.float32(0.02) + np.float32(1e-4)
    blocks[:, :, :2] = f32_to_fp16(d).view(np.uint8).reshape(rows, nb, 2)
    blocks[:, :, 2:] = rng.integers(-127, 128, (rows, nb, qt.block), np.int8).view(np.uint8)
    return blocks.reshape(rows, nb * qt.nbytes)
