"""The `kernels` leg: the reference kernels' ggml semantics against ggml's C dot products,
and every SKaiNET semantics against the exact result and its rigorous bound."""

from __future__ import annotations

from harness import report
from harness.legs.base import AlwaysAvailable
from harness.legs.context import LegContext


class KernelsLeg(AlwaysAvailable):
    name = "kernels"
    title = ("Reference kernels: ggml semantics vs ggml's C dot products; SKaiNET "
             "semantics vs the exact result and its rigorous bound")

    def run(self, ctx: LegContext, out: report.Leg) -> None:
        from harness.golden.compute import variants
        from harness.parity.local import check_kernels
        from oracle import PACKED_TYPES

        check = check_kernels(ctx.options.seed, ctx.step)
        for r in check.rows:
            out.add(r.case, r.verdict, r.max_ulp, r.seconds, r.detail)
        rows = [v.id for v in variants() if v.id != "exact"]
        out.data["ulp_samples"] = check.samples
        out.data["matrix"] = {"title": "kernels_ref semantics x format (vs exact / vs ggml C)",
                              "rows": ["ggml.roundf vs C", "skainet_neon.fused vs C",
                                       "skainet_x86 vs C", *rows],
                              "cols": list(PACKED_TYPES),
                              "cells": check.cells}
        out.summary = (f"{len(PACKED_TYPES)} formats: ggml semantics against the C library, "
                       f"{len(rows)} kernel variants against exact and error_bound")
