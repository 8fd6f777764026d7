"""One JVM per configuration (JDK, lane count, JIT mode) in its own worker process.

JPype can start one JVM per process, so each configuration gets a process, started once
and fed cases over a pipe; arrays cross as NumPy buffers (JPype copies a contiguous ndarray
into a Java primitive array in one go). A kernel that hangs or a JVM that dies ends that
worker: the parent reports the case (timeout / crash) and starts a fresh worker for the
rest. The JVM's own stdout (PrintCompilation in `warm` mode) goes to a log file the worker
reads to see when C2 has compiled the kernel under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.jvm.discovery import MATMUL_DESCRIPTOR
from harness.jvm.jdk import VECTOR_MODULE
from harness.workerproc import WorkerProcess

JIT_MODES = ("pinned", "warm")
#: JIT flags per mode. pinned: C1 at most (the Vector API's Java fallback, lanes added in
#: order); warm: the default tiered JIT (thresholds scaled down, so C2 comes after tens of
#: calls, not hundreds), each case repeated until C2 (tier 4) code for the kernel's `matmul`
#: is installed (OSR compiles are logged, to tell them apart). A kernel whose loops live in
#: a helper may never get `matmul` itself to C2: it is judged as it stands and says so.
JIT_FLAGS = {
    "pinned": ["-XX:TieredStopAtLevel=1"],
    "warm": ["-XX:+TieredCompilation", "-XX:CompileThresholdScaling=0.05",
             "-XX:+PrintCompilation"],
}
BASE_FLAGS = ["-Xmx1g", "-XX:+UseSerialGC", "-XX:CICompilerCount=2",
              "--enable-native-access=ALL-UNNAMED"]
WARM_MAX_CALLS = 3000
WARM_MAX_SECONDS = 20.0  # warm-up budget of one case (then judged as it stands)
#: Output guard cells on each side of every call's output range, and their bit pattern: a
#: NaN whose payload no arithmetic produces (a kernel's own NaN is the canonical one).
GUARD = 16
SENTINEL_BITS = np.uint32(0x7FE5C3E1)
MAX_VIOLATIONS = 4
MAX_FRAMES = 40
#: The weights file of a MemorySegment case: next to the worker's log, removed with it.
WEIGHTS_SUFFIX = ".weights"
#: The JVM's java.io.tmpdir (a provider's extracted native library, ...): next to the log,
#: removed with it.
TMPDIR_SUFFIX = ".tmp"
#: Frames of these packages are the platform's; the first frame outside is the user's line.
PLATFORM_PACKAGES = ("java.", "jdk.", "sun.", "com.sun.", "org.jpype.", "jpype.")


@dataclass(frozen=True)
class JvmConfig:
    """What makes one JVM: the JDK, the classpath, the lane count (`auto` or a float lane
    count forced through -XX:MaxVectorSize) and the JIT mode."""

    jdk_home: str
    classpath: str
    lanes: str = "auto"
    jit: str = "pinned"
    has_vector: bool = True
    #: the user's system properties ("key=value", --jvm-prop), e.g. skainet.strict.kernels=true
    props: tuple[str, ...] = ()

    def jvm_options(self) -> list[str]:
        opts = list(BASE_FLAGS)
        if self.has_vector:
            opts.append(f"--add-modules={VECTOR_MODULE}")
        if self.lanes != "auto":
            opts.append(f"-XX:MaxVectorSize={4 * int(self.lanes)}")
        return opts + JIT_FLAGS[self.jit] + [f"-D{p}" for p in self.props]

    @property
    def label(self) -> str:
        return f"lanes={self.lanes} jit={self.jit}" + "".join(f" -D{p}" for p in self.props)


@dataclass
class CallResult:
    """One case's outcome in a worker: output or error, repeats and how many drifted."""

    status: str  # ok | crash | timeout | interrupted
    y: np.ndarray | None = None
    first: np.ndarray | None = None
    calls: int = 0
    drifted: int = 0  # calls whose output differed from the first call's
    compiled: bool | None = None  # warm mode: C2 compiled the kernel's matmul
    warmup_calls: int | None = None  # warm mode: calls before that compile was seen
    error: dict[str, Any] = field(default_factory=dict)  # class, message, frames, causes
    violations: list[str] = field(default_factory=list)  # guard cells, input/weight writes
    seconds: float = 0.0


