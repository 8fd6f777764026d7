"""Kernel parity on the host: a build of SKaiNET's C kernels for THIS machine (a shared
library, or a static archive linked here into a temporary one) called through ctypes in a
child process per case, so a kernel that crashes ends its child, never the harness.

The cases, the inventory and the judge are the board's (harness.board.parity). On x86-64
the float order of SKaiNET's build (-O3 -ffast-math -funroll-loops, no -march: NEON compiled
out, the scalar C vectorized for SSE2) is kernels_ref's `skainet_x86`, read from gcc 12.2.0's
build of its sources: every kernel it covers must match it bit for bit; a kernel whose order
was not established (and every kernel on another host) is judged within the rigorous bound,
and its row says why (`host_order`).

The child calls the packed matmuls one batch row at a time and the dense GEMMs
(`skainet_fp32_matmul`, `skainet_bf16_matmul`, `skainet_fp16_matmul`) once on all rows, at
offsets inside padded buffers with guard cells around C's block (kernelkinds.DENSE_LAYOUT),
as the board's driver does. It loads the library with the caller's floating-point
environment put back afterwards (`load_library`), as HotSpot does.

Child: python3 -m harness.board.hostkernels LIB SYMBOL DIR IN_DIM OUT_DIM BATCH
(DIR holds w.bin and x.bin; the child writes DIR/y.bin; exit 3 when a dense kernel wrote
outside its output block), or LIB --fenv (prints whether loading LIB changed the
floating-point environment).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.parity.judge import FAILED, OK, Outcome
from harness.parity.verdict import Verdict
from kernels_ref.dense import DENSE_TYPES

#: The order model of an x86-64 build of SKaiNET's C kernels
HOST_MODEL = "skainet_x86"
#: SKaiNET's compile flags for linux-x86_64 (native/CMakeLists.txt, no -march), with which
#: the project's host fixture is built too
SKAINET_X86_CFLAGS = ("-std=c11", "-O3", "-ffast-math", "-funroll-loops", "-fPIC",
                      "-fvisibility=hidden")
HOST_FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "host"
#: the formats the host fixture has a kernel for (both block orders)
HOST_FIXTURE_FORMATS = ("Q8_0", "Q4_0", "Q4_K")
HOST_FIXTURE_LABEL = ("TEST FIXTURE: the project's own scalar C kernels (fixtures/host), "
                      "built for this host, not SKaiNET's result")
#: ELF e_machine of the machines a host library may be built for
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}
AR_MAGIC = b"!<arch>\n"
#: The fixture library is built exactly as SKaiNET builds its x86-64 library.
FIXTURE_CFLAGS = (*SKAINET_X86_CFLAGS, "-shared")
#: the kinds of kernel the host child calls (kernelkinds: packed matmuls, dense GEMMs)
HOST_KINDS = ("packed", "dense")
#: what the inventory says of the other kinds an archive exports
HOST_KINDS_ONLY = "the host runner calls the packed matmuls and the dense GEMMs only"
#: SKaiNET's bundled native library (NativeLibraryLoader's resource convention,
#: native/<os>-<arch>/<file>), by platform.system() and by platform.machine()
NATIVE_OS = {"Linux": ("linux", "libskainet_kernels.so"),
             "Darwin": ("macos", "libskainet_kernels.dylib"),
             "Windows": ("windows", "skainet_kernels.dll")}
NATIVE_ARCH = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
#: exit status of a child whose dense kernel wrote outside its output block
GUARD_EXIT = 3
#: what the summary says when loading the library changed the floating-point environment
FENV_NOTE = ("Loading the library sets flush-to-zero/denormals-are-zero (it was linked with "
             "-ffast-math: gcc before 13 links crtfastmath.o into shared libraries too); its "
             "kernels ran with the caller's environment put back, as HotSpot does after "
             "loading a library (JDK-8295159, JDK 22), so subnormals are IEEE's")


def _elf_machine(head: bytes) -> int | None:
    """e_machine of a little-endian 64-bit ELF header, else None."""
    if head[:4] != b"\x7fELF" or len(head) < 20 or head[4] != 2 or head[5] != 1:
        return None
    return int.from_bytes(head[18:20], "little")


def _archive_machine(data: bytes, label: str) -> int | None:
    """e_machine of the first ELF member of an `ar` archive, else None."""
    from harness.gate.arfile import ArchiveError, iter_members

    try:
        for member in iter_members(data, label=label):
            if not member.special and bytes(member.data[:4]) == b"\x7fELF":
                return _elf_machine(bytes(member.data[:20]))
    except ArchiveError as exc:
        raise HarnessError(str(exc)) from None
    return None


ZIP_MAGIC = b"PK\x03\x04"


def native_library_resource() -> str | None:
    """Where SKaiNET's native-cpu JAR bundles its library for this machine, e.g.
    native/linux-x86_64/libskainet_kernels.so (None: SKaiNET ships none for this OS or
    architecture)."""
    os_tag, arch = NATIVE_OS.get(platform.system()), NATIVE_ARCH.get(platform.machine())
    return f"native/{os_tag[0]}-{arch}/{os_tag[1]}" if os_tag and arch else None


def jar_library(path: Path, data: bytes) -> bytes:
    """The library a SKaiNET native-cpu JAR bundles for this machine: the very bytes its
    JVM extracts and loads (HarnessError naming the JAR and the member, else)."""
    from harness.gate.errors import GateError
    from harness.gate.ziputil import zip_member

    member = native_library_resource()
    if member is None:
        raise HarnessError(f"--kernels-archive {path}: SKaiNET bundles no library for "
                           f"{platform.system()} {platform.machine()}")
    try:
        lib = zip_member(f"--kernels-archive {path}", data, member)
    except GateError as exc:
        raise HarnessError(str(exc)) from None
    if lib is None:
        raise HarnessError(f"--kernels-archive {path}: a zip/JAR without {member} (SKaiNET's "
                           "skainet-backend-native-cpu JAR bundles it for this machine)")
    return lib


def check_host_library(path: Path) -> str:
    """"so", "a" or "jar" (SKaiNET's native-cpu JAR: the library it bundles for this
    machine) for a library built for this machine (HarnessError, one line, else)."""
    return _read_host_library(path)[0]


def _read_host_library(path: Path) -> tuple[str, bytes]:
    """(check_host_library's kind, the file's bytes: for a JAR, its library's)."""
    label = f"--kernels-archive {path}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise HarnessError(f"{label}: {exc.strerror or exc}") from None
    if data[:4] == ZIP_MAGIC:
        data = jar_library(Path(path), data)
        label += f"!/{native_library_resource()}"
        kind = "jar"
    else:
        kind = "a" if data[:8] == AR_MAGIC else "so"
    machine = _archive_machine(data, label) if kind == "a" else _elf_machine(data[:20])
    want = ELF_MACHINES.get(platform.machine())
    if machine is None:
        raise HarnessError(f"{label}: not a 64-bit little-endian ELF shared library or an "
                           "`ar` archive of ELF objects")
    if machine != want:
        raise HarnessError(f"{label}: built for ELF machine {machine}, this host "
                           f"({platform.machine()}) is {want}: --host needs a build for it")
    return kind, data


def library_symbols(lib: Path) -> set[str]:
    """The defined global and weak dynamic symbols of a shared library (pyelftools)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        with open(lib, "rb") as fh:
            elf = ELFFile(fh)
            return {sym.name for sec in elf.iter_sections()
                    if isinstance(sec, SymbolTableSection)
                    for sym in sec.iter_symbols()
                    if sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
                    and sym["st_shndx"] != "SHN_UNDEF" and sym.name}
    except (ELFError, OSError) as exc:
        raise HarnessError(f"--kernels-archive {lib}: unreadable ELF ({exc})") from None


def _gcc(args: Sequence[str], what: str) -> None:
    """Run the host gcc (HarnessError with its last line on failure)."""
    try:
        res = subprocess.run(["gcc", *args], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"{what}: host gcc failed to run ({exc})") from None
    if res.returncode:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarnessError(f"{what}: host gcc failed: {last[:300]}")


@contextlib.contextmanager
def host_library(path: Path) -> Iterator[Path]:
    """A shared library for `path`: itself, the one a SKaiNET native-cpu JAR bundles for
    this machine (extracted), or a static archive linked into a temporary one (whole
    archive); temporaries in a temp dir removed afterwards."""
    kind, data = _read_host_library(path)
    if kind == "so":
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="skoracle-host-") as tmp:
        lib = Path(tmp) / "libskainet_kernels_host.so"
        if kind == "jar":
            lib.write_bytes(data)
            yield lib
            return
        _gcc(["-shared", "-o", str(lib), "-Wl,--whole-archive", str(Path(path).resolve()),
              "-Wl,--no-whole-archive", "-lpthread", "-lm"], f"linking {path} for the host")
        yield lib


def fixture_host_source(wrong: bool = False) -> Path:
    """The C file of the host fixture kernels: `wrong` the one deliberately wrong kernel."""
    return HOST_FIXTURE_DIR / ("host_kernels_wrong.c" if wrong else "host_kernels.c")


def build_fixture_host_library(lib: Path, wrong: bool = False) -> Path:
    """Build the project's scalar fixture kernels (fixtures/host) with SKaiNET's x86 flags
    (`FIXTURE_CFLAGS`) into the shared library `lib` (HarnessError if gcc fails)."""
    src = fixture_host_source(wrong)
    _gcc([*FIXTURE_CFLAGS, "-o", str(lib), str(src)], f"building the host fixture {src.name}")
    return Path(lib)


@contextlib.contextmanager
def fixture_host_library(wrong: bool = False) -> Iterator[Path]:
    """The project's scalar fixture kernels (fixtures/host) built here with SKaiNET's x86
    flags into a temporary shared library: `wrong` the one deliberately wrong kernel."""
    with tempfile.TemporaryDirectory(prefix="skoracle-host-fixture-") as tmp:
        yield build_fixture_host_library(
            Path(tmp) / ("libfixture_host_wrong.so" if wrong else "libfixture_host.so"), wrong)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the harness goes away (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def run_host_kernel(lib: Path, symbol: str, x: np.ndarray, weights: np.ndarray,
                    in_dim: int, out_dim: int, timeout: float = 120.0) -> Outcome:
    """One kernel call in a child process: outputs, or a crash/timeout/failed outcome."""
    batch = x.shape[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skoracle-hostcase-") as tmp:
        Path(tmp, "x.bin").write_bytes(np.ascontiguousarray(x, "<f4").tobytes())
        Path(tmp, "w.bin").write_bytes(np.ascontiguousarray(weights, np.uint8).tobytes())
        cmd = [sys.executable, "-m", "harness.board.hostkernels", str(lib), symbol, tmp,
               str(in_dim), str(out_dim), str(batch)]
        try:
            res = subprocess.run(cmd, capture_output=True, timeout=timeout, env=os.environ,
                                 preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            return Outcome(Verdict.TIMEOUT, error=f"{symbol}: no result in {timeout:g} s",
                           seconds=time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        if res.returncode < 0:
            return Outcome(Verdict.CRASH, error=f"{symbol} crashed the child: killed by "
                           f"{_signal_name(res.returncode)}", seconds=seconds)
        if res.returncode:
            last = (res.stderr.decode("utf-8", "replace").strip().splitlines() or ["?"])[-1]
            return Outcome(FAILED, error=f"{symbol}: child exit {res.returncode}: "
                           f"{last[:300]}", seconds=seconds)
        y = np.fromfile(Path(tmp, "y.bin"), "<f4").reshape(batch, out_dim)
    return Outcome(OK, y, seconds=seconds)


def established_on() -> str:
    """The build skainet_x86's order was read from, in words."""
    from kernels_ref.semantics import SkainetX86

    return f"{SkainetX86.ESTABLISHED_ON} -O3 -ffast-math -funroll-loops (SSE2)"


def host_order(qtype: str, kernel_order: str, machine: str | None = None
               ) -> tuple[str | None, str]:
    """(the order model a host build of this kernel follows, or None; what its row says):
    skainet_x86 on x86-64 where its order was established (every packed format but Q5_0's
    row-major entry, and the dense F32, BF16 and F16 GEMMs), else the rigorous bound and
    why."""
    from kernels_ref.semantics import make
    from oracle import OracleError

    machine = machine or platform.machine()
    if machine != "x86_64":
        return None, (f"{machine} build: order not modelled on this host, judged within the "
                      "rigorous bound")
    try:
        if qtype not in DENSE_TYPES:
            make(HOST_MODEL, kernel_order=kernel_order).check_format(qtype)
    except OracleError as exc:
        why = str(exc).split(": ", 1)[-1]
        return None, (f"x86-64 build: order not established for this kernel ({why}), judged "
                      "within the rigorous bound")
    return HOST_MODEL, f"the x86-64 order {established_on()} gives"


def host_kernel_parity(library: Path, formats: Sequence[str] | None = None,
                       shapes: Sequence[tuple[int, int, int]] | None = None, seed: int = 0,
                       progress: Callable[[str], None] | None = None,
                       fixture: bool = False, label: Path | None = None):
    """Every packed matmul and dense GEMM the library exports, run here (`HostRunner`) on
    the board's case plan and judged by the one judge: bit-exact against `host_order`'s
    model, or within the rigorous bound where there is none (the row says why).
    `label`: the path to name in the inventory (the user's file, not a temporary link)."""
    from harness.board.parity import (
        ALL_KERNELS,
        DEFAULT_SHAPES,
        KernelParity,
        inventory,
        kernel_case,
        plan_cases,
    )
    from harness.parity.runner import HostRunner

    inv = inventory(Path(library), formats, symbols=library_symbols(library))
    for k in [k for k in inv.run if k.kind not in HOST_KINDS]:
        inv.run.remove(k)
        inv.not_modelled[k.symbol] = HOST_KINDS_ONLY
    if not inv.run:
        raise HarnessError(f"--kernels-archive {label or library}: exports none of the "
                           "packed matmul or dense GEMM kernels the host runner calls")
    inv.archive = Path(label or library)
    callable_here = {k.symbol for k in ALL_KERNELS if k.kind in HOST_KINDS}
    inv.absent = [a for a in inv.absent if a in callable_here]
    orders = {k.symbol: host_order(k.qtype, k.kernel_order) for k in inv.run}
    note = host_summary_note(orders)
    if library_changes_fenv(Path(library)):
        note = f"{note}. {FENV_NOTE}" if note else FENV_NOTE
    result = KernelParity(inv, fixture=fixture, fixture_label=HOST_FIXTURE_LABEL, note=note)
    runner = HostRunner(library)
    for planned in plan_cases(inv, shapes or DEFAULT_SHAPES, result.skipped):
        model, note = orders[planned.kernel.symbol]
        case = kernel_case(runner, planned.kernel, planned.shape, seed, model=model,
                           note=note)
        result.cases.append(case)
        if progress:
            progress(case.row())
    return result


def host_summary_note(orders: dict[str, tuple[str | None, str]]) -> str:
    """What the summary says of the host's order models: the model and the build it was
    read from, and every kernel left to the bound, by name."""
    modelled = [sym for sym, (model, _) in orders.items() if model]
    bound = [sym for sym, (model, _) in orders.items() if not model]
    parts = []
    if modelled:
        parts.append(f"Host: x86-64 build judged bit-exact against {HOST_MODEL}, the order "
                     f"{established_on()} gives SKaiNET's sources (another compiler may order "
                     "the sums differently: such a build fails, its rows say whether inside "
                     "the rigorous bound)")
    if bound:
        parts.append(f"Judged within the rigorous bound, order not modelled: {', '.join(bound)}")
    return ". ".join(parts)


def _fp_controls(fenv: bytes) -> bytes:
    """The control part of a glibc fenv_t (its exception flags left out): x86-64 the x87
    control word and MXCSR's control bits (FTZ, DAZ, rounding, masks), aarch64 FPCR."""
    machine = platform.machine()
    if machine == "x86_64":
        mxcsr = int.from_bytes(fenv[28:32], "little") & ~0x3F
        return fenv[:2] + mxcsr.to_bytes(4, "little")
    return fenv[:4] if machine == "aarch64" else fenv


def load_library(path: str):
    """(the library loaded with ctypes, whether loading it changed the floating-point
    controls). Whatever its constructors set (a library linked with gcc's -ffast-math sets
    FTZ and DAZ from crtfastmath.o) is put back afterwards, as HotSpot does after loading a
    library (JDK-8295159): the kernels run in the caller's IEEE environment, as in the JVM.
    Without that, the loading thread — NumPy's arithmetic in it too — flushes subnormals."""
    import ctypes
    import ctypes.util

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    before, after = ctypes.create_string_buffer(64), ctypes.create_string_buffer(64)
    libm.fegetenv(before)
    lib = ctypes.CDLL(path)
    libm.fegetenv(after)
    libm.fesetenv(before)
    return lib, _fp_controls(before.raw) != _fp_controls(after.raw)


def library_changes_fenv(lib: Path, timeout: float = 60.0) -> bool:
    """Whether loading `lib` changes the floating-point controls (asked of a child, which
    dies with the harness; False when the child cannot tell: its cases then say why)."""
    cmd = [sys.executable, "-m", "harness.board.hostkernels", str(lib), "--fenv"]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout, env=os.environ,
                             preexec_fn=_die_with_parent)
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0 and res.stdout.strip() == b"changed"


