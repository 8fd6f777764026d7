"""The `board` leg: the SSH runner on a board (the board-in-a-box unless --board/--profile):
a round trip with hash checks, the SIGILL mapping, decode parity of the voicecc-format
stand-in, and kernel parity against `--kernels-archive` (as `skoracle board ...`)."""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness import report
from harness.legs.base import AlwaysAvailable
from harness.legs.context import LegContext

if TYPE_CHECKING:
    from harness.board.profile import BoardProfile
    from harness.board.session import BoardSession


class BoardLeg(AlwaysAvailable):
    name = "board"
    title = "Board run over SSH (board-in-a-box unless --board/--profile)"

    def run(self, ctx: LegContext, out: report.Leg) -> None:
        from harness.board.session import BoardSession
        from harness.board.source import open_boards

        spec = ctx.options.board.spec
        with contextlib.ExitStack() as stack:
            profs = stack.enter_context(open_boards(spec, on_start=lambda: ctx.step(
                "board: starting the board-in-a-box (dropbear + busybox + qemu)"),
                log=lambda m: ctx.step(f"board: {m}"),
                spread=bool(ctx.options.board.kernels_archive)))
            prof = profs[0]  # the runner checks run here; kernel parity on every board
            where = spec.where(prof)
            ctx.step(f"board: connecting to {where}")
            t0 = time.perf_counter()
            board = stack.enter_context(BoardSession(prof))
            out.add("connect, host key verified", "pass", seconds=time.perf_counter() - t0,
                    detail=where)
            self._round_trip(ctx, out, board)
            self._sigill(ctx, out, board)
            self._decode_parity(ctx, out, board, where, prof)
            self._kernel_parity(ctx, out, board, profs[1:], stack)
        failed = [r.case for r in out.rows if r.verdict in ("FAIL", "error")]
        out.summary = (f"{where}: runner, SIGILL mapping and decode parity"
                       + (f"; {len(failed)} FAILED: {', '.join(failed[:6])}"
                          + (", ..." if len(failed) > 6 else "") if failed else ""))

    @staticmethod
    def _round_trip(ctx: LegContext, out: report.Leg, board: BoardSession) -> None:
        from harness.board.build import fixture_program

        payload = np.random.default_rng(ctx.options.seed).integers(
            0, 256, 1 << 20, np.uint8).tobytes()
        ctx.step("board: push / run / fetch round trip (1 MiB)")
        res = board.run(fixture_program("roundtrip"), args=["in.bin", "out.bin"],
                        inputs={"in.bin": payload}, outputs=["out.bin"], timeout=120)
        want = bytes(b ^ 0x5A for b in payload)
        same = res.ok and hashlib.sha256(res.outputs.get("out.bin", b"")).digest() == \
            hashlib.sha256(want).digest()
        out.add("push / run / fetch, hashes verified", "pass" if same else "FAIL", None,
                res.timings.get("total"), res.summary())

    @staticmethod
    def _sigill(ctx: LegContext, out: report.Leg, board: BoardSession) -> None:
        from harness.board.build import fixture_program
        from harness.board.target import ILLEGAL_INSTRUCTION

        ctx.step("board: a build with i8mm must die with SIGILL on the A55 profile")
        res = board.run(fixture_program("i8mm", march="armv8.2-a+i8mm"), timeout=120)
        out.add("i8mm build -> SIGILL (negative control)",
                "pass" if res.reason == ILLEGAL_INSTRUCTION else "FAIL", None,
                res.timings.get("total"), res.reason)

    @staticmethod
    def _decode_parity(ctx: LegContext, out: report.Leg, board: BoardSession,
                       where: str, prof: BoardProfile) -> None:
        from harness.board.build import fixture_program
        from harness.board.decode import voicecc_decode_parity
        from harness.board.facts import emulated_arch  # a farm's board may be qemu too
        from harness.reference.cli import board_reference_ids

        ctx.step("board: decode parity (voicecc-format stand-in fed the reference's ids)")
        ids, ref_note = board_reference_ids(ctx.work)
        dp, res = voicecc_decode_parity(board, fixture_program("voicecc"), ids,
                                        emulated=not ctx.options.board.spec.real
                                        or emulated_arch(prof) is not None)
        out.add("decode parity pipeline (voicecc-format stand-in)",
                "pass" if dp.ids_match and res.ok else "FAIL", None, res.timings.get("total"),
                dp.report().replace("\n", "; ") + "; " + ref_note)
        if dp.timing.step_ms:
            out.data["decode_steps"] = {"step_ms": dp.timing.step_ms,
                                        "source": dp.timing.step_source,
                                        "title": "fixtures/board/voicecc.c (stand-in) on "
                                                 + where}

    @staticmethod
    def _kernel_parity(ctx: LegContext, out: report.Leg, board: BoardSession,
                       more_boards: list[BoardProfile], stack: contextlib.ExitStack) -> None:
        from harness.board.spread import board_sessions, kernel_parity_spread

        archive: Path | None = ctx.options.board.kernels_archive
        if not archive:
            out.add("kernel parity vs the real libskainet_kernels.a", "unavailable",
                    detail="the linuxarm64 klib is not served by this machine's Maven Central; "
                    "pass --kernels-archive PATH")
            return
        ctx.step("board: kernel parity against the real SKaiNET kernels")
        more = stack.enter_context(board_sessions(more_boards))
        kp = kernel_parity_spread([board, *more], archive, seed=ctx.options.seed,
                                  progress=lambda s: ctx.step(f"board: {s}"))
        for case in kp.cases:  # verdicts from the one rule, harness.board.parity
            o, i, b = case.shape
            out.add(f"{case.symbol} {case.qtype} {o}x{i} b{b}", case.verdict,
                    case.max_ulp, None, case.measure()
                    + (f"; on {case.board}" if case.board else ""))
        out.add("kernel parity: inventory and rule", "pass" if kp.ok else "FAIL",
                detail=" | ".join([kp.summary(), *kp.notes()]))
