"""Board sources: where a board comes from, chosen in one place for `run`, `board ...` and
the pytest plugin.

A source is a profile file, a `user@host[:port]` spec (or both: the spec overrides the
file), a labgrid place or pool (`--lg-coordinator` with `--lg-place`/`--lg-pool`,
harness.board.lab: reserved, acquired, released at the end of the block; the profile file,
if any, gives the key and known_hosts policy), or, when none is given and the caller allows
it, the board-in-a-box (`harness.board.sim.BoardSim`), started for the block and stopped at
its end. Each opens as a context-managed `BoardProfile`; `open_boards` opens every free
board of a labgrid pool at once (for spreading cases over them).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness.board.lab import ENV_COORDINATOR, LabRequest, lab_request, lease
from harness.board.profile import BoardProfile, resolve_profile
from harness.board.session import BoardSession
from harness.errors import HarnessError

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
    lab: LabRequest | None = None

    def __post_init__(self) -> None:
        if self.lab and self.board:
            raise HarnessError("--board and --lg-place/--lg-pool: the labgrid place gives the "
                               "address; give one of them")

    @property
    def real(self) -> bool:
        """A real board was named (profile file, spec or labgrid place), not the
        board-in-a-box."""
        return bool(self.profile_file or self.board or self.lab)

    def where(self, profile: BoardProfile) -> str:
        """The board in a few words, for progress lines and reports."""
        if self.lab:
            return f"labgrid place {profile.name} ({profile.host}:{profile.port})"
        return f"board {profile.host}" if self.real else IN_A_BOX


@contextmanager
def open_boards(spec: BoardSpec, on_start: Callable[[], None] | None = None,
                log: Callable[[str], None] | None = None,
                spread: bool = True) -> Iterator[list[BoardProfile]]:
    """Every board `spec` names for the block: with a labgrid pool (and `spread`), each
    place of it that is free (at least one, queued for when none is); else the one board of
    `open_board`."""
    if spec.lab and spec.lab.pool and spread:
        with lease(spec.lab, count=0, log=log) as places:
            yield [p.profile(spec.profile_file, spec.overrides) for p in places]
        return
    with open_board(spec, on_start, log) as profile:
        yield [profile]


@contextmanager
def open_board(spec: BoardSpec, on_start: Callable[[], None] | None = None,
               log: Callable[[str], None] | None = None) -> Iterator[BoardProfile]:
    """The profile of the board `spec` names, for the duration of the block; a labgrid
    place is reserved and acquired (queued behind other users; `log` hears about the
    wait) and released after it; a board-in-a-box is started (after `on_start`) and stopped
    around it."""
    if spec.lab:
        with lease(spec.lab, log=log) as places:
            yield places[0].profile(spec.profile_file, spec.overrides)
        return
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
    with open_board(spec, on_start, log) as profile, \
            BoardSession(profile, trust_new=trust_new, log=log) as session:
        yield session


def add_lab_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--lg-coordinator, --lg-place, --lg-pool: a board from a labgrid farm (`run`, `board
    ...`; the pytest plugin has the same options)."""
    parser.add_argument("--lg-coordinator", metavar="HOST:PORT",
                        help=f"labgrid coordinator of a board farm (default: ${ENV_COORDINATOR})")
    parser.add_argument("--lg-place", metavar="NAME",
                        help="use this labgrid place (exact name), reserved and acquired for "
                             "the run, queued behind other users (default: none)")
    parser.add_argument("--lg-pool", metavar="TAG=VALUE",
                        help="use a free place tagged TAG=VALUE (kernel parity: every free "
                             "one, cases spread over them) (default: none)")


def lab_from_args(args: argparse.Namespace) -> LabRequest | None:
    """The labgrid request of `add_lab_options` (None without --lg-place/--lg-pool)."""
    return lab_request(getattr(args, "lg_coordinator", None), getattr(args, "lg_place", None),
                       getattr(args, "lg_pool", None))
