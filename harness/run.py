"""`skoracle run`: every leg of the parity story in one command, one report.

Legs (each also runnable alone through its own subcommand; `run` composes, never
duplicates them): oracle vs ggml's C code, reference kernels vs ggml's CPU dot products,
golden fixtures (generate + verify), the binary gate, the board run (board-in-a-box by
default), the FunctionGemma footprint, and SKaiNET on the JVM. Defaults need nothing from
the user; a real board or a user's build replaces a default by flag.

Exit codes: 0 every leg passed (or is unavailable on this machine by default), 1 a parity
failure or gate finding, 2 a setup/input error (including a leg the user asked for by flag
that cannot run), 130 interrupted (the partial report is still written, marked partial).

The legs are objects in harness.legs; this module is the CLI around them: the options, the
typed options built once from them, the driver (with the one availability rule) and the
report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from harness import report
from harness.board.source import BoardSpec, lab_from_args
from harness.console import ResultTable, escape_control, make_console
from harness.errors import INPUT_ERRORS, HarnessError, exit_code_of
from harness.footprint import BOARD_BUDGET, add_budget_options, parse_budget
from harness.jvm.parity import DEFAULT_LANES, LANES_HELP, parse_lanes
from harness.legs import (
    LEGS,
    BoardOptions,
    FootprintOptions,
    GateOptions,
    JvmOptions,
    Leg,
    LegContext,
    Missing,
    RunOptions,
)
from harness.parity.verdict import Verdict
from harness.report import Report, leg_columns, write_report
from harness.reportdir import check_report_dir

# ---------------------------------------------------------------------------------------
# driver

DEFAULT_ORDER = tuple(LEGS)


def selected_legs(only: str | None) -> list[str]:
    names = list(DEFAULT_ORDER)
    if not only:
        return names
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in LEGS]
    if unknown:
        raise HarnessError(f"--only: unknown leg(s) {', '.join(unknown)}; "
                           f"legs are {', '.join(names)}")
    return [n for n in names if n in wanted]


VERDICT_COLOUR = {Verdict.BIT_EXACT: "green", Verdict.PASS: "green",
                  Verdict.WITHIN_BOUND: "yellow", Verdict.NOT_JUDGED: "dim",
                  Verdict.KNOWN_FAILURE: "yellow", Verdict.UNAVAILABLE: "yellow",
                  Verdict.FAIL: "red", Verdict.ERROR: "red"}


def summary_tables(rep: Report) -> list[ResultTable]:
    tables = []
    for lg in rep.legs:
        cols = leg_columns(lg, lambda s: f"{s:.2f}s")
        t = ResultTable(f"{lg.title} — {lg.status.upper()}", [h for h, _ in cols],
                        names=("verdict", "max ulp", "time"))
        for r in lg.rows:
            t.add_row(*(Text(r.verdict, style=VERDICT_COLOUR[r.verdict]) if header == "verdict"
                        else cell(r) for header, cell in cols))
        tables.append(t)
    return tables


def name_failures(lg: report.Leg, limit: int = 3) -> None:
    """Make a failing leg's summary name what failed (unless the leg's own summary does,
    i.e. starts with "FAIL"): "FAIL: case: first clause of its detail; ...; summary"."""
    bad = [r for r in lg.rows if r.verdict in ("FAIL", "error")]
    if lg.status != "fail" or not bad or lg.summary.startswith("FAIL"):
        return
    clauses = [f"{r.case}" + (f": {r.detail.split(';')[0]}" if r.detail else "")
               for r in bad[:limit]]
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    lg.summary = f"FAIL: {'; '.join(clauses)}{more}" + (f"; {lg.summary}" if lg.summary else "")


class _Interrupt:
    """SIGINT handler: inside a leg it raises KeyboardInterrupt (the leg's own `with` blocks
    stop what it started); anywhere else it only records the request, so the report is
    always written."""

    def __init__(self) -> None:
        self.requested = False
        self.in_leg = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.in_leg:
            if _inside_import(frame):
                # an import interrupted midway can leave the import lock held, and the
                # report's plotting import then waits for ever: ask again just after it
                threading.Timer(0.05, self._again, (signum,)).start()
                return
            self.in_leg = False
            raise KeyboardInterrupt

    def _again(self, signum: int) -> None:
        if self.in_leg:  # still inside the leg: deliver the interrupt there
            os.kill(os.getpid(), signum)


def _inside_import(frame: object) -> bool:
    """Whether the interrupted code is inside Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def check_path_options(args: argparse.Namespace) -> None:
    """Every path `run` was given must exist before any leg runs (HarnessError, exit 2)."""
    for option, value in (("--model", args.model), ("--kernels-archive", args.kernels_archive),
                          ("--profile", args.board_profile)):
        if value is not None and not Path(value).is_file():
            raise HarnessError(f"{option} {value}: " + ("not a regular file" if
                               Path(value).exists() else "no such file"))
    for value in args.klib:
        if not (Path(value).is_file() or Path(value).is_dir()):
            raise HarnessError(f"--klib {value}: " + ("not a regular file or directory" if
                               Path(value).exists() else "no such file or directory"))
    for entry in (args.classpath or "").split(os.pathsep):
        base = (entry[:-1] or ".") if entry.endswith("*") else entry  # `dir/*`: its jars
        if entry and not Path(base).exists():
            raise HarnessError(f"--classpath: {entry}: no such file or directory")


