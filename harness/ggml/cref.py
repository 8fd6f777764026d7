"""ggml's C reference library, built from the llama-cpp-python sdist, bound through ctypes.

Every bit-exact claim of the oracle is checked against this build. It is compiled with
every x86 SIMD option off (no FMA, no AVX), so ggml's reference quantizers run as plain
sequential IEEE float32 — the same arithmetic the NumPy oracle models — and the build is
checked for leaked vector instructions before it is accepted.

    python3 -m harness.ggml.cref build     # idempotent; cached under $SKORACLE_CACHE
    python3 -m harness.ggml.cref info      # where the library is and what it was built with

The build is cached in ``$SKORACLE_CACHE`` (default ``~/.cache/skainet-oracle``) as
``ggml-<version>/`` with a ``stamp.json`` recording version and flags; it is written to a
temporary directory and renamed into place, so an interrupted build leaves no half cache
(harness.ggml.build, shared with llama.cpp's build).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.ggml.build import (
    LCP_VERSION,
    SDIST_PREFIX,
    LibraryBuild,
    collect_libraries,
    extract_part,
    fetch_sdist,
    library_main,
    run_step,
)
from harness.ggml.build import (
    SDIST_NAME as SDIST_NAME,  # the cached sdist's name, read by tests
)
from oracle.formats import QTYPES, OracleError, QType, qtype

GGML_PREFIX = f"{SDIST_PREFIX}ggml/"

#: Every x86 instruction-set option of ggml/CMakeLists.txt (0.3.36). With GGML_NATIVE=OFF
#: the SSE42/AVX/AVX2/BMI2/FMA/F16C ones default to ON, so each is switched off explicitly.
X86_SIMD_OPTIONS: tuple[str, ...] = (
    "GGML_SSE42", "GGML_AVX", "GGML_AVX_VNNI", "GGML_AVX2", "GGML_BMI2",
    "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
    "GGML_FMA", "GGML_F16C", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16",
)

CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
    "-DGGML_NATIVE=OFF",
    *(f"-D{opt}=OFF" for opt in X86_SIMD_OPTIONS),
    "-DGGML_CPU_ALL_VARIANTS=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DGGML_OPENMP=OFF",
    "-DGGML_BLAS=OFF",
    "-DGGML_ACCELERATE=OFF",
    "-DGGML_LLAMAFILE=OFF",
    "-DGGML_CPU_KLEIDIAI=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_HIP=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_OPENCL=OFF",
    "-DGGML_SYCL=OFF",
    "-DGGML_RPC=OFF",
    "-DGGML_CCACHE=OFF",
    "-DGGML_BUILD_TESTS=OFF",
    "-DGGML_BUILD_EXAMPLES=OFF",
)
WRAPPER_CMAKELISTS = """cmake_minimum_required(VERSION 3.14)
project(skoracle_ggml_ref C CXX)
add_subdirectory(ggml)
"""
BUILD_TARGETS: tuple[str, ...] = ("ggml-base", "ggml-cpu")
LIBRARIES: tuple[str, ...] = ("libggml-base.so", "libggml-cpu.so")

#: The types the CPU path quantizes activations to: each is its own vec_dot type.
ACTIVATION_TYPES: dict[str, QType] = {n: QTYPES[n] for n in ("Q8_1", "Q8_K")}
#: Types ggml_quantize_chunk has no case for (it aborts the process on them).
NO_QUANTIZE_CHUNK: frozenset[str] = frozenset(ACTIVATION_TYPES)

_VECTOR_INSN = re.compile(r"%[yz]mm\d|%k[0-7]\b")


def _say(msg: str) -> None:
    print(f"cref: {msg}", flush=True)


# ----------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------

BUILD = LibraryBuild("ggml", CMAKE_FLAGS, BUILD_TARGETS, LIBRARIES)


#: The finished build for the pinned version (holds lib/ and stamp.json), and whether a
#: complete one with exactly the current version and flags is cached.
build_dir, is_built = BUILD.dir, BUILD.is_built


def extract_ggml(sdist: Path, dest: Path) -> Path:
    """Extract only vendor/llama.cpp/ggml of the sdist into dest/ggml (safe extraction)."""
    return extract_part(sdist, dest / "ggml", GGML_PREFIX, lambda name: True)


def check_no_vector_code(lib: Path) -> None:
    """Raise HarnessError if lib holds VEX/EVEX (AVX, FMA, F16C) instructions.

    Reference results are only plain IEEE float32 when the compiler had no FMA or AVX to
    contract or vectorise with; this proves it from the disassembly rather than the flags.
    """
    if shutil.which("objdump") is None:
        raise HarnessError("objdump not found (install binutils) — needed to verify the build")
    proc = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"objdump -d {lib.name} failed: {proc.stderr.strip()[:200]}")
    bad: list[str] = []
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip().endswith(":"):
            continue
        insn = parts[-1].strip()
        mnemonic = insn.split(" ", 1)[0]
        # Every VEX/EVEX-encoded instruction has a mnemonic starting with "v" in AT&T syntax.
        if mnemonic.startswith("v") or "fma" in mnemonic or _VECTOR_INSN.search(insn):
            bad.append(insn)
    if bad:
        raise HarnessError(f"{lib.name}: {len(bad)} vector/FMA instructions leaked into the "
                           f"reference build, e.g. {bad[0]!r}")


def build(force: bool = False, log: Callable[[str], None] = _say) -> Path:
    """Build ggml-base and ggml-cpu (cached, idempotent); return the directory of the .so files."""
    return BUILD.build(lambda work: _make(work, log), f"ggml {LCP_VERSION}", force, log)


def _make(work: Path, log: Callable[[str], None]) -> None:
    for tool in ("cmake", "cc"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool} not found: run scripts/setup.sh (installs cmake, gcc)")
    sdist = fetch_sdist(log)
    log(f"extracting vendor/llama.cpp/ggml from {sdist.name}")
    src = extract_ggml(sdist, work)
    bdir = work / "build"
    # ggml is consumed as a subproject, as llama.cpp does: its standalone mode wants a
    # ggml.pc.in that the sdist does not ship.
    (work / "CMakeLists.txt").write_text(WRAPPER_CMAKELISTS)
    log("configuring (Release, shared, GGML_NATIVE=OFF, every x86 SIMD option OFF)")
    run_step(["cmake", "-S", str(work), "-B", str(bdir), *CMAKE_FLAGS], work, "cmake configure")
    jobs = str(min(2, os.cpu_count() or 1))
    log(f"compiling {' '.join(BUILD_TARGETS)} with -j{jobs}")
    run_step(["cmake", "--build", str(bdir), "--target", *BUILD_TARGETS, "-j", jobs],
         work, "cmake build")
    collect_libraries(bdir, work / "lib", LIBRARIES)
    log("checking the libraries for AVX/FMA instructions (objdump -d)")
    for name in LIBRARIES:
        check_no_vector_code(work / "lib" / name)
    shutil.rmtree(bdir)
    shutil.rmtree(src)
    (work / "CMakeLists.txt").unlink()


# ----------------------------------------------------------------------------------------
# Binding
# ----------------------------------------------------------------------------------------

_FromFloat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_VecDot = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                           ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_int)


class _TypeTraitsCpu(ctypes.Structure):
    """struct ggml_type_traits_cpu of ggml-cpu.h (llama-cpp-python 0.3.36)."""

    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


_BY_GGML_TYPE: dict[int, QType] = {q.ggml_type: q for q in QTYPES.values()}

_PTR = ctypes.c_void_p
_I64 = ctypes.c_int64


class CRef:
    """ctypes binding of ggml's reference quantizers, dequantizers and CPU dot products."""

    def __init__(self, libdir: Path) -> None:
        mode = getattr(os, "RTLD_GLOBAL", 0)
        try:
            # base first and global, so libggml-cpu's DT_NEEDED resolves to this copy
            self.base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=mode)
            self.cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"), mode=mode)
        except OSError as exc:
            raise HarnessError(f"cannot load ggml from {libdir}: {exc}") from None
        self.libdir = libdir
        b, c = self.base, self.cpu
        b.ggml_quantize_chunk.restype = ctypes.c_size_t
        b.ggml_quantize_chunk.argtypes = [ctypes.c_int, _PTR, _PTR, _I64, _I64, _I64, _PTR]
        for fn in ("ggml_fp16_to_fp32_row", "ggml_fp32_to_fp16_row", "ggml_bf16_to_fp32_row",
                   "ggml_fp32_to_bf16_row_ref"):
            getattr(b, fn).restype = None
            getattr(b, fn).argtypes = [_PTR, _PTR, _I64]
        c.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
        c.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
        c.ggml_cpu_init.restype = None
        c.ggml_cpu_init.argtypes = []
        c.ggml_cpu_init()
        self._rows: dict[str, tuple[Callable, Callable]] = {}

    @classmethod
    def load(cls, build_if_missing: bool = True) -> CRef:
        """The library of the pinned version, building it first if it is not cached."""
        return _load_cached(build_if_missing)

    # -- per-type row functions --------------------------------------------------------

    def _row_fns(self, q: QType) -> tuple[Callable, Callable]:
        """(quantize_row_<t>_ref, dequantize_row_<t>) as ctypes functions."""
        if q.name not in self._rows:
            t = q.name.lower().replace("_k", "_K")
            fns = []
            for sym in (f"quantize_row_{t}_ref", f"dequantize_row_{t}"):
                try:
                    fn = getattr(self.base, sym)
                except AttributeError:
                    fn = None
                if fn is not None:
                    fn.restype = None
                    fn.argtypes = [_PTR, _PTR, _I64]
                fns.append(fn)
            self._rows[q.name] = (fns[0], fns[1])
        return self._rows[q.name]

    def exported(self, symbol: str) -> bool:
        """True if libggml-base or libggml-cpu exports `symbol`."""
        return any(hasattr(lib, symbol) for lib in (self.base, self.cpu))

    # -- quantize / dequantize ---------------------------------------------------------

    def quantize(self, qtype_name: str, x: np.ndarray) -> np.ndarray:
        """float32 (..., n) -> uint8 (..., row bytes) by `quantize_row_<t>_ref` per row.

        The no-imatrix reference path. F32 is copied, F16 goes through
        ggml_fp32_to_fp16_row, BF16 through ggml_fp32_to_bf16_row_ref. Non-finite inputs are
        passed to C unchanged (this is the reference; the oracle is what rejects them).
        The output starts zeroed: quantize_row_q8_K_ref leaves an all-zero block's bsums
        unwritten.
        """
        q = qtype(qtype_name)
        rows, lead, n = _float_rows(q, x)
        out = np.zeros((rows.shape[0], q.row_bytes(n)), dtype=np.uint8)
        if q.name == "F32":
            out[...] = rows.view(np.uint8)
        elif q.name in ("F16", "BF16"):
            fn = (self.base.ggml_fp32_to_fp16_row if q.name == "F16"
                  else self.base.ggml_fp32_to_bf16_row_ref)
            fn(rows.ctypes.data, out.ctypes.data, rows.size)
        else:
            fn = self._row_fns(q)[0]
            if fn is None:
                raise HarnessError(f"ggml exports no quantize_row_{q.name.lower()}_ref")
            step = q.row_bytes(n)
            for i in range(rows.shape[0]):
                fn(rows[i].ctypes.data, out.ctypes.data + i * step, n)
        return out.reshape(*lead, out.shape[-1])

    def quantize_chunk(self, qtype_name: str, x: np.ndarray) -> np.ndarray:
        """float32 (..., n) -> uint8 via ggml_quantize_chunk(imatrix=NULL), all rows at once."""
        q = qtype(qtype_name)
        if q.name in NO_QUANTIZE_CHUNK:
            raise OracleError(f"{q.name}: ggml_quantize_chunk has no case for this type "
                              "(use quantize, its quantize_row_*_ref)")
        rows, lead, n = _float_rows(q, x)
        out = np.empty((rows.shape[0], q.row_bytes(n)), dtype=np.uint8)
        if rows.shape[0]:
            size = self.base.ggml_quantize_chunk(q.ggml_type, rows.ctypes.data, out.ctypes.data,
                                                 0, rows.shape[0], n, None)
            if size != out.nbytes:
                raise HarnessError(f"ggml_quantize_chunk({q.name}) wrote {size} bytes, "
                                   f"expected {out.nbytes}")
        return out.reshape(*lead, out.shape[-1])

    def dequantize(self, qtype_name: str, raw: np.ndarray) -> np.ndarray:
        """uint8 (..., nblocks*bytes) -> float32 (..., nblocks*block) by dequantize_row_<t>.

        ggml has no dequantize_row_q8_1 (Q8_1 is an activation type): its blocks go through
        dequantize_row_q8_0 with the same d and codes (y = q*d; the s field is not read).
        """
        q = qtype(qtype_name)
        if q.name == "Q8_1":
            blocks = _raw_rows(q, raw)[0].reshape(-1, q.nbytes)
            as_q8_0 = np.concatenate([blocks[:, 0:2], blocks[:, 4:]], axis=1)
            lead = np.asarray(raw).shape[:-1]
            return self.dequantize("Q8_0", as_q8_0.reshape(*lead, -1))
        rows, lead, nblocks = _raw_rows(q, raw)
        n = nblocks * q.block
        out = np.empty((rows.shape[0], n), dtype=np.float32)
        if q.name == "F32":
            out[...] = rows.view(np.float32)
        elif q.name in ("F16", "BF16"):
            fn = (self.base.ggml_fp16_to_fp32_row if q.name == "F16"
                  else self.base.ggml_bf16_to_fp32_row)
            fn(rows.ctypes.data, out.ctypes.data, out.size)
        else:
            fn = self._row_fns(q)[1]
            if fn is None:
                raise HarnessError(f"ggml exports no dequantize_row_{q.name.lower()}")
            for i in range(rows.shape[0]):
                fn(rows[i].ctypes.data, out[i].ctypes.data, n)
        return out.reshape(*lead, n)

    # -- CPU backend path (what ggml's matmul computes) ---------------------------------

    def _traits(self, q: QType) -> _TypeTraitsCpu:
        return self.cpu.ggml_get_type_traits_cpu(q.ggml_type).contents

    def vec_dot_type(self, qtype_name: str) -> str:
        """The type the CPU backend quantizes activations to for weights of this type."""
        q = qtype(qtype_name)
        if q.name in ACTIVATION_TYPES:
            return q.name
        t = self._traits(q).vec_dot_type
        if t not in _BY_GGML_TYPE:
            raise HarnessError(f"{q.name}: ggml vec_dot_type {t} has no known geometry")
        return _BY_GGML_TYPE[t].name

    def from_float(self, qtype_name: str, x: np.ndarray) -> np.ndarray:
        """float32 (..., n) -> uint8 raw of vec_dot_type(qtype): the CPU activation quantizer."""
        act = qtype(self.vec_dot_type(qtype_name))
        rows, lead, n = _float_rows(act, x)
        out = np.empty((rows.shape[0], act.row_bytes(n)), dtype=np.uint8)
        if act.name == "F32":
            out[...] = rows.view(np.uint8)
        else:
            ptr = self._traits(act).from_float
            if not ptr:
                raise HarnessError(f"ggml-cpu has no from_float for {act.name}")
            fn = _FromFloat(ptr)
            step = act.row_bytes(n)
            for i in range(rows.shape[0]):
                fn(rows[i].ctypes.data, out.ctypes.data + i * step, n)
        return out.reshape(*lead, out.shape[-1])

    def vec_dot(self, qtype_name: str, w_row: np.ndarray, act_row: np.ndarray,
                n: int) -> np.float32:
        """One dot product by ggml-cpu's vec_dot: weight row (qtype) . activation row.

        `act_row` is the raw activation row in vec_dot_type(qtype), e.g. from from_float.
        """
        q = qtype(qtype_name)
        act = qtype(self.vec_dot_type(q.name))
        traits = self._traits(q)
        if not traits.vec_dot:
            raise HarnessError(f"ggml-cpu has no vec_dot for {q.name}")
        if not isinstance(n, int | np.integer) or n <= 0:
            raise OracleError(f"{q.name}: vec_dot length must be a positive int, got {n!r}")
        n = int(n)
        w = _raw_1d(q, w_row, n, "weight row")
        a = _raw_1d(act, act_row, n, "activation row")
        s = ctypes.c_float(0.0)
        _VecDot(traits.vec_dot)(n, ctypes.byref(s), 0, w.ctypes.data, 0, a.ctypes.data, 0, 1)
        return np.float32(s.value)

    def matvec(self, qtype_name: str, w_raw: np.ndarray, x: np.ndarray) -> np.ndarray:
        """ggml CPU mat-vec: quantize x with from_float, then vec_dot with every weight row.

        w_raw: uint8 (out, row bytes) in GGUF row order; x: float32 (n,) -> float32 (out,).
        """
        q = qtype(qtype_name)
        w = np.asarray(w_raw)
        if w.ndim != 2:
            raise OracleError(f"{q.name}: weight must be 2-D (out, row bytes), got shape {w.shape}")
        xa = np.asarray(x)
        if xa.ndim != 1:
            raise OracleError(f"{q.name}: x must be 1-D, got shape {xa.shape}")
        n = xa.shape[0]
        act = self.from_float(q.name, xa)
        return np.array([self.vec_dot(q.name, w[o], act, n) for o in range(w.shape[0])],
                        dtype=np.float32)


