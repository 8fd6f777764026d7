"""The vectorized semantics against literal one-output-at-a-time transcriptions of the
kernels' loops (float32 scalars, one operation at a time), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_ref import fma32, matmul_wt
from kernels_ref.activations import skainet_native_q8
from oracle import quantize, unpack

F = np.float32
OUT = 5


def fma(a, b, c) -> np.float32:
    return fma32(np.float32(a), np.float32(b), np.float32(c))[()]


def hadd4(v) -> np.float32:
    return F(F(v[0] + v[1]) + F(v[2] + v[3]))


def reduce_lanes(v, reduction: str) -> np.float32:
    if reduction == "pairwise":
        v = list(v)
        while len(v) > 1:
            v = [F(v[i] + v[i + 1]) for i in range(0, len(v), 2)]
        return v[0]
    if reduction == "halving":
        v = list(v)
        while len(v) > 1:
            h = len(v) // 2
            v = [F(v[i] + v[i + h]) for i in range(h)]
        return v[0]
    acc = F(0)
    for t in v:
        acc = F(acc + t)
    return acc


def weights(fmt: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((OUT, n)).astype(F) * F(rng.choice([1e-3, 1.0, 300.0]))
    w[1, :32] = 0.5  # a constant block
    return quantize(fmt, w)


def activations(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal(n).astype(F)
    x[::7] *= F(1e4)  # wide dynamic range: orders of accumulation matter
    x[3::11] = -x[2::11][: len(x[3::11])]
    return x


def row_parts(fmt: str, raw: np.ndarray, o: int) -> dict:
    return {k: v[o] for k, v in unpack(fmt, raw).items()}


# ---------------------------------------------------------------------------- scalar
# One function per format: block b of a row added to `acc`, one operation at a time.

def scalar_q8_0_block(acc: np.float32, x: np.ndarray, p: dict, b: int) -> np.float32:
    """Q8_0: x * code, times d, added one element at a time."""
    d = p["d"][b]
    for k in range(32):
        acc = F(acc + F(F(x[32 * b + k] * F(p["qs"][b, k])) * d))
    return acc


def scalar_q4_0_block(acc: np.float32, x: np.ndarray, p: dict, b: int) -> np.float32:
    """Q4_0: the low and the high nibble of each byte in turn, each times d."""
    d = p["d"][b]
    for j in range(16):
        lo, hi = F(p["qs"][b, j]), F(p["qs"][b, j + 16])
        acc = F(acc + F(F(x[32 * b + j] * lo) * d))
        acc = F(acc + F(F(x[32 * b + 16 + j] * hi) * d))
    return acc


def scalar_q5_block(acc: np.float32, x: np.ndarray, p: dict, b: int,
                    with_min: bool) -> np.float32:
    """Q5_0 / Q5_1 (`with_min`): weights d * code (+ m), a low/high pair per step."""
    d = p["d"][b]
    m = p["m"][b] if with_min else F(0)
    for j in range(16):
        wl = F(d * F(p["qs"][b, j]))
        wh = F(d * F(p["qs"][b, j + 16]))
        if with_min:
            wl, wh = F(wl + m), F(wh + m)
        acc = F(acc + F(F(x[32 * b + j] * wl) + F(x[32 * b + 16 + j] * wh)))
    return acc


def scalar_k_block(acc: np.float32, x: np.ndarray, p: dict, b: int) -> np.float32:
    """Q4_K / Q5_K: per 32-element group a code sum and an input sum, then scale and min."""
    d = p["d"][b]
    for s in range(8):
        cs, xs = F(0), F(0)
        for i in range(32):
            v = x[256 * b + 32 * s + i]
            cs = F(cs + F(v * F(p["qs"][b, 32 * s + i])))
            xs = F(xs + v)
        scale = F(d * F(p["sc"][b, s]))
        off = F(p["dmin"][b] * F(p["mn"][b, s]))
        acc = F(acc + F(F(cs * scale) - F(xs * off)))
    return acc


def scalar_q6_k_block(acc: np.float32, x: np.ndarray, p: dict, b: int) -> np.float32:
    """Q6_K: weight (d * scale) * code, added one element at a time."""
    d = p["d"][b]
    for e in range(256):
        w = F(F(d * F(p["sc"][b, e // 16])) * F(p["qs"][b, e]))
        acc = F(acc + F(x[256 * b + e] * w))
    return acc


SCALAR_BLOCKS = {
    "Q8_0": scalar_q8_0_block, "Q4_0": scalar_q4_0_block,
    "Q5_0": lambda acc, x, p, b: scalar_q5_block(acc, x, p, b, with_min=False),
    "Q5_1": lambda acc, x, p, b: scalar_q5_block(acc, x, p, b, with_min=True),
    "Q4_K": scalar_k_block, "Q5_K": scalar_k_block, "Q6_K": scalar_q6_k_block,
}


def scalar_row(fmt: str, x: np.ndarray, p: dict) -> np.float32:
    """One output of the scalar kernel: its blocks in order into one float32 sum."""
    block = SCALAR_BLOCKS[fmt]
    acc = F(0)
    for b in range(p["d"].shape[0]):
        acc = block(acc, x, p, b)
    return acc


# ---------------------------------------------------------------------------- panama

def panama_row(fmt: str, x: np.ndarray, p: dict, lanes: int, reduction: str,
               last_row: bool) -> np.float32:
    acc = F(0)
    nb = p["d"].shape[0]
    byte_load = 16 if lanes == 16 else 8
    for b in range(nb):
        d = p["d"][b]
        if fmt in ("Q4_K", "Q5_K"):
            for s in range(8):
                # the array's last qs group (last block of the last row): the vector loop
                # runs while idx + lanes <= 32 and idx + byte_load <= 32, a scalar tail follows
                at_end = last_row and b == nb - 1 and s >= 6
                cv, iv = [F(0)] * lanes, [F(0)] * lanes
                idx = 0
                while idx + lanes <= 32 and (not at_end or idx + byte_load <= 32):
                    for k in range(idx, idx + lanes):
                        v = x[256 * b + 32 * s + k]
                        cv[k % lanes] = fma(v, F(p["qs"][b, 32 * s + k]), cv[k % lanes])
                        iv[k % lanes] = F(v + iv[k % lanes])
                    idx += lanes
                cs, xs = reduce_lanes(cv, reduction), reduce_lanes(iv, reduction)
                for k in range(idx, 32):
                    v = x[256 * b + 32 * s + k]
                    cs = F(cs + F(v * F(p["qs"][b, 32 * s + k])))
                    xs = F(xs + v)
                scale = F(d * F(p["sc"][b, s]))
                off = F(p["dmin"][b] * F(p["mn"][b, s]))
                acc = F(acc + F(F(cs * scale) - F(xs * off)))
            continue
        size = 256 if fmt == "Q6_K" else 32
        if fmt in ("Q8_0", "Q4_0"):
            w = [F(c) for c in p["qs"][b]]
        elif fmt == "Q5_0":
            w = [F(d * F(c)) for c in p["qs"][b]]
        elif fmt == "Q5_1":
            w = [F(F(d * F(c)) + p["m"][b]) for c in p["qs"][b]]
        else:
            w = [F(F(d * F(p["sc"][b, e // 16])) * F(p["qs"][b, e])) for e in range(256)]
        lane = [F(0)] * lanes
        for k in range(size):
            lane[k % lanes] = fma(x[size * b + k], w[k], lane[k % lanes])
        r = reduce_lanes(lane, reduction)
        acc = F(acc + F(r * d)) if fmt in ("Q8_0", "Q4_0") else F(acc + r)
    return acc


# ---------------------------------------------------------------------------- neon
# One function per format family: block b of a row added to `acc` as the NEON kernel does.

def neon_input_sum(xs: np.ndarray, fused: bool) -> np.float32:
    """A block's input sum: in 4 lanes seeded with its first 4 values (fused), else in order."""
    if fused:
        iv = [xs[j] for j in range(4)]
        for k in range(4, 32):
            iv[k % 4] = F(iv[k % 4] + xs[k])
        return hadd4(iv)
    isum = F(0)
    for v in xs:
        isum = F(isum + v)
    return isum


