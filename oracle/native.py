"""The compiled twin of the oracle's hot loops (oracle/csrc/skoracle_native.c), via ctypes.

The NumPy code stays the definition of every result: the C performs the same float
operations in the same order (built with -ffp-contract=off, no -ffast-math; fmaf where the
model fuses) and tests/test_native.py checks it bit for bit against the NumPy definition on
the golden set and on random shapes. Callers use it when it is there and fall back to
NumPy when it is not (no compiler) or when SKORACLE_NATIVE=0.

    python3 -m oracle.native build    # idempotent; cached under $SKORACLE_CACHE
    python3 -m oracle.native info

The library is cached as ``native-<hash>/libskoracle_native.so`` in ``$SKORACLE_CACHE``
(default ``~/.cache/skainet-oracle``), the hash covering the source and the flags; it is
compiled to a temporary name and renamed into place. Building takes about a second, so a
missing build is made on first use.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from oracle.cfloat import F32, fp16_table

SOURCE = Path(__file__).with_name("csrc") / "skoracle_native.c"
#: format name -> the C enum value
FORMAT_IDS = {"Q4_0": 0, "Q5_0": 1, "Q5_1": 2, "Q8_0": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}
#: semantics name -> the C enum value ("fast" is refmodel's BLAS-free float32 order)
SEMANTICS_IDS = {"exact": 0, "fast": 1, "skainet_scalar": 2, "skainet_panama": 3,
                 "skainet_neon": 4}
REDUCTION_IDS = {"sequential": 0, "pairwise": 1, "halving": 2}
BASE_FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")

_LIB: ctypes.CDLL | None | bool = None  # False: tried and unavailable
_DISABLED = False


def cache_root() -> Path:
    """$SKORACLE_CACHE or ~/.cache/skainet-oracle (the C builds share it)."""
    env = os.environ.get("SKORACLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "skainet-oracle"


def cpu_flags() -> tuple[str, ...]:
    """-mavx2 -mfma when this x86 CPU has both (the kernels' fmaf is then one instruction)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    return ("-mavx2", "-mfma") if {"avx2", "fma"} <= set(flags) else ()


def compile_flags() -> tuple[str, ...]:
    return BASE_FLAGS + cpu_flags()


def library_path() -> Path:
    """Where the build for the current source and flags lives."""
    key = hashlib.sha256(SOURCE.read_bytes() + repr(compile_flags()).encode()).hexdigest()[:12]
    return cache_root() / f"native-{key}" / "libskoracle_native.so"


def build(force: bool = False) -> Path:
    """Compile the library into the cache (a temporary name, then renamed); its path."""
    path = library_path()
    if path.is_file() and not force:
        return path
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise OSError("no C compiler (gcc) found to build the oracle's native helper")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lib-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *compile_flags(), str(SOURCE), "-o", tmp, "-lm"],
                              capture_output=True, text=True)
        if proc.returncode:
            raise OSError(f"building {SOURCE.name} failed: {proc.stderr.strip()[:300]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def lib() -> ctypes.CDLL | None:
    """The loaded library (built on first use), or None when disabled or unavailable."""
    global _LIB
    if _DISABLED or os.environ.get("SKORACLE_NATIVE", "1") == "0":
        return None
    if _LIB is None:
        try:
            so = ctypes.CDLL(str(build()))
        except OSError:
            _LIB = False
            return None
        p = ctypes.c_void_p
        i64, c_int = ctypes.c_int64, ctypes.c_int
        so.sk_set_fp16_table.argtypes = [p]
        so.sk_dequantize.argtypes = [c_int, p, i64, p]
        so.sk_gemv.argtypes = [c_int] * 6 + [p, i64, i64, p, i64, i64, p, i64, p, p]
        table = np.ascontiguousarray(fp16_table(), dtype=F32)
        so._fp16_table = table  # keep it alive as long as the library
        so.sk_set_fp16_table(table.ctypes.data)
        _LIB = so
    return _LIB or None


def available() -> bool:
    return lib() is not None


@contextmanager
def disabled() -> Iterator[None]:
    """Run the block with the NumPy definitions only (tests compare the two)."""
    global _DISABLED
    before, _DISABLED = _DISABLED, True
    try:
        yield
    finally:
        _DISABLED = before


def dequantize_blocks(fmt: str, blocks: np.ndarray, block: int) -> np.ndarray | None:
    """float32 (N, block) for the contiguous uint8 (N, nbytes) blocks, or None."""
    so = lib()
    if so is None or fmt not in FORMAT_IDS:
        return None
    blocks = np.ascontiguousarray(blocks)
    out = np.empty((blocks.shape[0], block), F32)
    if so.sk_dequantize(FORMAT_IDS[fmt], blocks.ctypes.data, blocks.shape[0], out.ctypes.data):
        return None
    return out


def gemv(semantics: str, fmt: str, x: np.ndarray, raw_rows: np.ndarray, *, lanes: int = 0,
         reduction: str = "sequential", fused: bool = False, row_major: bool = False,
         q8: dict | None = None) -> np.ndarray | None:
    """float32 (batch, rows) = x (batch, in) . W^T for packed row-major `raw_rows`
    (rows, row_bytes) in the float order of `semantics`, or None when the library or this
    combination is not available. `q8`: the NEON K-quant kernels' quantized activations."""
    so = lib()
    if so is None or fmt not in FORMAT_IDS or semantics not in SEMANTICS_IDS:
        return None
    x = np.ascontiguousarray(x, dtype=F32)
    raw_rows = np.ascontiguousarray(raw_rows)
    rows = raw_rows.shape[0]
    y = np.empty((x.shape[0], rows), F32)
    qs = qd = None
    if q8 is not None:
        qs = np.ascontiguousarray(q8["qs"], dtype=np.int8)
        qd = np.ascontiguousarray(q8["d"], dtype=F32)
    rc = so.sk_gemv(SEMANTICS_IDS[semantics], FORMAT_IDS[fmt], int(lanes),
                    REDUCTION_IDS[reduction], int(bool(fused)), int(bool(row_major)),
                    x.ctypes.data, x.shape[0], x.shape[1], raw_rows.ctypes.data, rows,
                    raw_rows.shape[1], y.ctypes.data, rows,
                    None if qs is None else qs.ctypes.data,
                    None if qd is None else qd.ctypes.data)
    return None if rc else y


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["build"]:
        try:
            print(f"native: {build(force='--force' in args)}")
        except OSError as exc:
            print(f"native: {exc}", file=sys.stderr)
            return 1
        return 0
    if args[:1] == ["info"]:
        print(f"native: source {SOURCE}\nflags: {' '.join(compile_flags())}\n"
              f"library: {library_path()} ({'built' if library_path().is_file() else 'absent'})")
        return 0
    print("usage: python3 -m oracle.native build [--force] | info", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
