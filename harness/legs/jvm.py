"""The `jvm` leg of `skoracle run`: the parity matrix of the kernels on `--classpath`,
one report row per case and the kernel x lanes/mode matrix for the HTML heat map. Without
`--classpath` the leg is missing its input (the user's SKaiNET build)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import report
from harness.errors import HarnessError
from harness.legs.base import Missing
from harness.legs.context import LegContext, RunOptions

if TYPE_CHECKING:
    from harness.jvm.parity import ParityRun

#: Why the leg cannot run without the user's build, and what to pass.
NO_BUILD = ("no SKaiNET build given: pass --classpath with the Gradle output of "
            "skainet-backend-cpu (its jvm jar or build/classes/kotlin/jvm/main) "
            "and skainet-backend-api, ':'-separated")


def _orders(run: ParityRun) -> str:
    """The probed reduction orders per configuration, e.g. "8 lanes pinned: sequential"."""
    parts = []
    for cr in run.configs:
        orders = sorted(set(cr.probes.values()))
        if orders:
            parts.append(f"{cr.info.get('lanes')} lanes {cr.jit}: {', '.join(orders)}")
    return "; ".join(parts) or "not probed"


class JvmLeg:
    name = "jvm"
    title = "SKaiNET on the JVM (JPype)"

    def asked_by_flag(self, options: RunOptions) -> bool:
        """`--classpath` asks for this leg, even without --only."""
        return options.jvm.classpath is not None

    def missing(self, options: RunOptions) -> Missing | None:
        return None if options.jvm.classpath else Missing("SKaiNET JVM parity", NO_BUILD)

    def run(self, ctx: LegContext, out: report.Leg) -> None:
        """The parity matrix of the kernels on the classpath, judged at the widths of
        `--lanes` (default the host's and the board's 4), into `out`."""
        from harness.jvm.discovery import inventory
        from harness.jvm.dispatch import dispatched_kernels
        from harness.jvm.jdk import find_jdk
        from harness.jvm.parity import ask_dispatch, run_matrix

        opts = ctx.options.jvm
        jdk = find_jdk(opts.jdk)
        cp = opts.classpath
        ctx.step(f"jvm: scanning {cp}")
        listed = inventory(cp)
        ctx.step("jvm: asking SKaiNET's KernelRegistry which kernel runs for each format")
        dispatch = ask_dispatch(jdk, cp, opts.props)
        kernels = dispatched_kernels(dispatch, listed)
        if not kernels:
            raise HarnessError(f"--classpath {cp}: no class with a static INSTANCE "
                               "and the packed matmul(float[],int,byte[],int,int,int,float[],int)")
        run = run_matrix(jdk, cp, kernels, lanes=list(opts.lanes), jit=("pinned", "warm"),
                         seed=ctx.options.seed, progress=lambda s: ctx.step(f"jvm: {s}"),
                         props=opts.props, dispatch=dispatch)
        fixtures = {k.short for k in kernels if k.cls.startswith("skoracle.fixture.")}
        _add_cases(out, run, fixtures)
        _add_not_run(out, [k for k in listed if not k.runnable])
        _add_summary(out, run, cp, len(kernels), bool(fixtures))
        if run.interrupted:
            raise KeyboardInterrupt  # the rows above stay in the (partial) report


def _add_cases(out: report.Leg, run: ParityRun, fixtures: set[str]) -> None:
    """One row per case, and the kernel x lanes/JIT-mode matrix of worst verdicts."""
    from harness.jvm.fixtures import LABEL as FIXTURE_LABEL
    from harness.parity.verdict import Verdict, report_verdict, worse

    cells: dict[str, str] = {}
    for c in run.cases:
        tag = f" [{FIXTURE_LABEL}]" if c.kernel in fixtures else ""
        label = f"{c.kernel}{tag} {c.fmt or '?'} {'x'.join(map(str, c.shape[:3]))} " \
                f"lanes={c.actual_lanes or c.lanes} {c.jit}"
        out.add(label, report_verdict(c.verdict), c.max_ulp, c.seconds,
                f"{c.verdict}: {c.detail}" if c.verdict != Verdict.BIT_EXACT else c.detail)
        key = f"{c.kernel}{' (fixture)' if tag else ''}|lanes={c.actual_lanes or c.lanes} {c.jit}"
        cells[key] = worse(cells[key], c.verdict) if key in cells else c.verdict
    rows = sorted({k.split("|")[0] for k in cells})
    cols = sorted({k.split("|")[1] for k in cells})
    out.data["jvm_matrix"] = {"title": "JVM kernel x lanes/JIT mode (worst case verdict)",
                              "rows": rows, "cols": cols, "cells": cells}


def _add_not_run(out: report.Leg, not_run: list) -> None:
    """One "unavailable" row per kernel class listed but not run, with the reason."""
    from harness.jvm.fixtures import LABEL as FIXTURE_LABEL
    from harness.parity.verdict import Verdict

    for k in not_run:
        tag = f" [{FIXTURE_LABEL}]" if k.cls.startswith("skoracle.fixture.") else ""
        out.add(f"{k.short}{tag} {k.kind}", Verdict.UNAVAILABLE, detail=f"not run: {k.reason}")


def _add_summary(out: report.Leg, run: ParityRun, cp: str, n_kernels: int,
                 fixtures: bool) -> None:
    """The run's settings in the report data, and the one-line summary naming failures."""
    from harness.jvm.parity import FAILING, drift_summary, failure_summary
    from harness.parity.verdict import CASE_PASSING, Verdict

    drift = drift_summary(run)
    killed = [f"{k} (lanes={cr.lanes} {cr.jit})" for cr in run.configs for k in cr.killed]
    probes = {f"lanes={cr.info.get('lanes')} {cr.jit}": cr.probes for cr in run.configs}
    d = run.dispatch
    for p in (d.providers if d else []):
        if not p.available:
            out.add(f"dispatch: provider {p.name} ({p.priority})", Verdict.UNAVAILABLE,
                    detail=f"registered but unavailable: {p.reason}")
    out.data["jvm_dispatch"] = d.lines() if d else []
    out.data["jvm"] = {"jdk": run.jdk, "classpath": cp, "widths": run.widths,
                       "probes": probes, "drift": drift, "killed": killed,
                       "starts": {f"{cr.lanes} {cr.jit}": cr.info for cr in run.configs}}
    judged = [c for c in run.cases if c.verdict in (*CASE_PASSING, *FAILING)]
    head = failure_summary(run) or (
        f"every judged case bit-exact or within bound ({len(judged)} of {len(run.cases)})")
    out.summary = "; ".join(p for p in (
        head,
        f"{n_kernels} kernels{' (project fixtures, not SKaiNET)' if fixtures else ''} "
        f"judged at {' and '.join(run.widths) or 'no lane width'} on {run.jdk}",
        f"probed order {_orders(run)}",
        ("SKaiNET dispatches " + "; ".join(c.describe() for c in d.choices if c.kernel))
        if d and not d.error else (f"dispatch not asked: {d.error}" if d else ""),
        "; ".join(drift),
        (f"killed {len(killed)} process(es) the code under test left running: "
         + ", ".join(killed)) if killed else "") if p)
