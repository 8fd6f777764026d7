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
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.console import escape_control
from harness.errors import HarnessError
from harness.jvm.discovery import DENSE_FORMATS, FFM, MEMSEG, PACKED, PANAMA, SCALAR, Kernel
from harness.jvm.dispatch import Dispatch, dispatch_keys
from harness.jvm.jdk import VECTOR_MODULE, Jdk
from harness.jvm.worker import (
    GUARD,
    JIT_MODES,
    PLATFORM_PACKAGES,
    CallResult,
    JvmConfig,
    Worker,
)
from harness.parity.judge import Expectation, Judgement, Outcome, off_model_note
from harness.parity.judge import judge as judge_outcome
from harness.parity.runner import JvmRunner, KernelCall
from harness.parity.verdict import CASE_FAILING, Verdict
from kernels_ref import error_bound, matmul_wt
from kernels_ref.dense_jvm import decode_b16, gemm, gemm_error_bound
from kernels_ref.semantics import PANAMA_REDUCTIONS, make
from oracle import qtype, quantize, to_input_block_major

#: (out_dim, in_dim, batch, weightByteOffset): every in_dim a multiple of 256 so all seven
#: formats run; the weight array always ends exactly at the tensor's last block (an
#: out-of-bounds read is the crash it is), one shape starts it at a non-zero offset.
DEFAULT_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (16, 256, 2, 0), (9, 512, 3, 0), (7, 768, 1, 40), (32, 1024, 2, 0))
LANE_CHOICES = ("auto", "4", "8", "16")
#: The host's width and the board's (the SL2610's 128-bit NEON: 4 float lanes).
DEFAULT_LANES = "auto,4"
LANES_HELP = ("comma-separated lane widths from auto,4,8,16: auto is the host's, 4 the "
              "board's NEON; auto is run once when it equals a width given (default "
              f"{DEFAULT_LANES})")
PROBE_FORMATS = ("Q8_0", "Q4_0")  # formats whose probe weight is crafted byte by byte
#: Fp32MatmulKernel cases as (n, k, m, offset): C(m, n) = A(m, k) . B(k, n); k not a multiple
#: of the lane counts, so a Panama kernel's scalar tail runs too.
GEMM_SHAPES: tuple[tuple[int, int, int, int], ...] = ((17, 37, 3, 5), (16, 256, 2, 0),
                                                      (33, 101, 4, 7))
GEMM_WARM_CALLS = 200


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
    frame: str = ""  # crash: the first frame outside the platform (class.method(file:line))
    #: what SKaiNET's KernelRegistry dispatches to this kernel ("Q8_0 via native-ffm"); ""
    #: for a kernel judged only because it is on the classpath
    dispatched: str = ""

    @property
    def width(self) -> str:
        """The lane width this case ran at, as reports name it ("4 lanes")."""
        n = self.actual_lanes or (None if self.lanes == "auto" else self.lanes)
        return f"{n} lanes" if n else f"lanes={self.lanes}"


@dataclass
class ConfigRun:
    """One JVM configuration's run: start figures, probed order per kernel, its cases."""

    lanes: str
    jit: str
    info: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)  # kernel -> order found
    cases: list[Case] = field(default_factory=list)
    error: str = ""
    killed: list[str] = field(default_factory=list)  # processes the code under test left
    same_as: str = ""  # auto giving an explicitly asked width: not run twice


@dataclass
class ParityRun:
    jdk: str
    classpath: str
    configs: list[ConfigRun]
    seconds: float = 0.0
    interrupted: bool = False
    #: SKaiNET's own answer to "which kernel runs" (None: not asked)
    dispatch: Dispatch | None = None

    @property
    def widths(self) -> list[str]:
        """The lane widths judged, e.g. ["8 lanes (host)", "4 lanes"]."""
        out = []
        for cr in self.configs:
            if cr.same_as or not cr.info.get("lanes"):
                continue
            w = f"{cr.info['lanes']} lanes" + (" (host)" if cr.lanes == "auto" else "")
            if w not in out:
                out.append(w)
        return out

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