def _kernel_kind(symbol: str) -> tuple[str, int]:
    """("packed", 0) or ("dense", bytes per B element) for an exported symbol."""
    from harness.board.kernelkinds import OTHER_KERNELS

    dense = {k.symbol: k.qtype for k in OTHER_KERNELS if k.kind == "dense"}
    return ("dense", DENSE_TYPES[dense[symbol]]) if symbol in dense else ("packed", 0)


def _call_packed(fn, x: np.ndarray, w: np.ndarray, in_dim: int, out_dim: int,
                 batch: int) -> np.ndarray:
    """A packed matmul once per batch row, as SKaiNET's dispatch calls it."""
    import ctypes

    fn.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                   ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32]
    y = np.zeros(batch * out_dim, "<f4")
    for b in range(batch):
        fn(x.ctypes.data, b * in_dim, w.ctypes.data, 0, in_dim, out_dim,
           y.ctypes.data + 4 * b * out_dim, 0)
    return y


def _call_dense(fn, elem: int, x: np.ndarray, w: np.ndarray, k: int, n: int, m: int
                ) -> tuple[np.ndarray, bool]:
    """A dense GEMM once, C(m, n) = A(m, k) B(k, n), on copies of A and B at offsets in
    padded buffers (B's offset and stride in bytes for 16-bit B): (C's block, whether
    every guard cell around it is intact)."""
    import ctypes

    from harness.board.kernelkinds import DENSE_GUARD, DENSE_LAYOUT

    lay = DENSE_LAYOUT
    a_stride, b_stride, c_stride = k + lay["a_pad"], n + lay["b_pad"], n + lay["c_pad"]
    a = np.zeros(lay["a_off"] + m * a_stride, "<f4")
    a[lay["a_off"]:].reshape(m, a_stride)[:, :k] = x.reshape(m, k)
    b = np.zeros((lay["b_off"] + k * b_stride) * elem, np.uint8)
    b[lay["b_off"] * elem:].reshape(k, b_stride * elem)[:, :n * elem] = w.reshape(k, n * elem)
    c = np.full(lay["c_off"] + m * c_stride, DENSE_GUARD, np.uint32)
    b_off, b_step = (lay["b_off"], b_stride) if elem == 4 else \
        (lay["b_off"] * elem, b_stride * elem)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32] * 3 + [ctypes.c_int32] * 3
    fn(a.ctypes.data, lay["a_off"], a_stride, b.ctypes.data, b_off, b_step,
       c.ctypes.data, lay["c_off"], c_stride, m, n, k)
    block = c[lay["c_off"]:].reshape(m, c_stride)
    intact = bool((c[:lay["c_off"]] == DENSE_GUARD).all() and (block[:, n:] == DENSE_GUARD).all())
    return np.ascontiguousarray(block[:, :n]).view("<f4"), intact


