"""The `jvm` leg of `skoracle run`: the parity matrix of the kernels on `--classpath`,
one report row per case and the kernel x lanes/mode matrix for the HTML heat map."""

from __future__ import annotations

from typing import Any

from harness.errors import HarnessError
from harness.jvm.discovery import discover, resolve_classpath
from harness.jvm.fixtures import LABEL as FIXTURE_LABEL
from harness.jvm.jdk import find_jdk
from harness.jvm.parity import (
    DEFAULT_LANES,
    FAILING,
    ParityRun,
    drift_summary,
    failure_summary,
    parse_lanes,
    run_matrix,
)
from harness.parity.verdict import CASE_PASSING, Verdict, report_verdict, worse


def _orders(run: ParityRun) -> str:
    """The probed reduction orders per configuration, e.g. "8 lanes pinned: sequential"."""
    parts = []
    for cr in run.configs:
        orders = sorted(set(cr.probes.values()))
        if orders:
            parts.append(f"{cr.info.get('lanes')} lanes {cr.jit}: {', '.join(orders)}")
    return "; ".join(parts) or "not probed"


def run_leg(ctx: Any, out: Any) -> None:
    """Fill the report leg `out` (harness.report.Leg) from `ctx.args.classpath`, judged at
    the widths of `--lanes` (default the host's and the board's 4)."""
    args = ctx.args
    if not args.classpath:
        out.status = "unavailable"
        out.summary = ("no SKaiNET build given: pass --classpath with the Gradle output of "
                       "skainet-backend-cpu (its jvm jar or build/classes/kotlin/jvm/main) "
                       "and skainet-backend-api, ':'-separated")
        out.add("SKaiNET JVM parity", "unavailable", detail=out.summary)
        if "jvm" in ctx.explicit:
            raise HarnessError(out.summary)
        return
    lanes = parse_lanes(getattr(args, "lanes", None) or DEFAULT_LANES)
    jdk = find_jdk(getattr(args, "jdk", None))
    cp = resolve_classpath(args.classpath)
    ctx.step(f"jvm: scanning {cp}")
    kernels = discover(cp)
    if not kernels:
        raise HarnessError(f"--classpath {args.classpath}: no class with a static INSTANCE "
                           "and the packed matmul(float[],int,byte[],int,int,int,float[],int)")
    run = run_matrix(jdk, cp, kernels, lanes=lanes, jit=("pinned", "warm"),
                     seed=args.seed, progress=lambda s: ctx.step(f"jvm: {s}"))
    fixtures = {k.short for k in kernels if k.cls.startswith("skoracle.fixture.")}
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
    drift = drift_summary(run)
    killed = [f"{k} (lanes={cr.lanes} {cr.jit})" for cr in run.configs for k in cr.killed]
    probes = {f"lanes={cr.info.get('lanes')} {cr.jit}": cr.probes for cr in run.configs}
    out.data["jvm"] = {"jdk": run.jdk, "classpath": cp, "widths": run.widths,
                       "probes": probes, "drift": drift, "killed": killed,
                       "starts": {f"{cr.lanes} {cr.jit}": cr.info for cr in run.configs}}
    judged = [c for c in run.cases if c.verdict in (*CASE_PASSING, *FAILING)]
    head = failure_summary(run) or (
        f"every judged case bit-exact or within bound ({len(judged)} of {len(run.cases)})")
    out.summary = "; ".join(p for p in (
        head,
        f"{len(kernels)} kernels{' (project fixtures, not SKaiNET)' if fixtures else ''} "
        f"judged at {' and '.join(run.widths) or 'no lane width'} on {run.jdk}",
        f"probed order {_orders(run)}",
        "; ".join(drift),
        (f"killed {len(killed)} process(es) the code under test left running: "
         + ", ".join(killed)) if killed else "") if p)
    if run.interrupted:
        raise KeyboardInterrupt  # the rows above stay in the (partial) report
