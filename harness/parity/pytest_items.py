"""Parity cases as pytest items (`pytest --skainet-parity`): one item per JVM kernel x shape
x lanes x JIT mode (`--skainet-classpath`), per native kernel x shape on a board
(`--kernels-archive`), per decode (`--expect-from MODEL --tokens IDS`).

Each item runs its case through the same code as the CLI and `skoracle run`
(`harness.jvm.parity.ConfigSession.case`, `harness.board.parity.kernel_case`,
`harness.board.decode.decode_run`), judged by the one judge, and its outcome is the verdict
(`harness.parity.verdict.item_outcome`): so `-k Q8_0`, `-x`, `--lf`, `--junitxml` and
pytest-xdist's `-n` work on parity cases as on any test. Every process (each xdist worker)
owns its JVM workers (one per lanes x JIT mode, started on its first case) and its board
session (opened on its first board case), all stopped when its session ends.

Items on the project's own fixture kernels (fixtures/jvm, fixtures/board) sit under
`fixture-jvm` / `fixture-board` and carry the fixture label in every message: they test
the plumbing and are never SKaiNET results.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _pytest._code.code import ReprFileLocation, TerminalRepr

from harness.errors import HarnessError
from harness.parity.verdict import (
    ITEM_FAILED,
    ITEM_PASSED,
    ITEM_XFAILED,
    Verdict,
    item_outcome,
)

ROOT_NAME = "skainet-parity"
RESOURCES = pytest.StashKey["ParityResources"]()


class ParityFailure(Exception):
    """A case whose verdict fails: its message is the whole report (no traceback)."""


@dataclass(frozen=True)
class CaseResult:
    """What one item's case came to: the verdict, its detail, and whether an unavailable
    verdict was asked for by the user (then it fails instead of skipping)."""

    verdict: Verdict
    detail: str = ""
    asked: bool = False


# ------------------------------------------------------------------------------ options

@dataclass
class ParityOptions:
    """The `--skainet-*` / `--kernels-archive` / `--expect-from` options, read once."""

    classpath: str | None = None
    fixtures: bool = False
    archive: str | None = None
    lanes: list[str] = field(default_factory=list)
    lanes_asked: bool = False
    jit: list[str] = field(default_factory=list)
    jvm_shapes: list[tuple[int, int, int, int]] = field(default_factory=list)
    board_shapes: list[tuple[int, int, int]] = field(default_factory=list)
    formats: list[str] | None = None
    seed: int = 0
    timeout: float = 60.0
    model: str | None = None
    tokens: list[str] = field(default_factory=list)
    decode_program: str | None = None
    decode_args: str = ""
    decode_inputs: list[str] = field(default_factory=list)
    decode_format: str = "voicecc"
    expect_n: int = 32
    jvm_props: tuple[str, ...] = ()  # --skainet-jvm-prop: system properties of every JVM

    @classmethod
    def read(cls, config: pytest.Config) -> ParityOptions:
        """The options, checked (a bad value is a usage error naming the option)."""
        from harness.board.parity import DEFAULT_SHAPES as BOARD_SHAPES
        from harness.jvm.cli import _list_arg, parse_shapes
        from harness.jvm.dispatch import parse_props
        from harness.jvm.parity import DEFAULT_LANES, parse_lanes
        from harness.jvm.parity import DEFAULT_SHAPES as JVM_SHAPES
        from harness.jvm.worker import JIT_MODES
        from oracle import PACKED_TYPES

        opt = config.getoption
        lanes = opt("--skainet-lanes")
        try:  # the CLI's grammar, its messages under this option's name
            shapes = [s for text in opt("--skainet-shape") or [] for s in parse_shapes(text)]
            lane_list = parse_lanes(lanes or DEFAULT_LANES)
        except HarnessError as exc:
            raise HarnessError(f"--skainet-{str(exc).removeprefix('--')}") from None
        formats = opt("--skainet-formats")
        o = cls(
            classpath=opt("--skainet-classpath"), fixtures=opt("--skainet-fixtures"),
            archive=opt("--kernels-archive"), lanes=lane_list,
            lanes_asked=lanes is not None,
            jit=_list_arg(opt("--skainet-jit"), JIT_MODES, "--skainet-jit"),
            jvm_shapes=shapes or list(JVM_SHAPES),
            board_shapes=[s[:3] for s in shapes] or list(BOARD_SHAPES),
            formats=(_list_arg(formats, PACKED_TYPES, "--skainet-formats") if formats
                     else None),
            seed=opt("--skainet-seed"), timeout=opt("--skainet-timeout"),
            model=opt("--expect-from"), tokens=opt("--tokens") or [],
            decode_program=opt("--decode-program"), decode_args=opt("--decode-args"),
            decode_inputs=opt("--decode-input") or [], decode_format=opt("--decode-format"),
            expect_n=opt("--expect-n"),
            jvm_props=parse_props(opt("--skainet-jvm-prop") or []))
        if not (o.classpath or o.fixtures or o.archive or o.model):
            raise HarnessError("--skainet-parity: nothing to run; give --skainet-classpath CP "
                               "(JVM kernels), --kernels-archive A (native kernels on a "
                               "board), --expect-from MODEL --tokens IDS --decode-program P "
                               "(a decode), or --skainet-fixtures (the project's own test "
                               "kernels)")
        if o.model and not (o.tokens and o.decode_program):
            raise HarnessError("--expect-from needs --tokens IDS (one decode per --tokens) and "
                               "--decode-program PROGRAM (the decode program run on the "
                               "board)")
        return o


def add_options(group: Any) -> None:
    """The parity options, in the plugin's `skainet` group."""
    from harness.board.decode import FORMATS
    from harness.jvm.parity import DEFAULT_LANES

    add = group.addoption
    add("--skainet-parity", action="store_true",
        help="collect parity cases as test items: JVM kernels (--skainet-classpath), native "
             "kernels on a board (--kernels-archive), decodes (--expect-from)")
    add("--skainet-fixtures", action="store_true",
        help="with --skainet-parity: also the project's own fixture kernels (fixtures/jvm, "
             "fixtures/board), labelled as such: they check the harness, never SKaiNET")
    add("--kernels-archive", default=None, metavar="ARCHIVE",
        help="libskainet_kernels.a: one item per native kernel x shape, run on --board/"
             "--board-profile (else a board-in-a-box)")
    add("--skainet-lanes", default=None, metavar="LANES",
        help=f"JVM lane widths from auto,4,8,16 (default {DEFAULT_LANES}); a width asked "
             "for here that the CPU lacks fails its items instead of skipping them")
    add("--skainet-jit", default="pinned,warm", metavar="MODES",
        help="JVM JIT modes, pinned,warm (default %(default)s)")
    add("--skainet-shape", action="append", default=None, metavar="OUTxINxBATCH[+OFFSET]",
        help="case shape (repeatable; +OFFSET, the weight array's byte offset, is for JVM "
             "items only; default: each target's built-in shapes)")
    add("--skainet-formats", default=None, metavar="FORMATS",
        help="comma-separated packed formats to run (default: every one a kernel implements)")
    add("--skainet-seed", type=int, default=0, metavar="N",
        help="seed for weights and activations (default %(default)s)")
    add("--skainet-timeout", type=float, default=60.0, metavar="SECONDS",
        help="seconds per JVM call or board run (default %(default)s)")
    add("--skainet-jvm-prop", action="append", default=None, metavar="KEY=VALUE",
        help="a Java system property for every JVM of the JVM items (repeatable), e.g. "
             "skainet.strict.kernels=true (default: none)")
    add("--expect-from", default=None, metavar="MODEL.gguf",
        help="decode items: the reference decode of this model gives the expected ids")
    add("--tokens", action="append", default=None, metavar="IDS",
        help="prompt ids of one decode item (repeatable: one item each)")
    add("--decode-program", default=None, metavar="PROGRAM",
        help="the decode program run on the board for each --tokens")
    add("--decode-args", default="", metavar="ARGS",
        help="its arguments (shell words); {tokens} is replaced by the prompt ids and "
             "{tokens_file} by a file holding them (pushed as prompt.txt)")
    add("--decode-input", action="append", default=None, metavar="LOCAL[=NAME]",
        help="file pushed into the decode's run directory (repeatable)")
    add("--decode-format", default="voicecc", choices=sorted(FORMATS),
        help="how the decode program prints its ids (default %(default)s)")
    add("--expect-n", type=int, default=32, metavar="COUNT",
        help="tokens the reference decode generates at most (default %(default)s)")