def neon_32_block(fmt: str, acc: np.float32, x: np.ndarray, p: dict, b: int,
                  fused: bool) -> np.float32:
    """Q8_0 / Q5_0 / Q5_1: codes (+ offset) in 4 FMA lanes, then d, the offset and m."""
    d = p["d"][b]
    off = {"Q8_0": 0, "Q5_0": 16, "Q5_1": 0}[fmt]
    lane = [F(0)] * 4
    for k in range(32):
        lane[k % 4] = fma(x[32 * b + k], F(int(p["qs"][b, k]) + off), lane[k % 4])
    dot = hadd4(lane)
    isum = neon_input_sum(x[32 * b : 32 * b + 32], fused)
    if fmt == "Q8_0":
        return fma(dot, d, acc) if fused else F(acc + F(dot * d))
    if fmt == "Q5_0":
        t = F(dot - F(F(16) * isum))
        return fma(t, d, acc) if fused else F(acc + F(d * t))
    m = p["m"][b]
    if fused:
        return fma(m, isum, fma(d, dot, acc))
    return F(acc + F(F(d * dot) + F(m * isum)))


def neon_q5_k_group_sums(x: np.ndarray, p: dict, b: int
                         ) -> tuple[list[np.float32], list[np.float32]]:
    """Q5_K: per 32-element group the code dot and the input sum, each in 4 lanes."""
    cs, xs = [], []
    for s in range(8):
        cv, iv = [F(0)] * 4, [F(0)] * 4
        for k in range(32):
            v = x[256 * b + 32 * s + k]
            cv[k % 4] = fma(v, F(p["qs"][b, 32 * s + k]), cv[k % 4])
            iv[k % 4] = F(iv[k % 4] + v)
        cs.append(hadd4(cv))
        xs.append(hadd4(iv))
    return cs, xs


