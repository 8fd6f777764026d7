"""The JVM parity matrix: kernel x shape x lane count x JIT mode, each case judged against
the kernels_ref semantics of the kernel's provider (scalar -> skainet_scalar, Panama ->
skainet_panama at the JVM's real lane count and the reduction order that JVM and mode use,
native FFM -> the exact result and its error bound, order not modelled).

The reduction order is not assumed: it is probed in the same worker and mode by running the
kernel under test on a crafted weight (codes 1, scale 1) and activations whose per-block
lane sums give a different float under each candidate order (sequential, pairwise,
halving), so the kernel's own output names the order.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.jvm.discovery import FFM, PANAMA, SCALAR, Kernel
from harness.jvm.jdk import VECTOR_MODULE, Jdk
from harness.jvm.worker import JIT_MODES, CallResult, JvmConfig, Worker
from kernels_ref import error_bound, matmul_wt, ulp_distance
from kernels_ref.semantics import PANAMA_REDUCTIONS
from oracle import qtype, quantize, to_input_block_major

#: (out_dim, in_dim, batch, weightByteOffset): every in_dim a multiple of 256 so all seven
#: formats run; the weight array always ends exactly at the tensor's last block (an
#: out-of-bounds read is the crash it is), one shape starts it at a non-zero offset.
DEFAULT_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (16, 256, 2, 0), (9, 512, 3, 0), (7, 768, 1, 40), (32, 1024, 2, 0))
LANE_CHOICES = ("auto", "4", "8", "16")
PROBE_FORMATS = ("Q8_0", "Q4_0")  # formats whose probe weight is crafted byte by byte


@dataclass
class Case:
    """One judged cell of the matrix."""

    kernel: str
    fmt: str | None
    provider: str
    shape: tuple[int, int, int, int]
    lanes: str  # requested
    jit: str
    verdict: str  # bit-exact | within-bound | FAIL | crash | timeout | not-runnable | skipped
    #              | interrupted
    reference: str = ""
    max_ulp: int | None = None
    detail: str = ""
    calls: int = 0
    drifted: int = 0
    seconds: float = 0.0
    actual_lanes: int | None = None


@dataclass
class ConfigRun:
    """One JVM configuration's run: start figures, probed order per kernel, its cases."""

    lanes: str
    jit: str
    info: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)  # kernel -> order found
    cases: list[Case] = field(default_factory=list)
    error: str = ""


@dataclass
class ParityRun:
    jdk: str
    classpath: str
    configs: list[ConfigRun]
    seconds: float = 0.0

    @property
    def cases(self) -> list[Case]:
        return [c for r in self.configs for c in r.cases]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ inputs