# ---------------------------------------------------------------------------- resources

class ParityResources:
    """What this process's items run on, started on first use and stopped at the end of
    the session: the JVM workers (one `ConfigSession` per classpath x lanes x JIT mode),
    the board session and the kernel drivers linked per archive."""

    def __init__(self, config: pytest.Config, options: ParityOptions) -> None:
        self.config, self.options = config, options
        self.jvm: dict[tuple[str, str, str], Any] = {}
        self.drivers: dict[str, Path] = {}
        self._board: Any = None
        self._board_error: str | None = None
        self._stack = contextlib.ExitStack()

    def jvm_session(self, classpath: str, lanes: str, jit: str) -> Any:
        from harness.jvm.jdk import find_jdk
        from harness.jvm.parity import ConfigSession

        key = (classpath, lanes, jit)
        if key not in self.jvm:
            self.jvm[key] = ConfigSession(find_jdk(), classpath, lanes, jit, self.options.seed,
                                          self.options.timeout,
                                          props=self.options.jvm_props)
        return self.jvm[key]

    def board(self) -> Any:
        """This process's board session (opened on first use; the board-in-a-box when no
        --board/--board-profile is given)."""
        if self._board_error is not None:  # one attempt per process, every item says why
            raise HarnessError(self._board_error)
        if self._board is None:
            from harness.board.source import open_session
            from harness.pytest_plugin import board_spec

            try:
                self._board = self._stack.enter_context(open_session(board_spec(self.config)))
            except HarnessError as exc:
                self._board_error = f"board: {exc}"
                raise HarnessError(self._board_error) from None
        return self._board

    def driver(self, archive: str) -> Path:
        from harness.board.parity import build_kernel_driver

        if archive not in self.drivers:
            self.drivers[archive], _ = build_kernel_driver(Path(archive),
                                                           formats=self.options.formats)
        return self.drivers[archive]

    def close(self) -> None:
        """Stop every JVM worker (and what its code left running) and the board session."""
        try:
            for cs in self.jvm.values():
                cs.close()
        finally:
            self.jvm.clear()
            self._stack.close()
            self._board = None