@functools.lru_cache(maxsize=64)
def gemm_data(shape: tuple[int, int, int, int], seed: int, fmt: str = "F32"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, tuple[int, ...]]:
    """(A (m, k), B (k, n) as float32, the flat a and b arrays handed to the kernel, the
    output array's length, the call's dims) of a GEMM case whose shape is (n, k, m, offset):
    every operand starts at `offset` and has a row stride wider than its row (k+3, n+2,
    n+1), so the gaps between output rows are guard cells too. For fmt BF16/F16, b is bytes
    (16-bit floats, offset and stride in bytes) and B their exact float32 values."""
    n, k, m, off = shape
    rng = np.random.default_rng([seed, n, k, m, off, 3200, sum(map(ord, fmt))])
    a, b = (rng.standard_normal(dims).astype(np.float32) for dims in ((m, k), (k, n)))
    a_str, b_str, o_str = k + 3, n + 2, n + 1
    a_arr = rng.standard_normal(off + m * a_str).astype(np.float32)
    a_arr[off:].reshape(m, a_str)[:, :k] = a
    if fmt == "F32":
        b_arr = rng.standard_normal(off + k * b_str).astype(np.float32)
        b_arr[off:].reshape(k, b_str)[:, :n] = b
    else:
        bits = (b.view(np.uint32) >> 16).astype(np.uint16) if fmt == "BF16" else \
            b.astype(np.float16).view(np.uint16)
        b = decode_b16(bits, fmt).reshape(k, n)
        b_str *= 2
        b_arr = rng.integers(0, 256, off + k * b_str, dtype=np.uint8)
        b_arr[off:].reshape(k, b_str)[:, :2 * n] = bits.view(np.uint8).reshape(k, 2 * n)
    dims = (off, a_str, off, b_str, off, o_str, m, n, k)
    return a, b, a_arr, b_arr, off + m * o_str + GUARD, dims


def _call(wk: Worker, runner: JvmRunner, k: Kernel, shape: tuple[int, int, int, int],
          seed: int, calls: int | str) -> CallResult:
    """Run one case of kernel `k` in the worker: a packed matmul (its weights in a byte
    array, or for a MemSeg kernel in a MemorySegment mapped from a file), or an
    Fp32MatmulKernel's GEMM. MemSeg and GEMM kernels get GEMM_WARM_CALLS calls in warm mode
    (C2 code for them is not looked for)."""
    if k.kind in DENSE_FORMATS:
        _, _, a_arr, b_arr, out_len, dims = gemm_data(shape, seed, k.fmt)
        return wk.call_gemm(k.cls, a_arr, b_arr, out_len, dims,
                            GEMM_WARM_CALLS if calls == "warm" else int(calls))
    x, _, arr = case_data(k.fmt, shape, seed)
    if k.kind == MEMSEG:  # weights mapped from a file; warm: C2 not checked
        return wk.call(k.cls, x, arr, shape[1], shape[0], shape[3],
                       GEMM_WARM_CALLS if calls == "warm" else calls, memseg=True)
    return runner.run(KernelCall(k.cls, x, arr, shape[0], shape[1], shape[3])).extras["result"]


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

def expectation(k: Kernel, shape: tuple[int, int, int, int], seed: int, lanes: int | None,
                order: str | None) -> Expectation:
    """kernels_ref's outputs for the kernel's provider: skainet_scalar, or skainet_panama at
    the real lane count in every reduction order (the probed one first); candidates, not a
    binding model (the kernel may use an order none models: then the bound judges)."""
    fmt = k.fmt
    if k.kind in DENSE_FORMATS:
        return gemm_expectation(k, shape, seed, lanes)
    if k.model is not None:
        return model_expectation(k, shape, seed)
    if k.provider == FFM and k.kind in NATIVE_KINDS:
        return native_expectation(k, shape, seed)
    models: list[tuple[str, np.ndarray]] = []
    if k.provider == SCALAR:
        models = [("skainet_scalar", reference(fmt, shape, seed, "skainet_scalar"))]
    elif k.provider == PANAMA and lanes:
        names = list(PANAMA_REDUCTIONS)
        if order in names:  # the probed order first
            names.remove(order)
            names.insert(0, order)
        models = [(f"skainet_panama(lanes={lanes}, {n})",
                   reference(fmt, shape, seed, "skainet_panama",
                             (("lanes", lanes), ("reduction", n)))) for n in names]
    x, raw, _ = case_data(fmt, shape, seed)
    return Expectation(models, binding=False, exact=reference(fmt, shape, seed, "exact"),
                       bound=error_bound(x, raw, fmt, shape[0], shape[1]))


