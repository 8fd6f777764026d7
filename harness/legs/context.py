"""What a leg of `skoracle run` reads: typed options built once from the command line, and
the run's scratch directory and progress line. No leg sees the argparse namespace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.board.source import BoardSpec
from harness.footprint import Budget


@dataclass(frozen=True)
class JvmOptions:
    """The JVM leg's inputs: the user's SKaiNET build (classpath, already resolved to
    absolute entries), the JDK to run it on and the lane widths to judge it at."""

    classpath: str | None
    jdk: str | None
    lanes: tuple[str, ...]
    props: tuple[str, ...] = ()  # --jvm-prop: system properties for every JVM


@dataclass(frozen=True)
class BoardOptions:
    """The board leg's inputs: which board, and the kernel archive for kernel parity."""

    spec: BoardSpec
    kernels_archive: Path | None


@dataclass(frozen=True)
class GateOptions:
    """The gate leg's inputs: the user's artifacts (klib, jar, .a, .so, .kexe)."""

    klibs: tuple[Path, ...]


@dataclass(frozen=True)
class FootprintOptions:
    """The footprint leg's inputs: the model (None: a generated FunctionGemma-shaped GGUF)
    and the memory budget, with whether it is the board's RAM (the title says so)."""

    model: Path | None
    budget: Budget
    board_budget: bool


@dataclass(frozen=True)
class RunOptions:
    """Everything `run` was told, checked and with absolute paths."""

    seed: int
    out: Path
    legs: tuple[str, ...]  # the legs to run, in order
    named: frozenset[str]  # legs the user named with --only
    json: bool
    jvm: JvmOptions
    board: BoardOptions
    gate: GateOptions
    footprint: FootprintOptions


@dataclass(frozen=True)
class LegContext:
    """What a running leg gets: the options, a scratch directory removed with the run, and
    `step(text)` to show what it is doing now."""

    options: RunOptions
    work: Path
    step: Callable[[str], None]
