"""The host-side parity cases of `run`'s kernels leg, through `LocalRunner` and the one judge:
kernels_ref's ggml semantics against ggml's C dot products, the skainet_neon order against
the project's fixture C kernel (under qemu-aarch64), the skainet_x86 order against the
project's host fixture (x86-64), and every kernels_ref variant against the exact result and
its rigorous bound."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.parity.judge import OK, Expectation, Judgement, judge
from harness.parity.runner import KernelCall, LocalRunner
from harness.parity.verdict import Verdict
from harness.report import plural

OUT_DIM, BATCH = 96, 2
FIXTURE_NOTE = ("fixtures/board/kernels, SKaiNET's flags, under qemu-aarch64 (the project's "
                "kernel, not SKaiNET's)")
HOST_FIXTURE_NOTE = ("fixtures/host, SKaiNET's x86 flags, this host's gcc (the project's "
                     "kernel, not SKaiNET's)")
NOT_JUDGED_WHY = ("bound >= 2|y| on {blind} of {n} outputs, so 'within bound' would pass a "
                  "sign flip; this order is modelled: judged bit-exactly against C kernels "
                  "instead (the 'vs C' rows; SKaiNET's own: `board kernel-parity`)")


@dataclass
class Row:
    """One report row: case, verdict, max ulp, seconds, detail."""

    case: str
    verdict: Verdict
    max_ulp: int | None = None
    seconds: float | None = None
    detail: str = ""


@dataclass
class KernelsCheck:
    """The rows, the semantics x format matrix cells and the ulp samples of the plot."""

    rows: list[Row] = field(default_factory=list)
    cells: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[int]] = field(default_factory=dict)


def _differ(j: Judgement) -> str:
    return f"{plural(j.mismatches, 'output')} differ"


def _vs_ggml_c(out: KernelsCheck, call: KernelCall, qt: str, cref: object) -> None:
    """kernels_ref's ggml semantics (roundf) must equal ggml's C mul_mat bit for bit."""
    from kernels_ref import matmul_wt

    t0 = time.perf_counter()
    c = LocalRunner(lambda k: np.stack([cref.matvec(qt, k.weights, xi) for xi in k.x])).run(call)
    if c.status != OK:
        from harness.errors import HarnessError

        raise HarnessError(str(c.error))
    ours = matmul_wt(call.x, call.weights, qt, call.out_dim, call.in_dim, semantics="ggml",
                     rounding="roundf")
    j = judge(c, Expectation([("ggml roundf", ours)], binding=True))
    ok = j.verdict == Verdict.BIT_EXACT
    out.rows.append(Row(f"{qt} ggml (roundf) vs ggml C mul_mat", j.verdict, j.max_ulp,
                        time.perf_counter() - t0, "" if ok else _differ(j)))
    out.cells[f"ggml.roundf vs C|{qt}"] = j.verdict


def _vs_fixture_c(out: KernelsCheck, call: KernelCall, qt: str) -> None:
    """The skainet_neon order must equal a compiled C kernel written in it bit for bit (the
    project's fixture, under qemu-aarch64); unavailable where it cannot run."""
    from harness.board.parity import fixture_neon_outputs
    from kernels_ref import matmul_wt

    t0 = time.perf_counter()
    c = LocalRunner(lambda k: fixture_neon_outputs(k.x, k.weights, qt, k.out_dim)).run(call)
    case = f"{qt} skainet_neon.fused vs fixture C kernel"
    if c.status != OK:
        out.rows.append(Row(case, Verdict.UNAVAILABLE, detail=str(c.error)))
        return
    neon = matmul_wt(call.x, call.weights, qt, call.out_dim, call.in_dim,
                     semantics="skainet_neon")
    _model_row(out, case, c, ("skainet_neon.fused", neon), FIXTURE_NOTE, t0, qt)


def _vs_host_fixture(out: KernelsCheck, call: KernelCall, qt: str, lib: Path | str) -> None:
    """The skainet_x86 order must equal the project's host fixture (fixtures/host, built
    here with SKaiNET's x86 flags, run in a child) bit for bit; `lib` is the library, or
    why there is none. Only the formats the fixture has (HOST_FIXTURE_FORMATS: Q8_0, Q4_0,
    Q4_K) get a row."""
    from harness.board.hostkernels import HOST_FIXTURE_FORMATS, run_host_kernel
    from harness.board.parity import KERNEL_SYMBOLS, packed_for
    from kernels_ref import matmul_wt

    if qt not in HOST_FIXTURE_FORMATS:
        return
    case = f"{qt} skainet_x86 vs host fixture C kernel"
    if isinstance(lib, str):
        out.rows.append(Row(case, Verdict.UNAVAILABLE, detail=lib))
        return
    k = next(k for k in KERNEL_SYMBOLS if k.qtype == qt and k.kernel_order == "feed")
    t0 = time.perf_counter()
    c = run_host_kernel(lib, k.symbol, call.x, packed_for(k, call.weights), call.in_dim,
                        call.out_dim)
    x86 = matmul_wt(call.x, call.weights, qt, call.out_dim, call.in_dim,
                    semantics="skainet_x86")
    _model_row(out, case, c, ("skainet_x86", x86), HOST_FIXTURE_NOTE, t0, qt)


def _model_row(out: KernelsCheck, case: str, c: object, model: tuple[str, object], note: str,
               t0: float, qt: str) -> None:
    """A fixture C kernel's outcome judged against one binding order model: its row (how
    it differs when it does, then `note`) and its heat-map cell."""
    j = judge(c, Expectation([model], binding=True))
    out.rows.append(Row(case, j.verdict, j.max_ulp, time.perf_counter() - t0,
                        ("" if j.verdict == Verdict.BIT_EXACT else f"{_differ(j)}; ") + note))
    out.cells[f"{model[0]} vs C|{qt}"] = j.verdict


@contextlib.contextmanager
def host_fixture() -> object:
    """The host fixture library built for this run, or why there is none (a string)."""
    from harness.board.hostkernels import fixture_host_library
    from harness.errors import HarnessError

    if platform.machine() != "x86_64":
        yield f"the host is {platform.machine()}, the fixture models an x86-64 build"
        return
    try:
        with fixture_host_library() as lib:
            yield lib
    except HarnessError as exc:
        yield str(exc)


def _variant(out: KernelsCheck, call: KernelCall, qt: str, v: object,
             exact: np.ndarray) -> None:
    """One kernels_ref variant against the exact result and its rigorous bound."""
    from kernels_ref import error_bound, matmul_wt
    from kernels_ref.compare import sign_blind, ulp_distance
    from kernels_ref.matmul import semantics_obj

    opts = dict(v.opts)
    t0 = time.perf_counter()
    res = LocalRunner(lambda k: matmul_wt(k.x, k.weights, qt, k.out_dim, k.in_dim,
                                          semantics=v.semantics, **opts)).run(call)
    if res.status != OK:  # no model of this format in that semantics
        out.cells[f"{v.id}|{qt}"] = Verdict.UNAVAILABLE
        return
    bound = error_bound(call.x, call.weights, qt, call.out_dim, call.in_dim,
                        semantics=v.semantics, **opts)
    # quantized activations widen the bound past many outputs (a sign flip would pass
    # there): the bound is no verdict for these modelled orders
    blind = qt in semantics_obj(v.semantics, **opts).quantizes_activations
    j = judge(res, Expectation(exact=exact, bound=bound, blind=blind))
    out.samples.setdefault(v.semantics, []).extend(
        int(a) for a in ulp_distance(res.y, exact).ravel())
    sizes = (f"{j.scale_ulps:.3g} ulp at max|y|; error/bound {j.bound_used:.3g}; "
             f"bound/max|y| {j.tightness:.3g}")
    why = {Verdict.FAIL: "OUTSIDE the rigorous error bound",
           Verdict.NOT_JUDGED: NOT_JUDGED_WHY.format(blind=sign_blind(bound, exact),
                                                     n=res.y.size)}.get(j.verdict,
                                                                        "inside error_bound")
    out.cells[f"{v.id}|{qt}"] = j.verdict
    if v.semantics in ("skainet_neon", "skainet_scalar") or j.verdict == Verdict.FAIL:
        # a not-judged row's ulp distance to exact is no measure of anything
        out.rows.append(Row(f"{qt} {v.id} vs exact", j.verdict,
                            None if j.verdict == Verdict.NOT_JUDGED else j.max_ulp,
                            time.perf_counter() - t0, f"{why}; {sizes}"))


def check_kernels(seed: int, step: Callable[[str], None] = lambda s: None) -> KernelsCheck:
    """Every packed format: the C comparisons and every kernels_ref variant (the seed draws
    the weights and activations, format after format)."""
    from harness.ggml.cref import CRef
    from oracle import PACKED_TYPES

    cref = CRef.load()
    rng = np.random.default_rng(seed)
    out = KernelsCheck()
    with host_fixture() as lib:
        for qt in PACKED_TYPES:
            _check_format(out, qt, rng, cref, lib, step)
    return out


def _check_format(out: KernelsCheck, qt: str, rng: np.random.Generator, cref: object,
                  lib: Path | str, step: Callable[[str], None]) -> None:
    """One packed format: its C comparisons and every kernels_ref variant."""
    from harness.golden.compute import variants
    from kernels_ref import matmul_wt
    from oracle import qtype, quantize

    in_dim = 2 * qtype(qt).block if qtype(qt).kquant else 640  # 640: FunctionGemma n_embd
    w = quantize(qt, rng.standard_normal((OUT_DIM, in_dim)).astype(np.float32))
    x = rng.standard_normal((BATCH, in_dim)).astype(np.float32)
    step(f"kernels: {qt} [{OUT_DIM} x {in_dim}], batch {BATCH}")
    call = KernelCall(qt, x, w, OUT_DIM, in_dim)
    exact = matmul_wt(x, w, qt, OUT_DIM, in_dim, semantics="exact")
    _vs_ggml_c(out, call, qt, cref)
    _vs_fixture_c(out, call, qt)
    _vs_host_fixture(out, call, qt, lib)
    for v in variants():
        if v.id != "exact":
            _variant(out, call, qt, v, exact)


__all__ = ["BATCH", "OUT_DIM", "KernelsCheck", "check_kernels"]
