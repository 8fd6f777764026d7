"""Running programs on the SL2610 board (or the board-in-a-box) and comparing what they do.

    from harness.board import BoardSim, BoardSession, fixture_program
    with BoardSim() as sim, BoardSession(sim.profile) as board:
        result = board.run(fixture_program("roundtrip"), args=["in", "out"],
                           inputs={"in": b"..."}, outputs=["out"], timeout=30)

`open_board` / `open_session` (harness.board.source) choose the board once: a profile
file, `user@host[:port]`, or the board-in-a-box.
`Target` is the one interface (run a program with input files; outputs, exit reason,
timings, peak RSS); `BoardSession` implements it over SSH, `LocalTarget` on this machine.
"""

from harness.board.build import BOARD_MARCH, cross_compile, fixture_program
from harness.board.parity import compare_decode, kernel_parity, read_token_list
from harness.board.profile import BoardProfile, load_profile, resolve_profile
from harness.board.session import BoardSession
from harness.board.sim import BoardSim
from harness.board.source import BoardSpec, open_board, open_session
from harness.board.target import LocalTarget, RunResult, Target, exit_reason

__all__ = [
    "BOARD_MARCH", "BoardProfile", "BoardSession", "BoardSim", "BoardSpec", "LocalTarget",
    "RunResult", "Target", "compare_decode", "cross_compile", "exit_reason", "fixture_program",
    "kernel_parity", "load_profile", "open_board", "open_session", "read_token_list",
    "resolve_profile",
]