# ------------------------------------------------------- messages between parent and child


@dataclass(frozen=True)
class CallRequest:
    """Parent to child: run `cls.INSTANCE.matmul` on every row of x, `calls` times or
    "warm" (within `budget` seconds of warm-up)."""

    cls: str
    x: np.ndarray
    w: np.ndarray
    w_offset: int
    in_dim: int
    out_dim: int
    calls: int | str
    budget: float
    #: the weights as a MemorySegment mapped read-only from a file (a MemSeg kernel:
    #: matmul(float[], int, MemorySegment, long, int, int, float[], int))
    memseg: bool = False


@dataclass(frozen=True)
class GemmRequest:
    """Parent to child: `cls.INSTANCE.matmul(a, aOffset, aStride, b, bOffset, bStride, out,
    outOffset, outStride, m, n, k)` (an Fp32MatmulKernel), `calls` times, on an output array
    of `out_len` cells whose every cell outside the m x n block is a guard cell."""

    cls: str
    a: np.ndarray
    b: np.ndarray
    out_len: int
    dims: tuple[int, int, int, int, int, int, int, int, int]  # aOff, aStr, bOff, bStr,
    #                                                           outOff, outStr, m, n, k
    calls: int


@dataclass(frozen=True)
class DispatchRequest:
    """Parent to child: which kernel SKaiNET's own registry picks for each of `formats`
    (harness.jvm.dispatch.query_registry)."""

    formats: tuple[str, ...]


@dataclass(frozen=True)
class DispatchResult:
    """Child to parent: the registry's answer (harness.jvm.dispatch.query_registry)."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Shutdown:
    """Parent to child: stop the JVM and exit."""


@dataclass(frozen=True)
class Started:
    """Child to parent, once: the JVM is up (start seconds, Vector API lanes, VM name)."""

    start_s: float
    lanes: int | None
    vm: str


@dataclass(frozen=True)
class Heartbeat:
    """Child to parent: one more whole call of the kernel returned (`calls` so far)."""

    calls: int


# --------------------------------------------------------------------------- child side

def _osr_ids(log: Path, pos: int, method: str, ids: set[str]) -> int:
    """Add the compile ids of on-stack-replacement compiles of `method` (PrintCompilation
    lines `... % ... Cls::matmul @ BCI (N bytes)`) logged since `pos` to `ids`; returns the
    new log position."""
    with open(log, "rb") as f:
        f.seek(pos)
        text = f.read().decode(errors="replace")
        pos = f.tell()
    pat = re.compile(rf"^\s*\d+\s+(\d+)\s.*?{re.escape(method)} @ \d+", re.M)
    ids.update(m.group(1) for m in pat.finditer(text))
    return pos


def _c2_installed(codelist: str, method: str, osr: set[str]) -> bool:
    """Whether the code cache (jcmd Compiler.codelist) holds live C2 code (level 4, state
    in use) for the whole `method`, not only an on-stack-replacement entry."""
    for line in codelist.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[3].startswith(method) and parts[1] == "4" \
                and parts[2] == "0" and parts[0] not in osr:
            return True
    return False


def _child(conn: Any, config: JvmConfig, log: str) -> None:
    """The worker: the JVM's stdout and stderr to `log`, the JVM started (Started sent),
    then one CallResult per CallRequest (a DispatchResult per DispatchRequest) until
    Shutdown or the parent's end of the pipe closes."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)  # the JVM's stdout: PrintCompilation lines
    os.dup2(fd, 2)
    import jpype

    conn.send(_start_jvm(jpype, config, log + TMPDIR_SUFFIX))
    runner = _CaseRunner(jpype, conn, Path(log))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if isinstance(msg, Shutdown):
            return
        runner.serve(msg)


