"""The shape of a leg of `skoracle run`: a name, a title, whether a flag of its own asks
for it, what input it lacks on this machine (if any), and `run`, which fills the report's
section. The driver (harness.run) applies the one availability rule to every leg alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from harness import report
from harness.legs.context import LegContext, RunOptions


@dataclass(frozen=True)
class Missing:
    """An input a leg cannot run without: its report row names `case`, and `reason` says
    what to pass (the leg's summary, and the error line when the user asked for it)."""

    case: str
    reason: str


class Leg(Protocol):
    """One leg: `missing` and `asked_by_flag` read only the options (no work is done);
    `run` is called only when nothing is missing."""

    name: str
    title: str

    def asked_by_flag(self, options: RunOptions) -> bool:
        """Whether one of this leg's own options asks for it (like naming it in --only)."""
        ...

    def missing(self, options: RunOptions) -> Missing | None:
        """What this leg lacks to run at all, or None when it can run."""
        ...

    def run(self, ctx: LegContext, out: report.Leg) -> None:
        """Run the leg, adding its rows, summary and plot data to `out`."""
        ...


class AlwaysAvailable:
    """A leg that needs nothing from the user (its own options only refine it)."""

    name: str
    title: str

    def asked_by_flag(self, options: RunOptions) -> bool:
        return False

    def missing(self, options: RunOptions) -> Missing | None:
        return None
