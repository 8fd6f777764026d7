"""The `gate` leg: the user's artifacts (`--klib`) and the programs the board leg pushes,
scanned against the Cortex-A55 profile (as `skoracle elf-check`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import report
from harness.legs.base import AlwaysAvailable
from harness.legs.context import LegContext

if TYPE_CHECKING:
    from harness.gate.profiles import CpuProfile


class GateLeg(AlwaysAvailable):
    name = "gate"
    title = "Binary gate: no instruction the Cortex-A55 lacks, expected symbols present"

    def run(self, ctx: LegContext, out: report.Leg) -> None:
        from harness.gate.profiles import profile

        a55 = profile("cortex-a55")
        self._user_artifacts(ctx, out, a55)
        self._board_programs(ctx, out, a55)
        out.summary = "cortex-a55 profile (no I8MM/BF16/SVE/SME) on the artifacts of this run"

    @staticmethod
    def _user_artifacts(ctx: LegContext, out: report.Leg, a55: CpuProfile) -> None:
        """One row per `--klib` artifact, or one `unavailable` row naming the option."""
        from harness.gate.check import check_artifact

        klibs = ctx.options.gate.klibs
        for path in klibs:
            ctx.step(f"gate: {path}")
            r = check_artifact(path, a55, symbols=("skainet_q8_0_matmul",))
            missing = [s for s, where in r.symbols.items() if where is None]
            out.add(f"{path.name} (cortex-a55)",
                    "error" if r.error else ("FAIL" if r.findings else "pass"), None,
                    r.seconds, r.error or "; ".join(f.message for f in r.findings[:3]) or
                    f"{r.counts.get('DotProd', 0)} dotprod instructions; symbols "
                    f"{'missing: ' + ', '.join(missing) if missing else 'all defined'}")
        if not klibs:
            out.add("SKaiNET linuxarm64 klib (sk.ainet.core:skainet-backend-native-cpu)",
                    "unavailable", detail="not served by this machine's Maven Central; pass "
                    "--klib PATH to gate a klib, jar, .a or .kexe")

    @staticmethod
    def _board_programs(ctx: LegContext, out: report.Leg, a55: CpuProfile) -> None:
        """What the board leg pushes must pass before any board cycle; an i8mm build is the
        negative control that must be flagged."""
        from harness.board.build import BOARD_MARCH, fixture_program
        from harness.gate.check import check_artifact
        from harness.gate.profiles import STATIC_GLIBC_DISPATCHED

        for name, march, expect_findings in (("voicecc", BOARD_MARCH, False),
                                             ("i8mm", "armv8.2-a+i8mm", True)):
            ctx.step(f"gate: building and scanning fixtures/board/{name}.c (-march={march})")
            prog = fixture_program(name, march=march)
            r = check_artifact(prog, a55, allow=STATIC_GLIBC_DISPATCHED)
            feats = sorted({f for fd in r.findings for f in fd.features})
            ok = bool(r.findings) == expect_findings and not r.error
            what = (f"flagged {', '.join(feats)} at "
                    f"{', '.join(sorted({fd.function or '?' for fd in r.findings})[:3])}"
                    if r.findings else "clean")
            out.add(f"{name} -march={march}{' (negative control)' if expect_findings else ''}",
                    "pass" if ok else "FAIL", None, r.seconds,
                    f"{what}; {r.counts.get('DotProd', 0)} dotprod; static glibc's SVE ifunc "
                    f"variants allowed")
