"""Kernel parity spread over several boards (every free board of a labgrid pool).

The cases are planned in one order (`plan_cases`), each case's inputs drawn from (seed,
kernel, shape) alone, exactly as a one-board run draws them; each board takes the next
case when it is done with its last (one thread per board, each with its own SSH session
and runner), and the merged result lists the cases in that order, each naming the board
that ran it. Judging is the one judge
of harness.board.parity, whichever board ran the case.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.board.parity import (
    DEFAULT_SHAPES,
    KernelCase,
    KernelParity,
    kernel_case,
    plan_cases,
    start_parity,
)
from harness.board.profile import BoardProfile
from harness.board.session import BoardSession
from harness.parity.runner import BoardRunner


def board_label(session: BoardSession) -> str:
    """The board's name in a case row: its place or profile name, else user@host:port."""
    return session.profile.label


@contextlib.contextmanager
def board_sessions(profiles: Sequence[BoardProfile], trust_new: bool = False,
                   log: Callable[[str], None] | None = None) -> Iterator[list[BoardSession]]:
    """A connected session on each board for the block (connected at once, in parallel)."""
    sessions = [BoardSession(p, trust_new=trust_new, log=log) for p in profiles]
    with contextlib.ExitStack() as stack:
        for s in sessions:
            stack.callback(s.close)
        if len(sessions) > 1:
            with ThreadPoolExecutor(len(sessions)) as pool:
                for fut in [pool.submit(s.connect) for s in sessions]:
                    fut.result()  # the first failure is raised, every session closed
        else:
            for s in sessions:
                s.connect()
        yield sessions


def kernel_parity_spread(
    sessions: Sequence[BoardSession],
    archive: Path,
    formats: Sequence[str] | None = None,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    seed: int = 0,
    timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
    fixture: bool | None = None,
) -> KernelParity:
    """`harness.board.parity.kernel_parity` over every session at once; with more than one,
    each case names its board and the result the boards (`KernelParity.boards`)."""
    driver, result = start_parity(archive, formats, fixture)
    labels = [board_label(s) for s in sessions]
    if len(sessions) > 1:
        result.boards = labels
    queue = _CaseQueue(plan_cases(result.inventory, shapes, result.skipped), seed, progress,
                       name_boards=len(sessions) > 1)
    runners = [(BoardRunner(s, driver, timeout), label) for s, label in zip(sessions, labels,
                                                                              strict=True)]
    if len(runners) == 1:
        queue.work(*runners[0])
    else:
        _run_threads(queue, runners)
    if queue.errors:
        raise queue.errors[0]
    result.cases = queue.in_plan_order()
    return result


class _CaseQueue:
    """The planned cases, handed out in plan order to whichever board is free; the done
    cases by plan index; the first failure of a board (the others stop after theirs)."""

    def __init__(self, plan: Iterator, seed: int, progress: Callable[[str], None] | None,
                 name_boards: bool) -> None:
        self.plan = enumerate(plan)
        self.seed = seed
        self.progress = progress
        self.name_boards = name_boards
        self.done: dict[int, KernelCase] = {}
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def work(self, runner: BoardRunner, label: str) -> None:
        """Run cases on one board until the plan is empty or a board failed."""
        while not self.errors:
            with self.lock:
                nxt = next(self.plan, None)
            if nxt is None:
                return
            index, planned = nxt
            try:
                case = kernel_case(runner, planned.kernel, planned.shape, self.seed)
            except BaseException as exc:  # the board failed: the others stop, it is raised
                self.errors.append(exc)
                return
            if self.name_boards:
                case.board = label
            with self.lock:
                self.done[index] = case
                if self.progress:
                    self.progress(case.row())

    def in_plan_order(self) -> list[KernelCase]:
        return [self.done[i] for i in sorted(self.done)]


def _run_threads(queue: _CaseQueue, runners: list[tuple[BoardRunner, str]]) -> None:
    """One thread per board over the queue; a Ctrl-C here stops each after its case."""
    threads = [threading.Thread(target=queue.work, args=(runner, label), name=f"board {label}",
                                daemon=True) for runner, label in runners]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException as exc:
        queue.errors.append(exc)
        raise