def _resources(config: pytest.Config) -> ParityResources:
    return config.stash[RESOURCES]


# -------------------------------------------------------------------------------- items

class ParityItem(pytest.Item):
    """One parity case; `run` gives its `CaseResult`, the verdict its outcome."""

    def __init__(self, *, run: Callable[[ParityResources], CaseResult], label: str = "",
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.case_run, self.label = run, label
        self.fixturenames: list[str] = []  # it uses none (other plugins read this)
        if label:
            self.user_properties.append(("label", label))

    def runtest(self) -> None:
        try:
            res = self.case_run(_resources(self.config))
        except HarnessError as exc:
            res = CaseResult(Verdict.ERROR, str(exc))
        self.user_properties.append(("verdict", str(res.verdict)))
        text = f"{res.verdict}: {res.detail}" if res.detail else str(res.verdict)
        if self.label:
            text = f"[{self.label}] {text}"
        outcome = item_outcome(res.verdict, res.asked)
        if outcome == ITEM_PASSED:
            return
        if outcome == ITEM_FAILED:
            raise ParityFailure(text)
        if outcome == ITEM_XFAILED:
            pytest.xfail(text)
        pytest.skip(text)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, ParityFailure):
            return VerdictRepr(str(excinfo.value), str(self.path))
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.nodeid