#: Formats whose SKaiNET C kernels quantize the activations to int8 per 256 first (as ggml
#: does): without a model of the build, SKaiNET's own Q8-activation reference kernel's order
#: is the candidate, and the bound includes that quantization.
Q8_ACTIVATION_NATIVE = ("Q4_K", "Q6_K")
#: Kinds of native (FFM) kernel judged against the C build: byte-array and MemorySegment
#: weights alike call the feed-order C symbol (`skainet_<fmt>_matmul`).
NATIVE_KINDS = (PACKED, MEMSEG)


def native_models(fmt: str) -> tuple[str | None, str]:
    """(the order model of SKaiNET's C kernel for `fmt` as the JVM loads it on this host,
    binding; or None: judged within the bound), and what its rows say
    (harness.board.hostkernels.host_order: skainet_x86 on x86-64 where established)."""
    from harness.board.hostkernels import host_order

    model, note = host_order(fmt, "feed")
    return model, f"C kernel through FFM: {note}"


def native_expectation(k: Kernel, shape: tuple[int, int, int, int], seed: int) -> Expectation:
    """A native (FFM) kernel: its C build's order where kernels_ref models it (binding: a
    build whose compiler ordered the sums otherwise FAILs, and says whether it is inside the
    bound), else candidates and the bound (with the activation quantization it does)."""
    x, raw, _ = case_data(k.fmt, shape, seed)
    model, _ = native_models(k.fmt)
    act = model or ("skainet_q8_reference" if k.fmt in Q8_ACTIVATION_NATIVE else None)
    if model:
        models = [(model, reference(k.fmt, shape, seed, model, (("kernel_order", "feed"),)))]
    else:
        models = [(act, reference(k.fmt, shape, seed, act))] if act else []
    return Expectation(models, binding=model is not None,
                       exact=reference(k.fmt, shape, seed, "exact"),
                       bound=error_bound(x, raw, k.fmt, shape[0], shape[1],
                                         **({"semantics": act} if act else {})))


def gemm_expectation(k: Kernel, shape: tuple[int, int, int, int], seed: int,
                     lanes: int | None) -> Expectation:
    """kernels_ref.dense_jvm's orders for an Fp32MatmulKernel (skainet_scalar, or skainet_panama
    at the real lane count in every reduction order), as candidates; exact and its bound."""
    a, b = gemm_data(shape, seed, k.fmt)[:2]
    models: list[tuple[str, np.ndarray]] = []
    if k.provider == FFM:  # SKaiNET's dense C kernel: its host build's order, binding
        model = native_models(k.fmt)[0]
        models = [(model, make(model).gemm(a, b, k.fmt))] if model else []
        return Expectation(models, binding=bool(models), exact=gemm(a, b),
                           bound=gemm_error_bound(a, b))
    if k.provider == SCALAR:
        models = [("skainet_scalar", gemm(a, b, "skainet_scalar"))]
    elif k.provider == PANAMA and lanes:
        models = [(f"skainet_panama(lanes={lanes}, {r})",
                   gemm(a, b, "skainet_panama", lanes, r)) for r in PANAMA_REDUCTIONS]
        if k.fmt != "F32":  # PanamaVectorBf16MatmulKernel's outer-product order first
            models.insert(0, (f"skainet_panama_outer(lanes={lanes})",
                              gemm(a, b, "skainet_panama_outer", lanes)))
    return Expectation(models, binding=False, exact=gemm(a, b), bound=gemm_error_bound(a, b))


