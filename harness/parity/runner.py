"""Case runners: one per target, one interface. A runner runs one kernel call and gives back
an `Outcome` (outputs, status, timings, extras); the one judge does the rest.

- `JvmRunner`: a kernel class in the JVM worker (harness.jvm.worker), at its lanes and mode;
- `BoardRunner`: an exported native kernel through the kernel driver on a board session;
- `HostRunner`: a host build of the native kernels, called in a child process;
- `LocalRunner`: host code (ggml's C library, the project's fixture C kernels under qemu,
  kernels_ref itself) called in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harness.errors import HarnessError
from harness.parity.judge import FAILED, OK, Outcome
from harness.parity.verdict import Verdict


@dataclass(frozen=True)
class KernelCall:
    """One call of a packed matmul kernel: y[batch, out_dim] = x[batch, in_dim] @ W^T, the
    weights in the block order the kernel reads (`w_offset` bytes of padding first)."""

    kernel: str  # JVM class name, archive symbol, or a host name
    x: np.ndarray
    weights: np.ndarray
    out_dim: int
    in_dim: int
    w_offset: int = 0


class CaseRunner(Protocol):
    """Run this case, give back its outputs, status, timings and extras."""

    def run(self, call: KernelCall) -> Outcome: ...


class JvmRunner:
    """Calls into one JVM worker (`calls`: 2, or "warm" for the warm-up-until-compiled mode).
    Extras: the worker's CallResult (repeats, drift, compilation)."""

    def __init__(self, worker: Any, calls: int | str) -> None:
        self.worker, self.calls = worker, calls

    def run(self, call: KernelCall) -> Outcome:
        res = self.worker.call(call.kernel, call.x, call.weights, call.in_dim, call.out_dim,
                               w_offset=call.w_offset, calls=self.calls)
        return Outcome(res.status, res.y, res.error, res.violations, res.seconds,
                       {"result": res, "calls": res.calls, "drifted": res.drifted})


class BoardRunner:
    """The kernel driver linked against an archive, run on a target (a board session or a
    local emulator). Extras: the target's RunResult."""

    def __init__(self, target: Any, driver: Path, timeout: float = 300.0) -> None:
        self.target, self.driver, self.timeout = target, driver, timeout

    def run(self, call: KernelCall) -> Outcome:
        from harness.board.parity import ALL_KERNELS, run_kernel

        k = next(k for k in ALL_KERNELS if k.symbol == call.kernel)
        y, res = run_kernel(self.target, self.driver, k, call.x, call.weights, call.out_dim,
                            self.timeout, in_dim=call.in_dim)
        return Outcome(OK if y is not None else FAILED, y,
                       None if y is not None else driver_failure(res),
                       seconds=res.timings.get("total") or 0.0, extras={"result": res})


def driver_failure(res: Any) -> str:
    """A failed driver run in words: the target's reason and the driver's last stderr line
    (it names the kernel and what went wrong, e.g. a write outside the output block)."""
    lines = bytes(res.stderr or b"").decode("utf-8", "replace").strip().splitlines()
    return f"driver failed: {res.reason}" + (f": {lines[-1][:300]}" if lines else "")


class HostRunner:
    """A build of the C kernels for this machine (a shared library), each call in a child
    process through ctypes (harness.board.hostkernels): a crash is a `crash` outcome."""

    def __init__(self, library: Path, timeout: float = 120.0) -> None:
        self.library, self.timeout = library, timeout

    def run(self, call: KernelCall) -> Outcome:
        from harness.board.hostkernels import run_host_kernel

        return run_host_kernel(self.library, call.kernel, call.x, call.weights, call.in_dim,
                               call.out_dim, self.timeout)


class LocalRunner:
    """Host code: `fn(call)` returns the outputs. A HarnessError or OracleError from it (a
    library that cannot be built, a format the code has no model of) is "unavailable"."""

    def __init__(self, fn: Callable[[KernelCall], np.ndarray]) -> None:
        self.fn = fn

    def run(self, call: KernelCall) -> Outcome:
        from oracle import OracleError

        t0 = time.perf_counter()
        try:
            y = np.asarray(self.fn(call), np.float32)
        except (HarnessError, OracleError) as exc:
            return Outcome(Verdict.UNAVAILABLE, error=str(exc),
                           seconds=time.perf_counter() - t0)
        return Outcome(OK, y, seconds=time.perf_counter() - t0)


__all__ = ["BoardRunner", "CaseRunner", "HostRunner", "JvmRunner", "KernelCall", "LocalRunner"]
