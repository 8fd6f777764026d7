"""`skoracle jvm kernels|parity|dispatch`: SKaiNET's JVM kernels from a classpath, listed,
judged, or as SKaiNET's own KernelRegistry dispatches them (judged first by `parity`).

    skoracle jvm kernels  --classpath CP [--json]
    skoracle jvm parity   --classpath CP [--formats Q8_0,Q4_K] [--shape 16x256x2 ...]
                          [--lanes auto,4,8] [--jit pinned,warm] [--jvm-prop K=V ...] [--json]
    skoracle jvm dispatch --classpath CP [--formats Q8_0] [--jvm-prop K=V ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from rich.console import Console

from harness.console import ResultTable, cell, make_console
from harness.errors import HarnessError
from harness.jvm.discovery import (
    DENSE_FORMATS,
    FFM,
    MATMUL_DESCRIPTOR,
    PANAMA,
    SCALAR,
    Kernel,
    check_classpath,
    inventory,
    resolve_classpath,
)
from harness.jvm.dispatch import Dispatch, dispatch_keys, dispatched_kernels, parse_props
from harness.jvm.jdk import find_jdk
from harness.jvm.parity import (
    DEFAULT_LANES,
    DEFAULT_SHAPES,
    FAILING,
    LANES_HELP,
    ParityRun,
    ask_dispatch,
    drift_summary,
    failure_summary,
    native_models,
    parse_lanes,
    run_matrix,
)
from harness.jvm.worker import JIT_MODES
from oracle import PACKED_TYPES

#: What --formats selects: the packed formats, and the dense kernels' B operand (F32, BF16, F16).
JVM_FORMATS = (*PACKED_TYPES, *DENSE_FORMATS.values())


def _list_arg(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise HarnessError(f"{flag}: {', '.join(bad) or 'empty'} not one of {', '.join(allowed)}")
    return items


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """"OUTxINxBATCH[+OFFSET]" (or several, comma-separated) -> shapes (weightByteOffset
    defaults to 0): the value of one `--shape`."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        try:
            dims, _, off = part.partition("+")
            o, i, b = (int(v) for v in dims.lower().split("x"))
            shape = (o, i, b, int(off or 0))
        except ValueError:
            raise HarnessError(f"--shape: {part!r} is not OUTxINxBATCH[+OFFSET]") from None
        if min(shape[:3]) < 1 or shape[3] < 0 or o * i > 1 << 24:
            raise HarnessError(f"--shape: {part!r} out of range (positive dims, "
                               "OUT*IN <= 16M)")
        out.append(shape)
    return out


def _nothing_found(classpath: str, formats: list[str] | None = None) -> HarnessError:
    return HarnessError(f"--classpath {classpath or '(empty)'}: no packed matmul kernel found "
                        "(a class implementing a kernel interface of sk.ainet.backend.api."
                        f"kernel, or with a static INSTANCE and matmul{MATMUL_DESCRIPTOR})"
                        + (f" for {', '.join(formats)}" if formats else ""))


def judged_by(k: Kernel) -> str:
    """How `jvm parity` judges a kernel, or why it does not run it."""
    if k.reason:
        return f"not run: {k.reason}"
    if k.model:
        return f"{k.model} (its own order, bit-exact only)"
    if k.provider == FFM:
        model = native_models(k.fmt)[0] if k.fmt else None
        return (f"{model} (this host's C build, bit-exact only)" if model
                else "exact + error_bound (this host's C build: order not modelled)")
    return {SCALAR: "skainet_scalar", PANAMA: "skainet_panama (probed order)"}.get(
        k.provider, "exact + error_bound (order not modelled)")


def kernels_cmd(args: argparse.Namespace) -> int:
    jdk = find_jdk(args.jdk)
    cp = resolve_classpath(args.classpath)
    ks = inventory(cp)
    if not ks:
        raise _nothing_found(args.classpath)
    if args.json:
        json.dump({"jdk": jdk.describe(), "classpath": cp,
                   "kernels": [vars(k) | {"judged_by": judged_by(k)} for k in ks]},
                  sys.stdout, indent=1)
        print()
        return 0
    sources = list(dict.fromkeys(k.source for k in ks))
    one = len(sources) == 1
    t = ResultTable(f"kernels in {sources[0] if one else 'the classpath'} — "
                    f"{jdk.describe()}", ("class", "kind", "format", "provider", "judged by")
                    + (() if one else ("found in",)), names=("class",))
    for k in ks:
        t.add_row(k.cls, k.kind, k.fmt or "?", k.provider, judged_by(k),
                  *(() if one else (f"[{sources.index(k.source) + 1}]",)))
    out = make_console()
    t.print(out)
    if not one:
        for i, src in enumerate(sources, 1):
            out.print(cell(f"[{i}] {src}"))
    return 0