def neon_q5_k_block(acc: np.float32, x: np.ndarray, p: dict, b: int,
                    fused: bool) -> np.float32:
    """Q5_K: the group sums scaled into a block-local sum (two groups per step fused)."""
    d = p["d"][b]
    local = F(0)
    cs, xs = neon_q5_k_group_sums(x, p, b)
    sc = [F(v) for v in p["sc"][b]]
    mn = [F(v) for v in p["mn"][b]]
    dmin = p["dmin"][b]
    for s in range(8):
        if fused and s % 2 == 0:
            a = fma(sc[s], cs[s], F(sc[s + 1] * cs[s + 1]))
            bb = fma(F(dmin * xs[s]), mn[s], F(mn[s + 1] * F(dmin * xs[s + 1])))
            local = F(local + fma(a, d, -bb))
        elif not fused:
            local = F(local + F(F(cs[s] * F(d * sc[s])) - F(xs[s] * F(dmin * mn[s]))))
    return F(acc + local)


def neon_q4_k_block(acc: np.float32, p: dict, b: int, fused: bool,
                    act: dict) -> np.float32:
    """Q4_K with Q8 activations: exact integer sums, then d, dmin and the activation d."""
    d = p["d"][b]
    q8 = act["qs"][b].astype(np.int64)
    di = act["d"][b]
    big_a = sum(int(p["sc"][b, s]) * int(np.dot(q8[32 * s : 32 * s + 32],
                p["qs"][b, 32 * s : 32 * s + 32].astype(np.int64))) for s in range(8))
    big_b = sum(int(p["mn"][b, s]) * int(q8[32 * s : 32 * s + 32].sum())
                for s in range(8))
    fa, fb = F(big_a), F(big_b)
    if fused:
        return fma(fma(fa, d, -F(fb * p["dmin"][b])), di, acc)
    return F(acc + F(di * F(F(d * fa) - F(p["dmin"][b] * fb))))


def neon_q6_k_block(acc: np.float32, p: dict, b: int, fused: bool,
                    act: dict) -> np.float32:
    """Q6_K with Q8 activations: an exact integer sum, then d times the activation d."""
    d = p["d"][b]
    q8 = act["qs"][b].astype(np.int64)
    di = act["d"][b]
    wdot = sum(int(p["sc"][b, g]) * int(np.dot(q8[16 * g : 16 * g + 16],
               p["qs"][b, 16 * g : 16 * g + 16].astype(np.int64))) for g in range(16))
    fw = F(wdot)
    return fma(F(d * di), fw, acc) if fused else F(acc + F(F(d * di) * fw))


def neon_block(fmt: str, acc: np.float32, x: np.ndarray, p: dict, b: int, fused: bool,
               act: dict | None) -> np.float32:
    """Block b of a row added to `acc` by the NEON kernel of `fmt`."""
    if fmt in ("Q8_0", "Q5_0", "Q5_1"):
        return neon_32_block(fmt, acc, x, p, b, fused)
    if fmt == "Q5_K":
        return neon_q5_k_block(acc, x, p, b, fused)
    if fmt == "Q4_K":  # Q4_K / Q6_K with quantized activations
        return neon_q4_k_block(acc, p, b, fused, act)
    return neon_q6_k_block(acc, p, b, fused, act)


