"""The `oracle` leg: every packed format's quantize bytes and dequantize bits against
ggml's C code (as `skoracle selfcheck`)."""

from __future__ import annotations

from harness import report
from harness.legs.base import AlwaysAvailable
from harness.legs.context import LegContext


class OracleLeg(AlwaysAvailable):
    name = "oracle"
    title = "Oracle vs ggml's C reference (quantize bytes, dequantize bits)"

    def run(self, ctx: LegContext, out: report.Leg) -> None:
        from harness.ggml.cref import CRef
        from harness.selfcheck import check_format, sample_cases
        from oracle import BLOCK_TYPES

        ctx.step("oracle: building/loading ggml's C library")
        cref = CRef.load()
        cases = sample_cases(ctx.options.seed)
        for qt in BLOCK_TYPES:
            ctx.step(f"oracle: {qt} ({len(cases)} cases)")
            r = check_format(qt, cases, cref)
            bad = r.quantize_mismatch + r.dequantize_mismatch
            out.add(f"{qt} quantize+dequantize, {r.cases} cases",
                    "FAIL" if bad else "bit-exact", 0 if not bad else None, r.seconds,
                    f"mismatching cases: {', '.join(bad)}" if bad else
                    f"max |err|/max|x| {r.max_abs_err:.2e}")
        out.summary = f"{len(BLOCK_TYPES)} formats x {len(cases)} cases against ggml's C code"