def model_expectation(k: Kernel, shape: tuple[int, int, int, int], seed: int) -> Expectation:
    """A class whose own order kernels_ref models (`Kernel.model`): that model, binding
    (JVM float arithmetic is strict, so the order is the class's, whatever the JIT does);
    the bound, with the model's activation quantization, names how far a miss is."""
    x, raw, _ = case_data(k.fmt, shape, seed)
    return Expectation([(k.model, reference(k.fmt, shape, seed, k.model))], binding=True,
                       exact=reference(k.fmt, shape, seed, "exact"),
                       bound=error_bound(x, raw, k.fmt, shape[0], shape[1],
                                         semantics=k.model))


def _notes(res: CallResult) -> tuple[str, str]:
    """(drift, warm-up) clauses of a case's detail."""
    drift = (f"; output changed within the process in {res.drifted} of {res.calls - 1} "
             "repeats" if res.drifted else "")
    warm = "" if res.compiled is None else \
        (f"; C2 code installed after {res.warmup_calls} calls, judged at call {res.calls}"
         if res.compiled else
         f"; NOT seen compiled after {res.calls} calls")
    return drift, warm


def _detail(j: Judgement, exp: Expectation, res: CallResult, order: str | None) -> str:
    """The case's detail for a judgement of numbers (not a crash or guard-cell failure)."""
    drift, warm = _notes(res)
    if j.verdict == Verdict.BIT_EXACT:
        probe_note = (f" (probe said {order})" if order and order in PANAMA_REDUCTIONS
                      and order not in j.reference else "")
        return f"vs {j.reference}{probe_note}{drift}{warm}"
    if j.verdict == Verdict.WITHIN_BOUND:
        return (f"matches no modelled order ({', '.join(n for n, _ in exp.models)});"
                if exp.models else "order not modelled;") + f" inside error_bound{drift}{warm}"
    if exp.modelled:
        return _binding_miss(j, exp, res.y) + drift + warm
    y, bad = res.y, j.outside
    if bad is None or not len(bad):
        return f"non-finite output{drift}"
    return (f"OUTSIDE error_bound at {len(bad)} outputs, first (row {bad[0][0]}, "
            f"out {bad[0][1]}): got {y[tuple(bad[0])]!r}, exact "
            f"{exp.exact[tuple(bad[0])]!r}{drift}{warm}")


def _binding_miss(j: Judgement, exp: Expectation, y: np.ndarray) -> str:
    """A binding model missed: how many outputs differ, by how many ulps, the first one."""
    ref = dict(exp.models)[j.reference]
    first = np.argwhere(y.view(np.uint32) != ref.view(np.uint32))
    where = (f", first (row {first[0][0]}, out {first[0][1]}): got {y[tuple(first[0])]!r}, "
             f"model {ref[tuple(first[0])]!r}") if len(first) else ""
    inside = "" if exp.bound is None else f"; {off_model_note(y, exp.exact, exp.bound)}"
    return (f"not bit-exact vs {j.reference}: {j.mismatches} of {y.size} outputs differ, "
            f"max {j.max_ulp} ulp{where}{inside}")


def judge(case: Case, res: CallResult, k: Kernel, seed: int, lanes: int | None,
          order: str | None) -> None:
    """Fill in the case's verdict from the worker's result, by the one judge
    (harness.parity.judge)."""
    case.calls, case.drifted, case.seconds = res.calls, res.drifted, res.seconds
    outcome = Outcome(res.status, res.y, res.error, res.violations, res.seconds)
    if res.status != "ok":
        case.verdict = judge_outcome(outcome, Expectation()).verdict
        case.detail, case.frame = error_detail(res.error)
        return
    if res.violations:
        j = judge_outcome(outcome, Expectation())
        case.verdict, case.reference, case.detail = j.verdict, j.reference, \
            "; ".join(res.violations)
        return
    exp = expectation(k, case.shape, seed, lanes, order)
    j = judge_outcome(outcome, exp)
    case.verdict, case.reference, case.max_ulp = j.verdict, j.reference, j.max_ulp
    case.detail = _detail(j, exp, res, order)
    if k.provider == FFM and k.model is None and (k.kind in NATIVE_KINDS
                                                  or k.kind in DENSE_FORMATS):
        case.detail += f"; {native_models(k.fmt)[1]}"