def _start_jvm(jpype: Any, config: JvmConfig, tmpdir: str) -> Started:
    """Start the configuration's JVM in this process (the Vector API loaded too), its
    java.io.tmpdir `tmpdir` (removed with the worker however it ends); what the parent
    learns of it."""
    jvm = str(Path(config.jdk_home) / "lib" / "server" / "libjvm.so")
    t0 = time.perf_counter()
    os.makedirs(tmpdir, mode=0o700, exist_ok=True)
    jpype.startJVM(jvm, *config.jvm_options(), f"-Djava.io.tmpdir={tmpdir}",
                   classpath=config.classpath.split(":"), convertStrings=True)
    lanes = _preload_vector_api(jpype) if config.has_vector else None
    runtime = jpype.JClass("java.lang.System")
    return Started(start_s=time.perf_counter() - t0, lanes=lanes,
                   vm=f"{runtime.getProperty('java.vm.name')} "
                      f"{runtime.getProperty('java.runtime.version')}")


def _preload_vector_api(jpype: Any) -> int:
    """Load and initialise the Vector API now, not in a timed case; its preferred float
    species' lane count."""
    fv = jpype.JClass("jdk.incubator.vector.FloatVector")
    bv = jpype.JClass("jdk.incubator.vector.ByteVector")
    species = fv.SPECIES_PREFERRED
    lanes = int(species.length())
    v = fv.fromArray(species, jpype.JArray(jpype.JFloat)(64), 0)
    v.fma(v, v).reduceLanes(jpype.JClass("jdk.incubator.vector.VectorOperators").ADD)
    bv.fromArray(bv.SPECIES_64, jpype.JArray(jpype.JByte)(64), 0).castShape(species, 0)
    return lanes


@dataclass
class _Repeats:
    """The whole calls of one case so far: the last and the first output (rows), how many
    calls and how many drifted from the first, and in warm mode the call count when C2 code
    for the kernel was seen installed."""

    y: np.ndarray | None = None
    first: np.ndarray | None = None
    done: int = 0
    drifted: int = 0
    seen_at: int | None = None