def reference_defined(qtype_name: str, x: np.ndarray) -> np.ndarray:
    """bool, shaped like the packed bytes of `x` (float32 (..., n)): False for the bytes
    ggml's reference quantizer leaves undefined, which no comparison can hold it to. Only
    IQ4_NL has any: a block with amax < 1e-15 gets d = 0 and its 16 code bytes are packed
    from codes quantize_row_iq4_nl_ref never computed (its stack buffer's stale contents)."""
    q = qtype(qtype_name)
    rows, lead, n = _float_rows(q, np.asarray(x, dtype=np.float32))
    defined = np.ones((rows.shape[0] * (n // q.block), q.nbytes), bool)
    if q.name == "IQ4_NL":
        zero = np.abs(rows.reshape(-1, q.block)).max(axis=1) < np.float32(1e-15)
        defined[zero, 2:] = False
    return defined.reshape(*lead, q.row_bytes(n))


@functools.lru_cache(maxsize=1)
def _load_cached(build_if_missing: bool) -> CRef:
    if not is_built():
        if not build_if_missing:
            raise HarnessError(f"ggml {LCP_VERSION} is not built: "
                               "run python3 -m harness.ggml.cref build")
        build()
    return CRef(build_dir() / "lib")


# ----------------------------------------------------------------------------------------
# Shape checks
# ----------------------------------------------------------------------------------------

def _float_rows(q: QType, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], int]:
    """x (..., n) float32 -> contiguous (rows, n), the leading shape and n; checks n % block."""
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise OracleError(f"{q.name}: input must be float32, got {a.dtype}")
    if a.ndim == 0:
        raise OracleError(f"{q.name}: input must have at least one dimension, got a scalar")
    n = a.shape[-1]
    if n == 0 or n % q.block:
        raise OracleError(f"{q.name}: row length must be a positive multiple of {q.block} "
                          f"elements, got {n}")
    return np.ascontiguousarray(a.reshape(-1, n)), a.shape[:-1], n


def _raw_rows(q: QType, raw: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], int]:
    """raw (..., nbytes) uint8 -> contiguous (rows, nbytes), leading shape, blocks per row."""
    a = np.asarray(raw)
    if a.dtype != np.uint8:
        raise OracleError(f"{q.name}: packed input must be uint8, got {a.dtype}")
    if a.ndim == 0:
        raise OracleError(f"{q.name}: packed input must have at least one dimension")
    nbytes = a.shape[-1]
    if nbytes == 0 or nbytes % q.nbytes:
        raise OracleError(f"{q.name}: row of {nbytes} bytes is not a positive whole number of "
                          f"{q.nbytes}-byte blocks")
    return np.ascontiguousarray(a.reshape(-1, nbytes)), a.shape[:-1], nbytes // q.nbytes


def _raw_1d(q: QType, raw: np.ndarray, n: int, what: str) -> np.ndarray:
    a = np.asarray(raw)
    if a.dtype != np.uint8 or a.ndim != 1:
        raise OracleError(f"{q.name}: {what} must be 1-D uint8, got {a.dtype} {a.shape}")
    want = q.row_bytes(n)
    if a.shape[0] != want:
        raise OracleError(f"{q.name}: {what} of {n} elements must be {want} bytes, "
                          f"got {a.shape[0]}")
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------------------
# python3 -m harness.ggml.cref
# ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    def check() -> None:
        CRef.load(build_if_missing=False)
        _say("library loads; ggml_cpu_init ok")

    return library_main(argv, "cref", "ggml's C reference library", build, build_dir,
                        is_built, check)


if __name__ == "__main__":
    raise SystemExit(main())