def parity_cmd(args: argparse.Namespace) -> int:
    jdk = find_jdk(args.jdk)
    formats = _list_arg(args.formats, JVM_FORMATS, "--formats") if args.formats else None
    lanes = parse_lanes(args.lanes)
    jit = _list_arg(args.jit, JIT_MODES, "--jit")
    shapes = ([s for text in args.shape for s in parse_shapes(text)] if args.shape
              else list(DEFAULT_SHAPES))
    props = parse_props(args.jvm_prop)
    cp = resolve_classpath(args.classpath)
    listed = [k for k in inventory(cp) if formats is None or k.fmt in formats]
    dispatch = ask_dispatch(jdk, cp, props, dispatch_keys(formats), args.timeout)
    ks = dispatched_kernels(dispatch, listed)
    not_run = [k for k in listed if not k.runnable]
    if not ks:
        raise _nothing_found(args.classpath, formats)
    err = make_console(stderr=True)
    run = run_matrix(jdk, cp, ks, lanes, jit, shapes, args.seed, args.timeout,
                     progress=(lambda s: err.print(cell(s))) if args.verbose else None,
                     props=props, dispatch=dispatch)
    bad = [c for c in run.cases if c.verdict in FAILING]
    if args.json:
        json.dump(run.to_json() | {"widths": run.widths, "not_run": [
            {"class": k.cls, "kind": k.kind, "format": k.fmt, "reason": k.reason}
            for k in not_run]}, sys.stdout, indent=1, default=str)
        print()
    else:
        out = make_console()
        print_parity(run, out)
        for k in not_run:
            out.print(cell(f"not run: {k.short} ({k.kind}): {k.reason}"))
    if run.interrupted:
        print("skoracle jvm parity: interrupted: the cases above were judged, the rest not run",
              file=sys.stderr)
        return 130
    return 1 if bad else 0


def dispatch_cmd(args: argparse.Namespace) -> int:
    """SKaiNET's own answer: which provider and kernel each format gets."""
    jdk = find_jdk(args.jdk)
    formats = _list_arg(args.formats, JVM_FORMATS, "--formats") if args.formats else None
    props = parse_props(args.jvm_prop)
    cp = resolve_classpath(args.classpath)
    check_classpath(cp)
    d = ask_dispatch(jdk, cp, props, dispatch_keys(formats), args.timeout)
    if d.error:
        raise HarnessError(f"--classpath {args.classpath}: {d.error}")
    if args.json:
        json.dump(asdict(d), sys.stdout, indent=1)
        print()
    else:
        out = make_console()
        for line in d.lines():
            out.print(cell(line))
    return 0


def print_dispatch(d: Dispatch | None, out: Console) -> None:
    """The registry's answer, a line each ("dispatch: Q8_0 -> native-ffm ...")."""
    if d is not None:
        for line in d.lines():
            out.print(cell(f"dispatch: {line}"))


def print_parity(run: ParityRun, out: Console) -> None:
    """What SKaiNET dispatches, the parity table (one row per case), the configurations,
    and what failed."""
    print_dispatch(run.dispatch, out)
    t = ResultTable(f"JVM parity — {run.jdk}",
                    ("kernel", "format", "shape", "lanes", "jit", "verdict", "detail"),
                    names=("kernel", "format", "shape", "lanes", "jit", "verdict"))
    for c in run.cases:
        t.add_row(c.kernel, c.fmt or "?", "x".join(map(str, c.shape[:3])),
                  f"{c.lanes}->{c.actual_lanes}", c.jit, c.verdict, c.detail)
    t.print(out)
    for cr in run.configs:
        if cr.same_as:
            out.print(cell(f"lanes={cr.lanes} jit={cr.jit}: the host's width is "
                           f"{cr.same_as}, judged once (as --lanes {cr.info.get('lanes')})"))
            continue
        out.print(cell(f"lanes={cr.lanes} jit={cr.jit}: JVM start "
                       f"{cr.info.get('start_s', float('nan')):.2f}s, lanes "
                       f"{cr.info.get('lanes')}, probed order "
                       f"{cr.probes or 'n/a'}, worker starts {cr.info.get('worker_starts')}"))
        for k in cr.killed:
            out.print(cell(f"lanes={cr.lanes} jit={cr.jit}: killed {k}, left running by "
                           "the code under test"))
    for line in drift_summary(run):
        out.print(cell(f"drift: {line}"))
    out.print(cell(f"judged at {', '.join(run.widths) or 'no lane width'}"))
    bad = [c for c in run.cases if c.verdict in FAILING]
    if bad:
        out.print(cell(failure_summary(run)))
    out.print(cell(f"{len(run.cases)} cases, {len(bad)} FAIL/crash/timeout, "
                   f"{run.seconds:.1f}s"))