class _CaseRunner:
    """The worker's side of a case: runs a CallRequest in the started JVM and sends its
    Heartbeats and its CallResult (a crash result for a Java exception or a refusal)."""

    def __init__(self, jpype: Any, conn: Any, log: Path) -> None:
        self.jpype, self.conn, self.log = jpype, conn, log
        self.instances: dict[str, Any] = {}
        self.osr: set[str] = set()
        self.logpos = 0
        self.server = jpype.JClass("java.lang.management.ManagementFactory"
                                   ).getPlatformMBeanServer()
        self.dcmd = jpype.JClass("javax.management.ObjectName")("com.sun.management:type="
                                                                "DiagnosticCommand")
        self.jfloat, self.jbyte = jpype.JArray(jpype.JFloat), jpype.JArray(jpype.JByte)

    def codelist(self) -> str:
        """The JVM's code cache listing (jcmd Compiler.codelist)."""
        return str(self.server.invoke(self.dcmd, "compilerCodelist", None, None))

    def serve(self, req: CallRequest | GemmRequest | DispatchRequest) -> None:
        """Run one case and send its result (or answer a dispatch question)."""
        t0 = time.perf_counter()
        try:
            if isinstance(req, DispatchRequest):
                self.conn.send(DispatchResult(self._dispatch(req.formats)))
            elif isinstance(req, GemmRequest):
                self._run_gemm(req, t0)
            else:
                self._run(req, req.x.shape[0], t0)
        except self.jpype.JException as exc:
            self.conn.send(CallResult("crash", seconds=time.perf_counter() - t0,
                                      error=_java_error(exc)))
        except Exception as exc:  # JPype's own refusals, e.g. "Class X is not found"
            self.conn.send(CallResult("crash", seconds=time.perf_counter() - t0,
                                      error={"class": type(exc).__name__, "message": str(exc),
                                             "frames": [], "causes": []}))

    def _run(self, req: CallRequest, batch: int, t0: float) -> None:
        """The case's calls on guarded arrays, then the ok result with what the kernel
        wrote outside its output ranges or into its input and weight (a byte array, or a
        read-only MemorySegment mapped from a file)."""
        x, w = req.x, req.w
        inst = self._instance(req.cls)
        jx = self.jfloat(x.reshape(-1))
        arena = None
        if req.memseg:
            arena, jw = self._mapped(w)
        else:
            jw = self.jbyte(w.view(np.int8))
        try:
            self._calls(req, inst, jx, jw, t0, arena is None)
        finally:
            if arena is not None:
                arena.close()

    def _dispatch(self, formats: Sequence[str]) -> dict[str, Any]:
        """SKaiNET's registry's answer; the kernel objects it handed out are kept, so a
        dispatched case calls that very object."""
        from harness.jvm.dispatch import query_registry

        data, objects = query_registry(self.jpype, formats)
        for name, obj in objects.items():
            self.instances.setdefault(name, obj)
        return data

    def _instance(self, cls: str) -> Any:
        """The object to call: one the registry handed out, else the class's static
        INSTANCE (a Kotlin object); a class with neither is looked up in the registry."""
        inst = self.instances.get(cls)
        if inst is None:
            klass = self.jpype.JClass(cls)
            if not hasattr(klass, "INSTANCE"):
                from harness.jvm.dispatch import ACCESSORS

                self._dispatch(tuple(ACCESSORS))
                if cls in self.instances:
                    return self.instances[cls]
            inst = self.instances[cls] = klass.INSTANCE
        return inst

    def _mapped(self, w: np.ndarray) -> tuple[Any, Any]:
        """(arena, segment): the weight bytes written to the worker's weights file (removed
        with the worker's log whatever happens) and mapped read-only, as a packed model
        load maps its GGUF file; the file is unlinked at once, the mapping stays."""
        path = str(self.log) + WEIGHTS_SUFFIX
        with open(path, "wb") as f:
            f.write(w.tobytes())
        jp = self.jpype
        channel_cls = jp.JClass("java.nio.channels.FileChannel")
        read = jp.JClass("java.nio.file.StandardOpenOption").READ
        arena = jp.JClass("java.lang.foreign.Arena").ofConfined()
        ch = channel_cls.open(jp.JClass("java.nio.file.Path").of(path), read)
        try:
            seg = ch.map(channel_cls.MapMode.READ_ONLY, 0, max(1, w.size), arena)
        finally:
            ch.close()
            os.unlink(path)
        return arena, seg

    def _calls(self, req: CallRequest, inst: Any, jx: Any, jw: Any, t0: float,
               check_weight: bool) -> None:
        """The case's calls and its result (see _run). Each row's output is read right after
        its own call, and what that call changed outside its range is named per call: a
        kernel that zeroes output[0, outputOffset) is "wrote before its output offset", not
        a wrong earlier row."""
        x, w, w_off, out_dim, batch = req.x, req.w, req.w_offset, req.out_dim, req.x.shape[0]
        offsets, guarded = guarded_output(batch, out_dim)
        jy = self.jfloat(guarded)
        rep, violations = _Repeats(), []
        while True:
            prev, rows = rep.y, []
            # the first pass checks each call against the array as the call before left it;
            # the repeats read only each call's own row
            snap = np.array(jy, dtype=np.float32) if rep.done == 0 else None
            for r, o in enumerate(offsets):  # one call per row, as SKaiNET batches
                inst.matmul(jx, r * req.in_dim, jw, w_off, req.in_dim, out_dim, jy, o)
                if snap is None:
                    rows.append(np.array(jy[o:o + out_dim], dtype=np.float32))
                    continue
                after = np.array(jy, dtype=np.float32)
                rows.append(after[o:o + out_dim].copy())
                violations = violations or call_violations(snap, after, o, out_dim, r)
                snap = after
            rep.y = np.stack(rows)
            rep.done += 1
            self.conn.send(Heartbeat(rep.done))  # alive: the parent's hang clock restarts
            if rep.first is None:
                rep.first = rep.y
            elif rep.y.tobytes() != rep.first.tobytes():
                rep.drifted += 1
            if self._enough(req, rep, prev, t0):
                break
        violations = violations or guard_violations(np.array(jy, dtype=np.float32), offsets,
                                                    out_dim)
        violations += changed_cells("input", np.array(jx, dtype=np.float32), x, 0)
        if check_weight:  # a mapped segment is read-only: the JVM refuses a write
            violations += changed_cells("weight", np.array(jw, dtype=np.int8), w, w_off)
        self.conn.send(CallResult("ok", y=rep.y, first=rep.first, calls=rep.done,
                                  drifted=rep.drifted, seconds=time.perf_counter() - t0,
                                  compiled=(rep.seen_at is not None if req.calls == "warm"
                                            else None),
                                  warmup_calls=rep.seen_at, violations=violations))

    def _run_gemm(self, req: GemmRequest, t0: float) -> None:
        """A dense GEMM case: `calls` whole calls, then the m x n block, and what the kernel
        wrote outside it (the gaps between rows too) or into a and b."""
        inst = self._instance(req.cls)
        a_off, a_str, b_off, b_str, o_off, o_str, m, n, k = req.dims
        ja = self.jfloat(req.a)
        jb = self.jbyte(req.b.view(np.int8)) if req.b.dtype == np.uint8 else self.jfloat(req.b)
        jo = self.jfloat(np.full(req.out_len, SENTINEL_BITS, np.uint32).view(np.float32))
        cells = (o_off + o_str * np.arange(m)[:, None] + np.arange(n)[None]).reshape(-1)
        rep = _Repeats()
        while rep.done < req.calls:
            inst.matmul(ja, a_off, a_str, jb, b_off, b_str, jo, o_off, o_str, m, n, k)
            full = np.array(jo, dtype=np.float32)
            rep.y = full[cells].reshape(m, n)
            rep.done += 1
            self.conn.send(Heartbeat(rep.done))
            if rep.first is None:
                rep.first = rep.y
            elif rep.y.tobytes() != rep.first.tobytes():
                rep.drifted += 1
        outside = np.ones(req.out_len, bool)
        outside[cells] = False
        bad = np.flatnonzero(outside & (full.view(np.uint32) != SENTINEL_BITS))
        violations = [f"wrote out[{int(i)}], outside the m x n block (outOffset {o_off}, "
                      f"outStride {o_str})" for i in bad[:MAX_VIOLATIONS]]
        violations += changed_cells("a", np.array(ja, dtype=np.float32), req.a, 0)
        violations += changed_cells("b", np.array(jb, dtype=req.b.view(
            np.int8 if req.b.dtype == np.uint8 else np.float32).dtype), req.b, 0)
        self.conn.send(CallResult("ok", y=rep.y, first=rep.first, calls=rep.done,
                                  drifted=rep.drifted, seconds=time.perf_counter() - t0,
                                  violations=violations))

    def _enough(self, req: CallRequest, rep: _Repeats, prev: np.ndarray | None,
                t0: float) -> bool:
        """Whether the case has had its calls: `calls` of them, or in warm mode two whole
        calls in installed C2 code with the same bits, or the warm-up budget spent."""
        if req.calls != "warm":
            return rep.done >= req.calls
        if rep.seen_at is not None and prev is not None and prev.tobytes() == rep.y.tobytes():
            return True  # two whole calls in installed C2 code, same bits
        self.logpos = _osr_ids(self.log, self.logpos, f"{req.cls}::matmul", self.osr)
        method = f"{req.cls}.matmul({MATMUL_DESCRIPTOR[1:]}"
        installed = _c2_installed(self.codelist(), method, self.osr)
        rep.seen_at = (rep.seen_at or rep.done) if installed else None  # reset on deopt
        return rep.done >= WARM_MAX_CALLS or time.perf_counter() - t0 > req.budget


