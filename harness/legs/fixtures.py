"""The `fixtures` leg: generate the small golden set in the run's scratch directory and
verify every stored output (as `skoracle fixtures`)."""

from __future__ import annotations

import time

from harness import report
from harness.legs.base import AlwaysAvailable
from harness.legs.context import LegContext
from harness.report import plural


class FixturesLeg(AlwaysAvailable):
    name = "fixtures"
    title = "Golden fixtures: generate the small set, verify every stored output"

    def run(self, ctx: LegContext, out: report.Leg) -> None:
        from harness.golden.generate import generate_set
        from harness.golden.verify import verify_set

        target = ctx.work / "fixtures"
        ctx.step("fixtures: generating the small set")
        t0 = time.perf_counter()
        manifest = generate_set(target, seed=ctx.options.seed, set_name="small",
                                progress=lambda s: ctx.step(f"fixtures: {s}"))
        gen_s = time.perf_counter() - t0
        ctx.step("fixtures: verifying")
        rep = verify_set(target)
        by_file: dict[str, list] = {}
        for r in rep.rows:
            by_file.setdefault(r.file, []).append(r)
        for name, rs in sorted(by_file.items()):
            bad = [r for r in rs if r.status != 0]
            ulps = [r.max_ulp for r in rs if getattr(r, "max_ulp", None) is not None]
            refusal = all(r.check == "refusal" for r in rs)  # a recorded OracleError
            out.add(name, "FAIL" if bad else ("pass" if refusal else "bit-exact"),
                    max(ulps) if ulps else None, None,
                    "; ".join(f"{r.check}: {r.detail}" for r in bad[:3]) or
                    ("refused as recorded" if refusal else plural(len(rs), "check")))
        passed = sum(r.status == 0 for r in rep.rows)
        out.summary = (f"{len(manifest.get('files', []))} files generated in {gen_s:.1f}s and "
                       f"verified: {passed}/{len(rep.rows)} checks pass, every stored output "
                       "recomputed (a scratch set, removed with the run; "
                       "`skoracle fixtures --out DIR` writes one to keep)")