# ------------------------------------------------------------------------------ errors

def _frame_text(f: Sequence[Any]) -> str:
    cls, method, file, line = f
    return f"{cls}.{method}({file or 'Unknown Source'}{f':{line}' if line >= 0 else ''})"


def user_frame(frames: Sequence[Sequence[Any]]) -> Sequence[Any] | None:
    """The first frame outside the platform (java.*, jdk.*, JPype): the user's line."""
    for f in frames:
        if not str(f[0]).startswith(PLATFORM_PACKAGES):
            return f
    return None


def error_detail(error: dict[str, Any]) -> tuple[str, str]:
    """(detail, user frame) of a crash: "Exc at File:line in Class.method: message; stack:
    ...", the user's frame first, control characters escaped."""
    cls = str(error.get("class", "")).rsplit(".", 1)[-1]
    msg = escape_control(str(error.get("message", "")))
    frames = [f for f in error.get("frames", []) if isinstance(f, list | tuple) and len(f) == 4]
    uf = user_frame(frames)
    head = cls
    if uf is not None:
        head += f" at {uf[2] or uf[0]}:{uf[3]} in {uf[0].rsplit('.', 1)[-1]}.{uf[1]}"
    parts = [f"{head}: {msg}" if msg and head else msg or head]
    causes = [f"{c.rsplit('.', 1)[-1]}: {escape_control(m)}" for c, m in error.get("causes", [])]
    if causes:
        parts.append("caused by " + " <- ".join(causes))
    if frames:
        parts.append("stack: " + " <- ".join(_frame_text(f) for f in frames[:6]))
    return "; ".join(p for p in parts if p), (_frame_text(uf) if uf is not None else "")


#: Where the classes a SKaiNET build needs at run time come from (prefix -> jar).
PROVIDING_JARS = (
    ("kotlinx.coroutines.", "kotlinx-coroutines-core (org.jetbrains.kotlinx:"
                            "kotlinx-coroutines-core-jvm)"),
    ("kotlinx.serialization.", "kotlinx-serialization-core (org.jetbrains.kotlinx:"
                               "kotlinx-serialization-core-jvm)"),
    ("kotlinx.io.", "kotlinx-io-core (org.jetbrains.kotlinx:kotlinx-io-core-jvm)"),
    ("kotlin.", "kotlin-stdlib (org.jetbrains.kotlin:kotlin-stdlib)"),
    ("sk.ainet.", "the SKaiNET module that holds it (e.g. skainet-backend-api-jvm)"),
)
_NOT_FOUND = re.compile(r"^Class (\S+) is not found")


def missing_class(error: dict[str, Any]) -> str | None:
    """The class a crash says the JVM could not find (NoClassDefFoundError,
    ClassNotFoundException, anywhere in the cause chain), dotted; None otherwise."""
    chain = [(error.get("class", ""), error.get("message", ""))] + \
        [tuple(c) for c in error.get("causes", [])]
    for cls, msg in chain:
        msg = str(msg or "")
        if cls in ("java.lang.NoClassDefFoundError", "java.lang.ClassNotFoundException") \
                and msg and not msg.startswith("Could not initialize"):
            return msg.split()[0].replace("/", ".")
        m = _NOT_FOUND.match(msg)
        if cls == "TypeError" and m:
            return m.group(1)
    return None