def _java_error(exc: Any) -> dict[str, Any]:
    """Class, message, stack frames ([class, method, file, line], innermost first) and the
    cause chain ([class, message] ...) of a Java throwable."""
    frames = [[str(f.getClassName()), str(f.getMethodName()), str(f.getFileName() or ""),
               int(f.getLineNumber())] for f in exc.getStackTrace()[:MAX_FRAMES]]
    causes, seen, t = [], 0, exc.getCause()
    while t is not None and seen < 8:
        causes.append([str(t.getClass().getName()), str(t.getMessage() or "")])
        if not frames or all(f[0].startswith(PLATFORM_PACKAGES) for f in frames):
            frames = [[str(f.getClassName()), str(f.getMethodName()),
                       str(f.getFileName() or ""), int(f.getLineNumber())]
                      for f in t.getStackTrace()[:MAX_FRAMES]] or frames
        t, seen = t.getCause(), seen + 1
    return {"class": str(exc.getClass().getName()), "message": str(exc.getMessage() or ""),
            "frames": frames, "causes": causes}


def guarded_output(batch: int, out_dim: int) -> tuple[list[int], np.ndarray]:
    """The output array a case hands the kernel: each row's range (where `outputOffset`
    points) with GUARD sentinel cells on both sides; the ranges start zeroed."""
    offsets = [GUARD + r * (out_dim + GUARD) for r in range(batch)]
    arr = np.full(GUARD + batch * (out_dim + GUARD), SENTINEL_BITS, np.uint32).view(np.float32)
    for o in offsets:
        arr[o:o + out_dim] = 0.0
    return offsets, arr