@functools.lru_cache(maxsize=256)
def case_data(fmt: str, shape: tuple[int, int, int, int], seed: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, row-major packed W, the array handed to the kernel: offset padding + W in
    SKaiNET's input-block-major order) for one format and shape, from the oracle."""
    out_dim, in_dim, batch, pad = shape
    rng = np.random.default_rng([seed, out_dim, in_dim, batch, sum(map(ord, fmt))])
    raw = quantize(fmt, rng.standard_normal((out_dim, in_dim)).astype(np.float32))
    x = rng.standard_normal((batch, in_dim)).astype(np.float32)
    ibm = np.ascontiguousarray(to_input_block_major(raw, fmt), np.uint8).reshape(-1)
    arr = np.concatenate([rng.integers(0, 256, pad, dtype=np.uint8), ibm])
    return x, np.ascontiguousarray(raw), arr


@functools.lru_cache(maxsize=1024)
def reference(fmt: str, shape: tuple[int, int, int, int], seed: int, semantics: str,
              opts: tuple[tuple[str, Any], ...] = ()) -> np.ndarray:
    x, raw, _ = case_data(fmt, shape, seed)
    return matmul_wt(x, raw, fmt, shape[0], shape[1], semantics=semantics, **dict(opts))


def probe_data(fmt: str, shape: tuple[int, int, int, int], lanes: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Crafted (x, row-major W): every weight 1.0 exactly (scale 1.0, code 1); per block the
    first lanes of x are 2^27, 1 at lane 0/1 and -2^27, 3 at lane L/2, L/2+1, so a block's
    lane sums reduce to 3 (sequential), 0 (pairwise) or 4 (halving)."""
    out_dim, in_dim, batch, _ = shape
    nb = in_dim // 32
    one = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    if fmt == "Q8_0":
        block = np.concatenate([one, np.ones(32, np.uint8)])
    else:  # Q4_0: nibble 9 is code 1
        block = np.concatenate([one, np.full(16, 0x99, np.uint8)])
    raw = np.tile(block, (out_dim, nb))
    x = np.zeros((batch, nb, 32), np.float32)
    h = lanes // 2
    x[:, :, 0], x[:, :, 1], x[:, :, h], x[:, :, h + 1] = 2.0**27, 1.0, -(2.0**27), 3.0
    return x.reshape(batch, in_dim), raw


def probe_order(worker: Worker, k: Kernel, shape: tuple[int, int, int, int], lanes: int,
                calls: int | str) -> str:
    """Which reduction order the kernel uses in this worker and mode, by its own output."""
    if k.fmt not in PROBE_FORMATS or lanes < 4:
        return "not probed (no crafted input for this format)"
    x, raw = probe_data(k.fmt, shape, lanes)
    r = worker.call(k.cls, x, to_input_block_major(raw, k.fmt), shape[1], shape[0],
                    calls=calls)
    if r.status != "ok":
        return f"not probed ({r.status})"
    found = [name for name in PANAMA_REDUCTIONS
             if np.array_equal(matmul_wt(x, raw, k.fmt, shape[0], shape[1],
                                         semantics="skainet_panama", lanes=lanes,
                                         reduction=name).view(np.uint32),
                               r.y.view(np.uint32))]
    return found[0] if len(found) == 1 else "none of " + "/".join(PANAMA_REDUCTIONS)


# ------------------------------------------------------------------------------- judge

def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                          np.asarray(b, np.float32).view(np.uint32))


def judge(case: Case, res: CallResult, k: Kernel, seed: int, lanes: int | None,
          order: str | None) -> None:
    """Fill in the case's verdict from the worker's result."""
    case.calls, case.drifted, case.seconds = res.calls, res.drifted, res.seconds
    if res.status != "ok":
        case.verdict = res.status
        e = res.error
        case.detail = "; ".join(p for p in (
            f"{e.get('class', '')}: {e.get('message', '')}".strip(": "),
            " <- ".join(e.get("frames", [])[:4])) if p)
        return
    fmt, shape = k.fmt, case.shape
    y = res.y
    exact = reference(fmt, shape, seed, "exact")
    candidates: list[tuple[str, np.ndarray]] = []
    if k.provider == SCALAR:
        candidates = [("skainet_scalar", reference(fmt, shape, seed, "skainet_scalar"))]
    elif k.provider == PANAMA and lanes:
        names = list(PANAMA_REDUCTIONS)
        if order in names:  # the probed order first
            names.remove(order)
            names.insert(0, order)
        candidates = [(f"skainet_panama(lanes={lanes}, {n})",
                       reference(fmt, shape, seed, "skainet_panama",
                                 (("lanes", lanes), ("reduction", n)))) for n in names]
    drift = (f"; output changed within the process in {res.drifted} of {res.calls - 1} "
             "repeats" if res.drifted else "")
    warm = "" if res.compiled is None else \
        (f"; C2 code installed after {res.warmup_calls} calls, judged at call {res.calls}"
         if res.compiled else
         f"; NOT seen compiled after {res.calls} calls")
    for name, ref in candidates:
        if _bits_equal(y, ref):
            case.verdict, case.reference, case.max_ulp = "bit-exact", name, 0
            probe_note = (f" (probe said {order})" if order and order in PANAMA_REDUCTIONS
                          and order not in name else "")
            case.detail = f"vs {name}{probe_note}{drift}{warm}"
            return
    x, raw, _ = case_data(fmt, shape, seed)
    bound = error_bound(x, raw, fmt, shape[0], shape[1])
    inside = bool((np.abs(y.astype(np.float64) - exact) <= bound).all()) and \
        bool(np.isfinite(y).all())
    ulp = ulp_distance(y, candidates[0][1] if candidates else exact)
    case.max_ulp = int(ulp.max())
    case.reference = candidates[0][0] if candidates else "exact"
    if inside:
        case.verdict = "within-bound"
        case.detail = (f"matches no modelled order ({', '.join(n for n, _ in candidates)});"
                       if candidates else "order not modelled;") + \
            f" inside error_bound{drift}{warm}"
    else:
        case.verdict = "FAIL"
        bad = np.argwhere(np.abs(y.astype(np.float64) - exact) > bound)
        case.detail = (f"OUTSIDE error_bound at {len(bad)} outputs, first (row {bad[0][0]}, "
                       f"out {bad[0][1]}): got {y[tuple(bad[0])]!r}, exact "
                       f"{exact[tuple(bad[0])]!r}{drift}{warm}" if len(bad) else
                       f"non-finite output{drift}")


# ------------------------------------------------------------------------------ matrix

def run_config(jdk: Jdk, classpath: str, kernels: Sequence[Kernel], lanes: str, jit: str,
               shapes: Sequence[tuple[int, int, int, int]], seed: int, timeout: float,
               progress: Callable[[str], None] | None = None,
               stop: threading.Event | None = None) -> ConfigRun:
    """Every kernel x shape in one JVM configuration (one worker, restarted after a hang
    or a JVM death). `stop` set: the remaining cases are not run."""
    run = ConfigRun(lanes, jit)
    config = JvmConfig(str(jdk.home), classpath, lanes, jit, jdk.has_vector)
    calls: int | str = "warm" if jit == "warm" else 2
    with Worker(config, timeout=timeout) as wk:
        wk.stop = stop
        try:
            run.info = dict(wk.start())
        except Exception as exc:  # a JVM that cannot start: every case says why
            run.error = str(exc)
        actual = run.info.get("lanes")
        for k in kernels:
            hung = False
            for shape in shapes:
                case = Case(k.short, k.fmt, k.provider, tuple(shape), lanes, jit, "skipped",
                            actual_lanes=actual)
                run.cases.append(case)
                if run.error:
                    case.detail = f"JVM did not start: {run.error}"
                    continue
                if k.fmt is None:
                    case.detail = "format not recognised from the class or interface names"
                    continue
                if shape[1] % qtype(k.fmt).block:
                    case.detail = f"in_dim {shape[1]} is not a whole number of blocks"
                    continue
                if k.provider == PANAMA and not jdk.has_vector:
                    case.verdict = "not-runnable"
                    case.detail = f"{jdk.describe()}: the Panama kernels need {VECTOR_MODULE}"
                    continue
                if k.provider == PANAMA and lanes != "auto" and actual != int(lanes):
                    case.detail = (f"{lanes} lanes not available on this CPU "
                                   f"(-XX:MaxVectorSize={4 * int(lanes)} gives {actual})")
                    continue
                if hung:
                    case.detail = "not run: the kernel hung on an earlier case in this JVM"
                    continue
                if stop is not None and stop.is_set():
                    case.detail = "not run: interrupted"
                    continue
                x, _, arr = case_data(k.fmt, tuple(shape), seed)
                res = wk.call(k.cls, x, arr, shape[1], shape[0], w_offset=shape[3],
                              calls=calls)
                hung = res.status == "timeout"
                order = None
                if k.provider == PANAMA and res.status == "ok":
                    order = run.probes.get(k.short)
                    if order is None:
                        order = run.probes[k.short] = probe_order(wk, k, tuple(shape),
                                                                  actual or 0, calls)
                judge(case, res, k, seed, actual, order)
                if progress:
                    progress(f"{k.short} {k.fmt} {shape[:3]} lanes={lanes} {jit}: "
                             f"{case.verdict}")
        run.info["worker_starts"] = wk.starts
    return run


def run_matrix(jdk: Jdk, classpath: str, kernels: Sequence[Kernel],
               lanes: Sequence[str] = ("auto",), jit: Sequence[str] = JIT_MODES,
               shapes: Sequence[tuple[int, int, int, int]] = DEFAULT_SHAPES, seed: int = 0,
               timeout: float = 60.0, jobs: int | None = None,
               progress: Callable[[str], None] | None = None) -> ParityRun:
    """The whole matrix: one worker per (lanes, jit), run in parallel up to the core count."""
    t0 = time.perf_counter()
    combos = [(ln, j) for ln in lanes for j in jit]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(combos)))
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_config, jdk, classpath, kernels, ln, j, shapes, seed,
                               timeout, progress, stop) for ln, j in combos]
        try:
            runs = [f.result() for f in futures]
        except BaseException:  # Ctrl-C: every worker stops at its next case or poll
            stop.set()
            raise
    return ParityRun(jdk.describe(), classpath, runs, time.perf_counter() - t0)


def drift_summary(run: ParityRun) -> list[str]:
    """Per kernel and configuration: how many repeats changed the output in one process."""
    lines = []
    for cr in run.configs:
        per: dict[str, list[int]] = {}
        for c in cr.cases:
            if c.calls > 1:
                s = per.setdefault(c.kernel, [0, 0])
                s[0] += c.drifted
                s[1] += c.calls - 1
        for kname, (d, n) in per.items():
            if d:
                lines.append(f"{kname} lanes={cr.lanes} jit={cr.jit}: output changed in {d} "
                             f"of {n} repeats within one JVM")
    return lines


__all__ = ["DEFAULT_SHAPES", "FFM", "LANE_CHOICES", "Case", "ParityRun", "drift_summary",
           "judge", "run_matrix"]