def missing_class_message(name: str, kernel: str) -> str:
    """One line for a build the JVM cannot load: the class and the jar that provides it."""
    jar = next((j for prefix, j in PROVIDING_JARS if name.startswith(prefix)),
               "the jar that provides it")
    return (f"--classpath: the build cannot load {name} (needed by {kernel}): add "
            f"{jar} to --classpath (the JVM runtime classpath of skainet-backend-cpu; "
            "README 'JVM leg' shows how to print it)")


# ------------------------------------------------------------------------------ matrix

def _not_run(run: ConfigRun, jdk: Jdk, k: Kernel, shape: tuple[int, int, int, int],
             lanes: str, actual: int | None, hung: bool,
             stop: threading.Event | None) -> tuple[Verdict, str] | None:
    """(verdict, why) of a case that is not run in this configuration, None to run it."""
    skip = Verdict.SKIPPED
    if run.error:
        return skip, f"JVM did not start: {run.error}"
    if k.fmt is None:
        return skip, "format not recognised from the class or interface names"
    if k.kind not in DENSE_FORMATS and shape[1] % qtype(k.fmt).block:
        return skip, f"in_dim {shape[1]} is not a whole number of blocks"
    if k.provider == PANAMA and not jdk.has_vector:
        return (Verdict.NOT_RUNNABLE,
                f"{jdk.describe()}: the Panama kernels need {VECTOR_MODULE}")
    if k.provider == PANAMA and lanes != "auto" and actual != int(lanes):
        return skip, (f"{lanes} lanes not available on this CPU "
                      f"(-XX:MaxVectorSize={4 * int(lanes)} gives {actual})")
    if hung:
        return skip, "not run: the kernel hung on an earlier case in this JVM"
    if stop is not None and stop.is_set():
        return Verdict.INTERRUPTED, "not run: interrupted"
    return None


class ConfigSession:
    """One JVM configuration (lanes, JIT mode): its worker, started once and restarted after
    a hang or a JVM death, and what it learnt (start figures, probed order per kernel,
    kernels that hung). `run_config` walks a matrix through it; the pytest items
    (harness.parity.pytest_items) one case at a time: the same code judges both."""

    def __init__(self, jdk: Jdk, classpath: str, lanes: str, jit: str, seed: int = 0,
                 timeout: float = 60.0, stop: threading.Event | None = None,
                 props: Sequence[str] = ()) -> None:
        self.jdk, self.seed, self.stop = jdk, seed, stop
        self.run = ConfigRun(lanes, jit)
        self.calls: int | str = "warm" if jit == "warm" else 2
        self.worker = Worker(JvmConfig(str(jdk.home), classpath, lanes, jit, jdk.has_vector,
                                       tuple(props)), timeout=timeout)
        self.worker.stop = stop
        self.runner = JvmRunner(self.worker, self.calls)
        self.hung: set[str] = set()
        self.ran = False  # the last case ran (not skipped before a call)
        self._started = False

    @property
    def actual_lanes(self) -> int | None:
        return self.run.info.get("lanes")

    def start(self) -> None:
        """Start the JVM once; a JVM that cannot start sets `run.error` (every case then
        says why), Ctrl-C while starting sets info["interrupted"]."""
        if self._started:
            return
        self._started = True
        try:
            self.run.info = dict(self.worker.start())
        except KeyboardInterrupt:
            self.run.info["interrupted"] = True
        except Exception as exc:  # a JVM that cannot start: every case says why
            self.run.error = str(exc)

    def case(self, k: Kernel, shape: tuple[int, int, int, int]) -> Case:
        """Run and judge one kernel x shape in this configuration. A class the build cannot
        load sets `run.error` to the one line naming it and its jar (a set-up error)."""
        self.start()
        run, shape = self.run, tuple(shape)
        case = Case(k.short, k.fmt, k.provider, shape, run.lanes, run.jit, "skipped",
                    actual_lanes=self.actual_lanes,
                    dispatched=(f"{'/'.join(k.dispatched)} via {k.dispatched_by}"
                                if k.dispatched else ""))
        run.cases.append(case)
        not_run = _not_run(run, self.jdk, k, shape, run.lanes, self.actual_lanes,
                           k.short in self.hung, self.stop)
        self.ran = not not_run
        if not_run:
            case.verdict, case.detail = not_run
            return case
        res = _call(self.worker, self.runner, k, shape, self.seed, self.calls)
        if res.status == "timeout":
            self.hung.add(k.short)
        order = None
        if k.provider == PANAMA and res.status == "ok" and k.fmt in PROBE_FORMATS:
            order = run.probes.get(k.short)
            if order is None:
                order = run.probes[k.short] = probe_order(self.worker, k, shape,
                                                          self.actual_lanes or 0, self.calls)
        judge(case, res, k, self.seed, self.actual_lanes, order)
        if case.dispatched:
            case.detail += f"; SKaiNET runs this for {case.dispatched}"
        missing = missing_class(res.error) if res.status == "crash" else None
        if missing:
            run.error = missing_class_message(missing, k.cls)
        return case

    def close(self) -> ConfigRun:
        """Stop the worker (and whatever the code under test left running); the run."""
        self.run.info["worker_starts"] = self.worker.starts
        self.worker.close()
        self.run.killed = self.worker.killed
        return self.run