def guard_violations(full: np.ndarray, offsets: list[int], out_dim: int) -> list[str]:
    """Guard cells the kernel wrote, named relative to the nearest call's outputOffset."""
    inside = np.zeros(full.size, bool)
    for o in offsets:
        inside[o:o + out_dim] = True
    bad = np.flatnonzero(~inside & (full.view(np.uint32) != SENTINEL_BITS))
    out = []
    for i in bad[:MAX_VIOLATIONS]:
        r = max(0, int(np.searchsorted(offsets, i, side="right")) - 1)
        rel = int(i) - offsets[r]
        where = (f"outputOffset+outputDim+{rel - out_dim}" if rel >= out_dim
                 else f"outputOffset-{-rel}")
        out.append(f"wrote output[{where}] (row {r}'s call, array index {int(i)}), outside "
                   "its output range")
    if len(bad) > MAX_VIOLATIONS:
        out.append(f"... {len(bad) - MAX_VIOLATIONS} more guard cells written")
    return out


def _span(idx: np.ndarray) -> str:
    """`[a..b]` (or `[a]`) for a sorted index array, with the count when it has gaps."""
    lo, hi = int(idx[0]), int(idx[-1])
    text = f"[{lo}]" if lo == hi else f"[{lo}..{hi}]"
    return text if hi - lo + 1 == len(idx) else f"{text} ({len(idx)} cells)"


def call_violations(before: np.ndarray, after: np.ndarray, offset: int, out_dim: int,
                    row: int) -> list[str]:
    """What one call (row `row`, outputOffset `offset`) changed in the output array outside
    [offset, offset + out_dim): before its offset (a wrapper copying its whole off-heap
    output back from index 0 zeroes every earlier row), or past its range (each cell)."""
    changed = np.flatnonzero(before.view(np.uint32) != after.view(np.uint32))
    low, high = changed[changed < offset], changed[changed >= offset + out_dim]
    out = []
    if len(low):
        zero = " to 0.0" if not after[low].any() else ""
        out.append(f"wrote before its output offset: row {row}'s call (outputOffset "
                   f"{offset}) set output{_span(low)}{zero}; earlier rows' results and the "
                   "caller's data before the offset are overwritten")
    out += [f"wrote output[outputOffset+outputDim+{int(i) - offset - out_dim}] (row {row}'s "
            f"call, array index {int(i)}), outside its output range"
            for i in high[:MAX_VIOLATIONS]]
    if len(high) > MAX_VIOLATIONS:
        out.append(f"... {len(high) - MAX_VIOLATIONS} more cells written past the range")
    return out


