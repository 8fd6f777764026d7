"""Board sources: where a board comes from, chosen in one place for `run`, `board ...` and
the pytest plugin.

A source is a profile file, a `user@host[:port]` spec (or both: the spec overrides the
file), or, when neither is given and the caller allows it, the board-in-a-box
(`harness.board.sim.BoardSim`), started for the block and stopped at its end. Each opens
as a context-managed `BoardProfile`; another kind of source (a lab's board place) is one
more branch of `open_board`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness.board.profile import BoardProfile, resolve_profile
from harness.board.session import BoardSession

IN_A_BOX = "board-in-a-box (qemu-aarch64 -cpu cortex-a76)"


@dataclass(frozen=True)
class BoardSpec:
    """What the user asked for: a profile file and/or a `user@host[:port]` spec, profile
    overrides from options, and whether no board at all means the board-in-a-box (else it
    is the "no board given" usage error)."""

    profile_file: str | None = None
    board: str | None = None
    overrides: Mapping[str, object] = field(default_factory=dict)
    in_a_box_when_unset: bool = True

    @property
    def real(self) -> bool:
        """A real board was named (profile file or spec), not the board-in-a-box."""
        return bool(self.profile_file or self.board)

    def where(self, profile: BoardProfile) -> str:
        """The board in a few words, for progress lines and reports."""
        return f"board {profile.host}" if self.real else IN_A_BOX


@contextmanager
def open_board(spec: BoardSpec,
               on_start: Callable[[], None] | None = None) -> Iterator[BoardProfile]:
    """The profile of the board `spec` names, for the duration of the block; a
    board-in-a-box is started (after `on_start`) and stopped around it."""
    if spec.real or not spec.in_a_box_when_unset:
        yield resolve_profile(spec.profile_file, spec.board, **spec.overrides)
        return
    from harness.board.sim import BoardSim

    if on_start is not None:
        on_start()
    with BoardSim() as sim:
        yield sim.profile


@contextmanager
def open_session(spec: BoardSpec, on_start: Callable[[], None] | None = None,
                 trust_new: bool = False,
                 log: Callable[[str], None] | None = None) -> Iterator[BoardSession]:
    """A connected `BoardSession` on the board `spec` names (see `open_board`)."""
    with open_board(spec, on_start) as profile, \
            BoardSession(profile, trust_new=trust_new, log=log) as session:
        yield session