JVM_EXIT_CODES = {
    "kernels": "exit codes:\n  0  listed\n  2  usage or set-up error (no JDK, a classpath "
               "entry missing, no kernel found)",
    "parity": "exit codes:\n  0  every case bit-exact or within its bound\n  1  a case FAILs, "
              "crashes or times out\n  2  usage or set-up error (no JDK, a classpath entry "
              "missing, a bad --shape/--formats/--lanes/--jit)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jvm", help="SKaiNET's JVM kernels from a classpath: list, parity",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jsub = p.add_subparsers(dest="jvm_command", metavar="kernels|parity|dispatch")
    jsub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--classpath", required=True, metavar="CP",
                        help="SKaiNET build: jars and class directories, ':'-separated")
    common.add_argument("--jdk", metavar="DIR",
                        help="JDK home (default: JAVA_HOME, then /usr/lib/jvm/*)")
    common.add_argument("--json", action="store_true", help="JSON on stdout")
    k = jsub.add_parser("kernels", parents=[common], help="list the kernels on a classpath",
                        description="List every kernel class a SKaiNET classpath provides "
                                    "(every class implementing an interface of "
                                    "sk.ainet.backend.api.kernel, and packed kernels by "
                                    "their signature): kind, format, provider, how parity "
                                    "judges it or why it does not run it, where found.",
                        epilog=JVM_EXIT_CODES["kernels"],
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    k.set_defaults(func=kernels_cmd)
    q = jsub.add_parser("parity", parents=[common],
                        help="kernel x format x shape x lanes x JIT mode against kernels_ref",
                        description="Run every kernel on the classpath over formats, shapes, "
                                    "lane counts and JIT modes in a JVM worker and judge each "
                                    "case against kernels_ref (bit-exact where the order is "
                                    "modelled, else within the rigorous bound).",
                        epilog=JVM_EXIT_CODES["parity"],
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--formats", metavar="FORMATS",
                   help=f"comma-separated subset of {','.join(JVM_FORMATS)} "
                   "(default: every format a kernel on the classpath implements)")
    q.add_argument("--shape", action="append", metavar="OUTxINxBATCH[+OFFSET]",
                   help="case shape (repeatable; default "
                   + " ".join(f"{o}x{i}x{b}" + (f"+{w}" if w else "")
                              for o, i, b, w in DEFAULT_SHAPES) + ")")
    q.add_argument("--lanes", default=DEFAULT_LANES, metavar="LANES", help=LANES_HELP)
    q.add_argument("--jit", default="pinned,warm", metavar="MODES",
                   help="pinned,warm (default %(default)s)")
    q.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds per call (default %(default)s); a hang kills that JVM and "
                        "the matrix goes on")
    q.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed for the weights and activations (default %(default)s)")
    q.add_argument("-v", "--verbose", action="store_true", help="print each case as it ends")
    q.set_defaults(func=parity_cmd)
    d = jsub.add_parser("dispatch", parents=[common],
                        help="which kernel SKaiNET's KernelRegistry runs for each format",
                        description="Ask SKaiNET's own KernelRegistry (providers installed "
                                    "by KernelServiceLoader, with the --jvm-prop system "
                                    "properties) which provider and kernel each format gets, "
                                    "the fallbacks after it, and why a registered provider "
                                    "is unavailable.",
                        epilog="exit codes:\n  0  answered\n  2  usage or set-up error (no "
                               "JDK, no KernelRegistry on the classpath)",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--formats", metavar="FORMATS",
                   help=f"comma-separated subset of {','.join(JVM_FORMATS)} (default: every "
                   "format the registry has an accessor for)")
    d.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds for the JVM's answer (default %(default)s)")
    for sp in (q, d):
        sp.add_argument("--jvm-prop", action="append", default=[], metavar="KEY=VALUE",
                        help="a Java system property for every JVM (repeatable), e.g. "
                             "skainet.strict.kernels=true or skainet.cpu.vector.enabled=false "
                             "(default: none)")
    d.set_defaults(func=dispatch_cmd)