def changed_cells(name: str, after: np.ndarray, before: np.ndarray, offset: int
                  ) -> list[str]:
    """A kernel must not write its input or weight array: the first changed index, if any."""
    a = after.reshape(-1).view(np.uint8 if after.itemsize == 1 else np.uint32)
    b = np.ascontiguousarray(before).reshape(-1).view(a.dtype)
    diff = np.flatnonzero(a != b)
    if not len(diff):
        return []
    base = f" (weightByteOffset+{int(diff[0]) - offset})" if name == "weight" else ""
    return [f"changed {name}[{int(diff[0])}]{base}"
            + (f" and {len(diff) - 1} more cells" if len(diff) > 1 else "")]


def main(argv: list[str]) -> None:
    """Worker entry (through harness.workerproc): FD CONFIG_JSON LOG."""
    _child(Connection(int(argv[0])), JvmConfig(**json.loads(argv[1])), argv[2])


# --------------------------------------------------------------------------- parent side

class Worker:
    """A handle on one configuration's worker process (started on first use, restarted
    after a timeout or a JVM death). `killed` lists the processes the code under test had
    left running, found and ended when a worker stopped."""

    def __init__(self, config: JvmConfig, timeout: float = 60.0, start_timeout: float = 120.0):
        self.config = config
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.info: dict[str, Any] = {}
        self.starts = 0
        self.killed: list[str] = []
        self._wp: WorkerProcess | None = None
        self._conn: Any = None
        self._log: str | None = None
        self.stop: threading.Event | None = None  # set: a waiting call gives up at once

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._wp is not None and self._wp.alive()

    @property
    def pid(self) -> int | None:
        return self._wp.pid if self._wp is not None else None

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def start(self) -> dict[str, Any]:
        """Start the worker and its JVM (once); returns start time, lanes, VM name."""
        if self.alive:
            return self.info
        ours, theirs = socket.socketpair()
        fd, self._log = tempfile.mkstemp(prefix="skoracle-jvm-", suffix=".log")
        os.close(fd)
        t0 = time.perf_counter()
        with theirs:
            self._wp = WorkerProcess(
                "harness.jvm.worker:main",
                [str(theirs.fileno()), json.dumps(asdict(self.config)), self._log],
                pass_fds=[theirs.fileno()], cleanup=[self._log, self._log + WEIGHTS_SUFFIX,
                                                    self._log + TMPDIR_SUFFIX],
                stdin=subprocess.DEVNULL)
        parent = self._conn = Connection(ours.detach())
        self.starts += 1
        deadline = time.perf_counter() + self.start_timeout
        while not parent.poll(0.2):
            if self._stopped():
                self.close()
                raise KeyboardInterrupt
            if time.perf_counter() >= deadline:
                tail = self._log_tail()
                self.close()
                raise HarnessError(f"JVM ({self.config.label}) did not start within "
                                   f"{self.start_timeout:.0f}s{tail}")
        try:
            started: Started = parent.recv()
        except EOFError:
            tail = self._log_tail()
            self.close()
            raise HarnessError(f"JVM ({self.config.label}) failed to start{tail}") from None
        self.info = {**asdict(started), "wall_start_s": time.perf_counter() - t0}
        return self.info

    def _log_tail(self) -> str:
        try:
            text = Path(self._log).read_text(errors="replace").strip() if self._log else ""
        except OSError:
            return ""
        return f": {text[-600:]}" if text else ""

    def call(self, cls: str, x: np.ndarray, w: np.ndarray, in_dim: int, out_dim: int,
             w_offset: int = 0, calls: int | str = 1,
             timeout: float | None = None, memseg: bool = False) -> CallResult:
        """Run `cls.INSTANCE.matmul` on every row of x (batch, in_dim) with the packed
        weight bytes w (input-block-major, starting at w_offset): `calls` times, or
        "warm" (until C2 code for it is installed and the bits settle). A Java exception is
        a crash result; a call that does not return within `timeout` kills the worker (a
        timeout result); a dead JVM is a crash result. Each row's output range has guard
        cells on both sides; a kernel that writes one, or writes its input or weight, gets
        `violations`."""
        self.start()
        t0 = time.perf_counter()
        x = np.ascontiguousarray(x, np.float32)
        w = np.ascontiguousarray(w, np.uint8).reshape(-1)
        self._conn.send(CallRequest(cls, x, w, int(w_offset), int(in_dim), int(out_dim),
                                    calls, WARM_MAX_SECONDS, memseg))
        return self._await(t0, self.timeout if timeout is None else timeout)

    def call_gemm(self, cls: str, a: np.ndarray, b: np.ndarray, out_len: int,
                  dims: tuple[int, ...], calls: int = 1) -> CallResult:
        """Run a dense kernel's `cls.INSTANCE.matmul` on the flat arrays a and b (float32
        for an Fp32MatmulKernel; uint8 16-bit floats for a Bf16/Fp16MatmulKernel, b's offset
        and stride then in bytes) with dims (aOffset, aStride, bOffset, bStride, outOffset,
        outStride, m, n, k), `calls` times, on a guarded output of `out_len` cells; the
        result's y is the m x n block."""
        self.start()
        t0 = time.perf_counter()
        b = np.ascontiguousarray(b, np.uint8 if np.asarray(b).dtype == np.uint8
                                 else np.float32).reshape(-1)
        self._conn.send(GemmRequest(cls, np.ascontiguousarray(a, np.float32).reshape(-1), b,
                                    int(out_len), tuple(int(d) for d in dims), int(calls)))
        return self._await(t0, self.timeout)

    def dispatch(self, formats: Sequence[str]) -> dict[str, Any]:
        """Ask SKaiNET's KernelRegistry, in this JVM, which kernel each format gets
        (harness.jvm.dispatch.query_registry); HarnessError if the worker cannot answer."""
        self.start()
        t0 = time.perf_counter()
        self._conn.send(DispatchRequest(tuple(formats)))
        res = self._await(t0, self.timeout)
        if isinstance(res, DispatchResult):
            return res.data
        err = res.error or {}
        raise HarnessError(f"asking SKaiNET's KernelRegistry failed ({res.status}): "
                           f"{err.get('class', '')} {err.get('message', '')}".strip())

    def _await(self, t0: float, limit: float) -> CallResult:
        """The case's result, restarting the hang clock at each Heartbeat (a crash result if
        the JVM dies, a timeout one if a call does not return within `limit`)."""
        deadline = time.perf_counter() + limit  # for each call of the kernel, not the case
        while True:
            if self._conn.poll(min(0.2, max(0.0, deadline - time.perf_counter()))):
                try:
                    msg = self._conn.recv()
                except EOFError:
                    return self._died(t0)
                if isinstance(msg, Heartbeat):  # one more call returned
                    deadline = time.perf_counter() + limit
                    continue
                result: CallResult = msg
                return result
            if self._stopped():
                self.close()
                return CallResult("interrupted", seconds=time.perf_counter() - t0,
                                  error={"message": "interrupted: worker stopped"})
            if time.perf_counter() >= deadline:
                self.close()
                return CallResult("timeout", seconds=time.perf_counter() - t0,
                                  error={"message": f"a call did not return within "
                                                    f"{limit:.0f}s: worker killed"})

    def _died(self, t0: float) -> CallResult:
        """The worker's pipe closed mid-case: the JVM (or its process) died."""
        code = self._wp.wait_exit(5) if self._wp is not None else None
        tail = self._log_tail()
        self.close()
        return CallResult("crash", seconds=time.perf_counter() - t0,
                          error={"class": "JVM died", "message": f"exit code {code}{tail}",
                                 "frames": []})

    def close(self) -> None:
        """Stop the worker (politely, unless interrupted, then by kill), end whatever the
        code under test left running (noted in `killed`) and remove the JVM's log."""
        wp, conn = self._wp, self._conn
        self._wp = self._conn = None
        if wp is not None:
            polite = (lambda: conn.send(Shutdown())) if conn is not None else None
            self.killed += wp.stop(None if self._stopped() else polite, grace=2.0)
        if conn is not None:
            conn.close()
        if self._log:
            Path(self._log).unlink(missing_ok=True)
            Path(self._log + WEIGHTS_SUFFIX).unlink(missing_ok=True)
            shutil.rmtree(self._log + TMPDIR_SUFFIX, ignore_errors=True)
            self._log = None