def neon_row(fmt: str, x: np.ndarray, p: dict, fused: bool, act: dict | None) -> np.float32:
    """One output of the NEON kernel: its blocks in order into one float32 sum."""
    acc = F(0)
    for b in range(p["d"].shape[0]):
        acc = neon_block(fmt, acc, x, p, b, fused, act)
    return acc


FORMATS = [("Q8_0", 96), ("Q4_0", 96), ("Q5_0", 96), ("Q5_1", 96), ("Q4_K", 512),
           ("Q5_K", 512), ("Q6_K", 512)]


def bits(v) -> list[int]:
    return np.asarray(v, dtype=F).view(np.uint32).tolist()


@pytest.mark.parametrize("fmt,n", FORMATS)
def test_scalar_matches_literal_loops(fmt: str, n: int) -> None:
    raw, x = weights(fmt, n, 1), activations(n, 1)
    want = [scalar_row(fmt, x, row_parts(fmt, raw, o)) for o in range(OUT)]
    assert bits(matmul_wt(x, raw, fmt, OUT, n, semantics="skainet_scalar")) == bits(want)


@pytest.mark.parametrize("fmt,n", FORMATS)
@pytest.mark.parametrize("lanes,reduction", [(8, "sequential"), (4, "pairwise"),
                                             (16, "sequential"), (2, "sequential"),
                                             (4, "halving"), (8, "halving"), (16, "halving")])
def test_panama_matches_literal_loops(fmt: str, n: int, lanes: int, reduction: str) -> None:
    raw, x = weights(fmt, n, 2), activations(n, 2)
    want = [panama_row(fmt, x, row_parts(fmt, raw, o), lanes, reduction, o == OUT - 1)
            for o in range(OUT)]
    got = matmul_wt(x, raw, fmt, OUT, n, semantics="skainet_panama", lanes=lanes,
                    reduction=reduction)
    assert bits(got) == bits(want)


def test_halving_is_upper_half_onto_lower_half() -> None:
    """4 lanes reduce as (l0+l2)+(l1+l3): lanes chosen so the three orders all differ."""
    from kernels_ref.semantics import PANAMA_REDUCTIONS

    v = np.array([[1e8, 1.0, -1e8, 3.0]], F)
    got = {name: float(fn(v)[0]) for name, fn in PANAMA_REDUCTIONS.items()}
    assert got == {"sequential": 3.0, "pairwise": 0.0, "halving": 4.0}


@pytest.mark.parametrize("fmt,n", [f for f in FORMATS if f[0] != "Q4_0"])
@pytest.mark.parametrize("fused", [True, False])
def test_neon_matches_literal_loops(fmt: str, n: int, fused: bool) -> None:
    raw, x = weights(fmt, n, 3), activations(n, 3)
    act = None
    if fmt in ("Q4_K", "Q6_K"):
        a = skainet_native_q8(x[None, :], fast_math=fused)
        act = {"qs": a["qs"][0], "d": a["d"][0]}
    want = [neon_row(fmt, x, row_parts(fmt, raw, o), fused, act) for o in range(OUT)]
    got = matmul_wt(x, raw, fmt, OUT, n, semantics="skainet_neon", fused_final=fused)
    assert bits(got) == bits(want)


# ---------------------------------------------------------------------------- x86-64
# SKaiNET's C kernels as gcc 12 -O3 -ffast-math builds them for SSE2 (no FMA).

def sse_sum32(v) -> np.float32:
    """32 floats summed as gcc vectorizes the loop: lane j of partial vector i holds element
    4i+j; per lane (((P0+P1)+(P2+P3))+(P4+P5))+(P6+P7); the lanes (l0+l2)+(l1+l3)."""
    lanes = []
    for j in range(4):
        p = [F(v[4 * i + j]) for i in range(8)]
        t = F(F(p[0] + p[1]) + F(p[2] + p[3]))
        t = F(t + F(p[4] + p[5]))
        lanes.append(F(t + F(p[6] + p[7])))
    return F(F(lanes[0] + lanes[2]) + F(lanes[1] + lanes[3]))