class VerdictRepr(TerminalRepr):
    """A failing verdict as pytest shows it: the message alone, no traceback; `reprcrash`
    makes it the short summary's text and junit XML's failure message."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.reprcrash = ReprFileLocation(path, 0, text)

    def toterminal(self, tw: Any) -> None:
        tw.line(self.text)


class ParityGroup(pytest.Collector):
    """One target's items (`jvm`, `fixture-jvm`, `board`, `fixture-board`, `decode`)."""

    def __init__(self, *, make: Callable[[ParityGroup], Iterator[ParityItem]],
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.make = make

    def collect(self) -> list[ParityItem]:
        return list(self.make(self))


def _item(parent: pytest.Collector, name: str, run: Callable[[ParityResources], CaseResult],
          label: str = "", group: str | None = None) -> ParityItem:
    # the id as pytest parses it back from a string (--lf's cache, --deselect)
    item = ParityItem.from_parent(parent, name=name, nodeid=f"{parent.nodeid}::{name}",
                                  run=run, label=label)
    if group:  # with --dist loadgroup, a JVM configuration's cases stay on one worker
        item.add_marker(pytest.mark.xdist_group(group))
    return item


# -- JVM -------------------------------------------------------------------------------

def _jvm_case(classpath: str, k: Any, shape: tuple[int, int, int, int], lanes: str,
              jit: str, explicit: tuple[int, ...]) -> Callable[[ParityResources], CaseResult]:
    def run(res: ParityResources) -> CaseResult:
        cs = res.jvm_session(classpath, lanes, jit)
        cs.start()
        if cs.run.info.get("interrupted"):
            raise KeyboardInterrupt
        if cs.run.error:  # the JVM did not start, or the build cannot load a class
            return CaseResult(Verdict.ERROR, cs.run.error)
        if lanes == "auto" and cs.actual_lanes in explicit:
            return CaseResult(Verdict.SKIPPED, f"the host's width is {cs.actual_lanes} lanes: "
                                               f"judged by the lanes={cs.actual_lanes} items")
        case = cs.case(k, shape)
        if cs.run.error.startswith("--classpath"):
            return CaseResult(Verdict.ERROR, cs.run.error)
        verdict = Verdict(case.verdict)
        unavailable = verdict == Verdict.NOT_RUNNABLE or (
            verdict == Verdict.SKIPPED and "not available on this CPU" in case.detail)
        if unavailable:
            verdict = Verdict.UNAVAILABLE
        detail = case.detail
        if verdict not in (Verdict.BIT_EXACT, Verdict.WITHIN_BOUND) and case.actual_lanes:
            detail = f"{detail} (lanes={lanes} -> {case.actual_lanes}, jit={jit})"
        return CaseResult(verdict, detail, asked=res.options.lanes_asked)
    return run


def _jvm_groups(parent: pytest.Collector, o: ParityOptions) -> Iterator[ParityGroup]:
    from harness.jvm.discovery import discover, resolve_classpath
    from harness.jvm.dispatch import dispatch_keys, dispatched_kernels
    from harness.jvm.fixtures import LABEL, fixture_classpath
    from harness.jvm.jdk import find_jdk
    from harness.jvm.parity import ask_dispatch

    sources: list[tuple[str, str]] = []
    if o.classpath:
        where = str(parent.config.invocation_params.dir)
        sources.append(("jvm", resolve_classpath(o.classpath, where)))
    if o.fixtures:
        sources.append(("fixture-jvm", fixture_classpath(find_jdk())))
    explicit = tuple(int(ln) for ln in o.lanes if ln != "auto")
    for name, cp in sources:
        listed = [k for k in discover(cp) if o.formats is None or k.fmt in o.formats]
        # what SKaiNET's own KernelRegistry runs comes first (its items say so)
        kernels = dispatched_kernels(ask_dispatch(find_jdk(), cp, o.jvm_props,
                                                  dispatch_keys(o.formats), o.timeout), listed)
        if not kernels and name == "jvm":  # the fixtures may lack a format: no items
            raise HarnessError(f"--skainet-classpath {cp}: no packed matmul kernel found"
                               + (f" for {', '.join(o.formats)}" if o.formats else ""))

        def make(group: ParityGroup, cp: str = cp, kernels: list = kernels) -> Iterator:
            from harness.jvm.discovery import DENSE_FORMATS
            from harness.jvm.parity import GEMM_SHAPES

            # configuration-major: a worker's consecutive cases share one JVM
            for lanes in o.lanes:
                for jit in o.jit:
                    for k in kernels:
                        label = LABEL if k.cls.startswith("skoracle.fixture.") else ""
                        for shape in (GEMM_SHAPES if k.kind in DENSE_FORMATS
                                      else o.jvm_shapes):
                            dims = "x".join(map(str, shape[:3])) + \
                                (f"+{shape[3]}" if shape[3] else "")
                            yield _item(group, f"{k.short}[{k.fmt}-{dims}-lanes{lanes}-{jit}]",
                                        _jvm_case(cp, k, shape, lanes, jit, explicit), label,
                                        group=f"jvm-{lanes}-{jit}")
        yield ParityGroup.from_parent(parent, name=name, make=make)


# -- board kernels -----------------------------------------------------------------------

def _board_case(archive: str, k: Any, shape: tuple[int, int, int]
                ) -> Callable[[ParityResources], CaseResult]:
    def run(res: ParityResources) -> CaseResult:
        from harness.board.parity import kernel_case, shape_skip
        from harness.parity.runner import BoardRunner

        why = shape_skip(k, shape)
        if why:
            return CaseResult(Verdict.SKIPPED, why)
        runner = BoardRunner(res.board(), res.driver(archive), res.options.timeout)
        case = kernel_case(runner, k, shape, res.options.seed)
        return CaseResult(Verdict(case.verdict), case.measure())
    return run


def _board_groups(parent: pytest.Collector, o: ParityOptions) -> Iterator[ParityGroup]:
    from harness.board.build import fixture_kernel_archive
    from harness.board.parity import FIXTURE_ARCHIVE_NAME, FIXTURE_LABEL, inventory

    archives: list[str] = []
    if o.archive:
        archives.append(str(Path(parent.config.invocation_params.dir, o.archive).resolve()))
    if o.fixtures:
        archives.append(str(fixture_kernel_archive()))
    for archive in archives:
        inv = inventory(Path(archive), o.formats)
        fixture = Path(archive).name == FIXTURE_ARCHIVE_NAME

        def make(group: ParityGroup, archive: str = archive, inv: Any = inv,
                 label: str = FIXTURE_LABEL if fixture else "") -> Iterator:
            for k in inv.run:
                for shape in o.board_shapes:
                    yield _item(group, f"{k.symbol}[{k.qtype}-{'x'.join(map(str, shape))}]",
                                _board_case(archive, k, shape), label)
        yield ParityGroup.from_parent(parent, name="fixture-board" if fixture else "board",
                                      make=make)


# -- decodes --------------------------------------------------------------------------------

def _decode_case(o: ParityOptions, tokens: list[int], where: Path
                 ) -> Callable[[ParityResources], CaseResult]:
    def run(res: ParityResources) -> CaseResult:
        from harness.board.decode import cut_at_end, decode_run, decode_verdict, end_token_ids
        from harness.board.facts import emulated_arch
        from harness.reference.cli import expected_ids

        model = where / o.model
        end_ids = end_token_ids(model)
        expected, _ = expected_ids(model, tokens, o.expect_n, stop_ids=end_ids)
        ids = ",".join(map(str, tokens))
        args = [a.replace("{tokens_file}", "prompt.txt").replace("{tokens}", ids)
                for a in shlex.split(o.decode_args)]
        inputs: dict[str, Path | bytes] = {"prompt.txt": ids.encode()}
        for spec in o.decode_inputs:
            local, _, name = spec.partition("=")
            path = where / local
            if not path.is_file():
                raise HarnessError(f"--decode-input {spec}: {local}: no such file")
            inputs[name or path.name] = path
        session = res.board()
        parity, run_res = decode_run(session, where / o.decode_program, args, inputs,
                                     expected, end_ids, o.decode_format,
                                     emulated_arch(session.profile) is not None,
                                     timeout=o.timeout)
        verdict = decode_verdict(parity, run_res)
        detail = parity.report().replace("\n", "; ")
        if not run_res.ok:
            detail = f"{run_res.summary()}; {detail}"
        cut, _ = cut_at_end(expected, end_ids)
        return CaseResult(verdict, detail if verdict != Verdict.PASS else
                          f"{len(cut)} ids match")
    return run


def _decode_groups(parent: pytest.Collector, o: ParityOptions) -> Iterator[ParityGroup]:
    from harness.reference.cli import parse_tokens

    if not o.model:
        return
    where = Path(parent.config.invocation_params.dir)
    for f, what in ((o.model, "--expect-from"), (o.decode_program, "--decode-program")):
        if not (where / f).is_file():
            raise HarnessError(f"{what} {f}: no such file")
    prompts = [parse_tokens(t) for t in o.tokens]

    def make(group: ParityGroup) -> Iterator:
        for tokens in prompts:
            yield _item(group, f"tokens[{','.join(map(str, tokens))}]",
                        _decode_case(o, tokens, where))
    yield ParityGroup.from_parent(parent, name="decode", make=make)


# --------------------------------------------------------------------------------- hooks

def collect(session: pytest.Session) -> list[ParityItem]:
    """Every parity item the options ask for, in a stable order (each xdist worker collects
    the same list). A bad option or input is a usage error: one line, exit 4."""
    config = session.config
    try:
        o = ParityOptions.read(config)
        root = ParityGroup.from_parent(session, name=ROOT_NAME, nodeid=ROOT_NAME,
                                       make=lambda g: iter(()))
        groups = [*_jvm_groups(root, o), *_board_groups(root, o), *_decode_groups(root, o)]
        items = [item for g in groups for item in g.collect()]
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    # counted like collected items ("collected N items", "N deselected")
    config.hook.pytest_collectreport(report=pytest.CollectReport(
        ROOT_NAME, "passed", None, list(items)))
    res = ParityResources(config, o)
    config.stash[RESOURCES] = res
    config.add_cleanup(res.close)
    return items


def collection_lines(items: list[pytest.Item]) -> list[str]:
    """After "collected N items": the parity items per target, fixtures labelled."""
    from collections import Counter

    counts = Counter(i.parent.name for i in items if isinstance(i, ParityItem))
    if not counts:
        return []
    from harness.jvm.fixtures import LABEL

    parts = [f"{n} {g}" + (f" ({LABEL})" if g.startswith("fixture-") else "")
             for g, n in counts.items()]
    return ["skainet parity items: " + ", ".join(parts)]


__all__ = ["ParityItem", "ParityOptions", "ParityResources", "add_options", "collect",
           "collection_lines"]