def _absolute(value: str | None) -> str | None:
    """A path option made absolute against the caller's directory (workers and legs may
    run elsewhere); None and "" as given."""
    return os.path.abspath(os.path.expanduser(value)) if value else value


def build_options(args: argparse.Namespace) -> RunOptions:
    """The typed options of a run, every input checked before anything starts
    (HarnessError, exit 2): the legs, --out, the paths, the budget, the lanes."""
    from harness.jvm.discovery import resolve_classpath
    from harness.jvm.dispatch import parse_props

    names = selected_legs(args.only)
    out_dir = check_report_dir(args.out, args.force)
    check_path_options(args)
    budget = parse_budget(args.budget, args.reserve)
    lanes = parse_lanes(args.lanes)
    model, archive = _absolute(args.model), _absolute(args.kernels_archive)
    return RunOptions(
        seed=args.seed, out=out_dir, legs=tuple(names),
        named=frozenset(names if args.only else ()), json=args.json,
        jvm=JvmOptions(classpath=resolve_classpath(args.classpath) if args.classpath else None,
                       jdk=_absolute(args.jdk), lanes=tuple(lanes),
                       props=parse_props(args.jvm_prop)),
        board=BoardOptions(spec=BoardSpec(_absolute(args.board_profile), args.board,
                                          lab=lab_from_args(args)),
                           kernels_archive=Path(archive) if archive else None),
        gate=GateOptions(klibs=tuple(Path(_absolute(k)) for k in args.klib)),
        footprint=FootprintOptions(model=Path(model) if model else None, budget=budget,
                                   board_budget=args.budget == BOARD_BUDGET))


def _preload_plotting() -> None:
    """Import matplotlib (Agg) while the legs run: the report needs it at the end, and an
    interrupted run then writes its partial report at once instead of after the import."""
    def load() -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
        except Exception:  # the report says what is missing when it needs it
            pass

    threading.Thread(target=load, name="preload-matplotlib", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    _preload_plotting()
    stop = _Interrupt()
    previous = signal.signal(signal.SIGINT, stop)
    try:
        return _run(args, stop)
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace, stop: _Interrupt) -> int:
    console = make_console(stderr=args.json)  # --json: stdout carries the report only
    options = build_options(args)
    work = Path(tempfile.mkdtemp(prefix="skoracle-run-"))  # scratch: the system temp dir
    try:
        return _run_legs(options, stop, console, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class LegOutcome:
    """A leg's report section, and what the run's exit code needs to know of it."""

    section: report.Leg
    setup_error: bool = False  # an input or setup error (exit 2)
    interrupted: bool = False


def _mark_unavailable(out: report.Leg, missing: Missing) -> None:
    out.status = "unavailable"
    out.summary = missing.reason
    out.add(missing.case, "unavailable", detail=missing.reason)


def drive_leg(leg: Leg, ctx: LegContext, asked: bool,
              stop: _Interrupt | None = None) -> LegOutcome:
    """Run one leg into its report section. The one availability rule of `run`: a leg
    whose input is missing is not run and is `unavailable`; when the user asked for it
    (`asked`: named in --only, or one of its own flags given) that is a setup error."""
    stop = stop or _Interrupt()
    outcome = LegOutcome(report.Leg(leg.name, leg.title))
    out = outcome.section
    t0 = time.perf_counter()
    try:
        if stop.requested:
            raise KeyboardInterrupt
        missing = leg.missing(ctx.options)
        if missing is not None:
            _mark_unavailable(out, missing)
            outcome.setup_error = asked
        else:
            stop.in_leg = True
            try:
                leg.run(ctx, out)
            finally:
                stop.in_leg = False
    except KeyboardInterrupt:
        out.status = "interrupted"
        out.summary = "interrupted by the user"
        outcome.interrupted = True
    except INPUT_ERRORS as exc:
        if out.status != "unavailable":
            out.status = "error"
        out.summary = str(exc)
        outcome.setup_error = exit_code_of(exc) == 2
    out.elapsed_s = time.perf_counter() - t0
    out.settle()
    name_failures(out)
    return outcome


def _run_legs(options: RunOptions, stop: _Interrupt, console: Console, work: Path) -> int:
    rep = Report(settings={"legs": list(options.legs), "seed": options.seed,
                           "out": str(options.out)})
    t_start = time.perf_counter()
    interrupted = setup_error = False
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)
        ctx = LegContext(options, work, lambda text: progress.update(task, description=text))
        for name in options.legs:
            leg = LEGS[name]
            outcome = drive_leg(leg, ctx, name in options.named or leg.asked_by_flag(options),
                                stop)
            lg = outcome.section
            rep.legs.append(lg)
            setup_error = setup_error or outcome.setup_error
            progress.console.print(Text.assemble((name, "bold"), f": {lg.status} "
                                   f"({lg.elapsed_s:.1f}s) {escape_control(lg.summary)}"))
            if outcome.interrupted or stop.requested:
                interrupted = True
                break
    rep.elapsed_s = time.perf_counter() - t_start
    rep.partial = interrupted or len(rep.legs) < len(options.legs)
    rep.exit_code = _exit_code(rep, interrupted, setup_error)
    _write_and_show(rep, console, options)
    return rep.exit_code