def run_config(jdk: Jdk, classpath: str, kernels: Sequence[Kernel], lanes: str, jit: str,
               shapes: Sequence[tuple[int, int, int, int]], seed: int, timeout: float,
               progress: Callable[[str], None] | None = None,
               stop: threading.Event | None = None,
               explicit_lanes: Sequence[int] = (), props: Sequence[str] = ()) -> ConfigRun:
    """Every kernel x shape in one JVM configuration (a `ConfigSession`). `stop` set: the
    remaining cases are not run. `auto` whose width is one of `explicit_lanes` is not run
    (that width is judged once). A class the build cannot load ends the configuration with
    `error` set (a setup error, not a verdict)."""
    cs = ConfigSession(jdk, classpath, lanes, jit, seed, timeout, stop, props)
    run = cs.run
    try:
        cs.start()
        if lanes == "auto" and cs.actual_lanes in explicit_lanes:
            run.same_as = f"{cs.actual_lanes} lanes"
            kernels = []
        for k in kernels:
            for shape in (GEMM_SHAPES if k.kind in DENSE_FORMATS else shapes):
                case = cs.case(k, shape)
                if run.error.startswith("--classpath"):
                    if stop is not None:
                        stop.set()
                    return run
                if progress and cs.ran:
                    progress(f"{k.short} {k.fmt} {shape[:3]} lanes={lanes} {jit}: "
                             f"{case.verdict}")
    finally:
        cs.close()
    return run


def run_matrix(jdk: Jdk, classpath: str, kernels: Sequence[Kernel],
               lanes: Sequence[str] = ("auto",), jit: Sequence[str] = JIT_MODES,
               shapes: Sequence[tuple[int, int, int, int]] = DEFAULT_SHAPES, seed: int = 0,
               timeout: float = 60.0, jobs: int | None = None,
               progress: Callable[[str], None] | None = None, props: Sequence[str] = (),
               dispatch: Dispatch | None = None) -> ParityRun:
    """The whole matrix: one worker per (lanes, jit), run in parallel up to the core count.

    Ctrl-C (KeyboardInterrupt) stops every worker at once; the cases judged so far are
    returned with `interrupted` set. A class the build cannot load is a HarnessError
    (exit 2) naming the class and the jar that provides it. `props`: the user's system
    properties, in every JVM; `dispatch` (ask_dispatch) goes into the run as asked."""
    t0 = time.perf_counter()
    lanes = list(dict.fromkeys(lanes))
    explicit = tuple(int(ln) for ln in lanes if ln != "auto")
    # explicit widths first: `auto` then knows whether it would repeat one of them
    combos = [(ln, j) for ln in sorted(lanes, key=lambda ln: ln == "auto") for j in jit]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(combos)))
    stop = threading.Event()
    interrupted = False
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_config, jdk, classpath, kernels, ln, j, shapes, seed,
                               timeout, progress, stop, explicit, props)
                   for ln, j in combos]
        while True:
            try:
                if not wait(futures, timeout=0.2).not_done:
                    break
            except KeyboardInterrupt:  # every worker stops at its next poll (<= 0.2 s)
                stop.set()
                interrupted = True
        runs = [f.result() for f in futures]
    order = {c: i for i, c in enumerate((ln, j) for ln in lanes for j in jit)}
    runs.sort(key=lambda r: order[(r.lanes, r.jit)])
    errors = [r.error for r in runs if r.error and r.error.startswith("--classpath")]
    if errors:
        raise HarnessError(errors[0])
    interrupted = interrupted or any(r.info.get("interrupted") for r in runs)
    return ParityRun(jdk.describe(), classpath, runs, time.perf_counter() - t0, interrupted,
                     dispatch)