def child_main(argv: Sequence[str]) -> int:
    """The child: load the library (`load_library`), call SYMBOL (a packed matmul per batch
    row, a dense GEMM once), write y.bin; or, with --fenv, say whether loading changed the
    floating-point controls."""
    if len(argv) == 2 and argv[1] == "--fenv":
        print("changed" if load_library(argv[0])[1] else "kept")
        return 0
    lib, symbol, tmp = argv[0], argv[1], Path(argv[2])
    in_dim, out_dim, batch = (int(a) for a in argv[3:6])
    fn = getattr(load_library(lib)[0], symbol)
    fn.restype = None
    x = np.fromfile(tmp / "x.bin", "<f4")
    w = np.fromfile(tmp / "w.bin", np.uint8)
    kind, elem = _kernel_kind(symbol)
    if kind == "packed":
        y = _call_packed(fn, x, w, in_dim, out_dim, batch)
    else:
        if w.size != in_dim * out_dim * elem or x.size != batch * in_dim:
            print(f"{symbol}: B holds {w.size} bytes, A {x.size} floats: expected "
                  f"{in_dim * out_dim * elem} and {batch * in_dim}", file=sys.stderr)
            return 2
        y, intact = _call_dense(fn, elem, x, w, in_dim, out_dim, batch)
        if not intact:
            print(f"{symbol} wrote outside its output block (a guard cell of C changed)",
                  file=sys.stderr)
            return GUARD_EXIT
    y.tofile(tmp / "y.bin")
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