def x86_pair_sums(fmt: str, x: np.ndarray, p: dict, b: int) -> list[np.float32]:
    """x[k]*c[k] + x[k+16]*c[k+16] for k = 0..15 (Q5_0 with the unsigned code q + 16)."""
    off = 16 if fmt == "Q5_0" else 0
    c = [F(int(q) + off) for q in p["qs"][b]]
    xb = x[32 * b : 32 * b + 32]
    return [F(F(xb[k] * c[k]) + F(xb[k + 16] * c[k + 16])) for k in range(16)]


def x86_32_block(fmt: str, acc: np.float32, x: np.ndarray, p: dict, b: int,
                 rm: bool) -> np.float32:
    """Q8_0 / Q4_0 / Q5_0 / Q5_1: the block term and how it meets the row accumulator."""
    d, xb = p["d"][b], x[32 * b : 32 * b + 32]
    if fmt == "Q8_0":
        return F(acc + F(sse_sum32([F(xb[k] * F(p["qs"][b, k])) for k in range(32)]) * d))
    s = x86_pair_sums(fmt, x, p, b)
    if fmt == "Q4_0":  # the pair sums as a pair chain
        t = F(F(s[0] + s[1]) + F(s[2] + s[3]))
        for j in range(2, 8):
            t = F(t + F(s[2 * j] + s[2 * j + 1]))
        return F(acc + F(t * d))
    dot = F(0)
    for v in s:  # Q5_0 / Q5_1: the pair sums in order
        dot = F(dot + v)
    isum = sse_sum32(xb)
    if fmt == "Q5_0":
        return F(acc + F(F(dot - F(F(16) * isum)) * d))
    m = p["m"][b]
    if rm:
        return F(acc + F(F(d * dot) + F(m * isum)))
    return F(F(acc + F(m * isum)) + F(d * dot))


def x86_q5_k_block(acc: np.float32, x: np.ndarray, p: dict, b: int) -> np.float32:
    """Q5_K: per lo/hi group pair local = (local - B_hi) + (A*d - B_lo)."""
    d, dmin, local = p["d"][b], p["dmin"][b], F(0)
    xb = x[256 * b : 256 * b + 256]
    cs = [sse_sum32([F(xb[32 * s + k] * F(p["qs"][b, 32 * s + k])) for k in range(32)])
          for s in range(8)]
    xs = [sse_sum32(xb[32 * s : 32 * s + 32]) for s in range(8)]
    sc, mn = [F(v) for v in p["sc"][b]], [F(v) for v in p["mn"][b]]
    for lo in (0, 2, 4, 6):
        hi = lo + 1
        a = F(F(sc[lo] * cs[lo]) + F(sc[hi] * cs[hi]))
        b_lo, b_hi = F(F(xs[lo] * dmin) * mn[lo]), F(F(xs[hi] * dmin) * mn[hi])
        local = F(F(local - b_hi) + F(F(a * d) - b_lo))
    return F(acc + local)


def x86_row(fmt: str, x: np.ndarray, p: dict, rm: bool, act: dict | None) -> np.float32:
    """One output of the x86-64 build: its blocks in order into one float32 sum (Q4_K and
    Q6_K as the NEON kernels without fused multiply-adds)."""
    acc = F(0)
    for b in range(p["d"].shape[0]):
        if fmt == "Q5_K":
            acc = x86_q5_k_block(acc, x, p, b)
        elif fmt in ("Q4_K", "Q6_K"):
            acc = neon_block(fmt, acc, x, p, b, False, act)
        else:
            acc = x86_32_block(fmt, acc, x, p, b, rm)
    return acc


@pytest.mark.parametrize("fmt,n,kernel_order", [
    (fmt, n, order) for fmt, n in FORMATS for order in ("feed", "rm")
    if (fmt, order) != ("Q5_0", "rm")])  # refused: test_kernels_x86
def test_x86_matches_literal_loops(fmt: str, n: int, kernel_order: str) -> None:
    raw, x = weights(fmt, n, 4), activations(n, 4)
    act = None
    if fmt in ("Q4_K", "Q6_K"):
        a = skainet_native_q8(x[None, :], conversion="x86")
        act = {"qs": a["qs"][0], "d": a["d"][0]}
    rm = kernel_order == "rm"
    want = [x86_row(fmt, x, row_parts(fmt, raw, o), rm, act) for o in range(OUT)]
    got = matmul_wt(x, raw, fmt, OUT, n, semantics="skainet_x86", kernel_order=kernel_order)
    assert bits(got) == bits(want)