def _exit_code(rep: Report, interrupted: bool, setup_error: bool) -> int:
    """130 interrupted, 2 a setup or input error, 1 a finding, else 0."""
    statuses = {lg.status for lg in rep.legs}
    if interrupted:
        return 130
    if setup_error or "error" in statuses:
        return 2
    return 1 if "fail" in statuses else 0


def _write_and_show(rep: Report, console: Console, options: RunOptions) -> None:
    """The summary tables, the report files and the closing line (and --json's document)."""
    for t in summary_tables(rep):
        t.print(console)
    path = write_report(rep, options.out)
    verdict = {0: "[green]all legs passed[/]", 1: "[red]parity failure or gate finding[/]",
               2: "[red]setup or input error[/]", 130: "[yellow]interrupted: partial report[/]"}
    console.print(f"{verdict[rep.exit_code]} — report: {path}/report.html "
                  f"(+ report.json, report.md), {rep.elapsed_s:.1f}s")
    if options.json:
        print(json.dumps(rep.to_dict(), indent=2))


EXIT_CODES = """\
exit codes:
  0    every leg passed (a leg that cannot run on this machine by default is unavailable)
  1    a parity failure or gate finding
  2    a setup or input error, including a leg asked for by flag that cannot run and a
       --klib with nothing to check inside (as `elf-check` says 2); checked before any
       leg runs where possible (paths, --out, --budget/--reserve)
  130  interrupted: the partial report is still written, marked partial"""


def _legs_epilog() -> str:
    width = max(len(n) for n in DEFAULT_ORDER)
    rows = [f"  {n:<{width}}  {LEGS[n].title}" for n in DEFAULT_ORDER]
    return "legs, in the order they run (--only picks some):\n" + "\n".join(rows) + \
        "\n\n" + EXIT_CODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="every leg (oracle, kernels, fixtures, footprint, gate, "
                       "board, jvm) with one report", description=__doc__.split("\n\n")[0],
                       epilog=_legs_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="report", metavar="DIR",
                   help="report directory: created, or a previous report whose report.json/.md/"
                        ".html are replaced; any other non-empty directory is refused "
                        "(default %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="write the report files into a non-empty DIR that is not a previous "
                        "report (only report.json/.md/.html are written; nothing is deleted)")
    p.add_argument("--only", metavar="LEGS",
                   help=f"comma-separated legs to run, e.g. oracle,gate (default: all of "
                        f"{','.join(DEFAULT_ORDER)})")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed for generated data (default %(default)s)")
    p.add_argument("--board", metavar="USER@HOST[:PORT]",
                   help="a real board instead of the board-in-a-box (default: board-in-a-box)")
    p.add_argument("--profile", "--board-profile", dest="board_profile", metavar="FILE.toml",
                   help="TOML board profile of a real board; keys in `skoracle board --help` "
                        "(default: board-in-a-box)")
    from harness.board.source import add_lab_options

    add_lab_options(p)
    p.add_argument("--kernels-archive", metavar="libskainet_kernels.a",
                   help="aarch64 archive for the board leg's kernel parity (default: none, "
                        "reported unavailable)")
    p.add_argument("--klib", action="append", default=[], metavar="PATH",
                   help="artifact for the gate leg (klib, jar, .a, .so, .kexe); repeatable "
                        "(default: none, only this run's board programs are gated)")
    p.add_argument("--model", metavar="M.gguf",
                   help="GGUF for the footprint leg (default: a generated FunctionGemma-shaped "
                        "file)")
    add_budget_options(p)
    p.add_argument("--json", action="store_true",
                   help="also print report.json to stdout (progress and tables go to stderr)")
    p.add_argument("--classpath", metavar="CP",
                   help="a local SKaiNET build for the JVM leg, entries separated by "
                        f"'{os.pathsep}' (default: none)")
    p.add_argument("--lanes", default=DEFAULT_LANES, metavar="LANES",
                   help="the JVM leg's " + LANES_HELP)
    p.add_argument("--jdk", metavar="HOME",
                   help="JDK for the JVM leg (default: JAVA_HOME, then /usr/lib/jvm/*)")
    p.add_argument("--jvm-prop", action="append", default=[], metavar="KEY=VALUE",
                   help="a Java system property for the JVM leg's JVMs (repeatable), e.g. "
                        "skainet.strict.kernels=true (default: none)")
    p.set_defaults(func=run)