def ask_dispatch(jdk: Jdk, classpath: str, props: Sequence[str] = (),
                 formats: Sequence[str] | None = None, timeout: float = 60.0) -> Dispatch:
    """SKaiNET's own KernelRegistry's answer, in a JVM with the user's system properties:
    which provider and kernel each format gets, and why a registered provider is
    unavailable (harness.jvm.dispatch)."""
    with Worker(JvmConfig(str(jdk.home), classpath, "auto", "pinned", jdk.has_vector,
                          tuple(props)), timeout=timeout) as wk:
        return Dispatch.from_json({**wk.dispatch(formats if formats is not None
                                                 else dispatch_keys(None)),
                                   "props": tuple(props)})


FAILING = CASE_FAILING


def parse_lanes(text: str) -> list[str]:
    """`--lanes auto,4,...` -> the widths, each once (HarnessError on anything else)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in LANE_CHOICES]
    if bad or not items:
        raise HarnessError(f"--lanes: {', '.join(bad) or 'empty'} not one of "
                           f"{', '.join(LANE_CHOICES)}")
    return list(dict.fromkeys(items))


def _reason(c: Case) -> str:
    """A failing case in a few words: "crash IndexOutOfBoundsException at K.java:56"."""
    if c.verdict == "crash":
        head = c.detail.split(": ", 1)[0].split(" in ", 1)[0]
        return f"crash {head}"
    if c.verdict == "timeout":
        return "timeout (a call did not return)"
    return "FAIL " + c.detail.split(";", 1)[0].split(" (row", 1)[0].split(": row", 1)[0]


def failure_summary(run: ParityRun, limit: int = 4) -> str:
    """What failed, one clause per kernel and reason with the widths it failed at, e.g.
    "FAIL: PanamaVectorQ8_0MatmulKernel at 4 lanes: crash IndexOutOfBoundsException at
    PanamaVectorQ8_0MatmulKernel.kt:56"; "" when nothing failed."""
    groups: dict[tuple[str, str], list[str]] = {}
    for c in run.cases:
        if c.verdict in FAILING:
            kernel = c.kernel + (f" (SKaiNET runs it for {c.dispatched})"
                                 if c.dispatched else "")
            widths = groups.setdefault((kernel, _reason(c)), [])
            if c.width not in widths:
                widths.append(c.width)
    if not groups:
        return ""
    clauses = []
    for (kernel, reason), widths in list(groups.items())[:limit]:
        nums = [w.removesuffix(" lanes") for w in widths]
        at = (" and ".join(nums) + " lanes") if all(n.isdigit() for n in nums) else \
            ", ".join(widths)
        clauses.append(f"{kernel} at {at}: {reason}")
    more = len(groups) - limit
    return "FAIL: " + "; ".join(clauses) + (f"; and {more} more" if more > 0 else "")


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


__all__ = ["DEFAULT_LANES", "DEFAULT_SHAPES", "FAILING", "FFM", "LANE_CHOICES", "Case",
           "ConfigSession", "ParityRun", "drift_summary", "failure_summary", "judge",
           "parse_lanes", "run_matrix"]
