"""`skoracle board ...`: run programs on the board over SSH, and the parity modes.

    skoracle board check      --profile board.toml [--json]
    skoracle board run        --profile board.toml [--input F[=NAME]] [--output NAME]
                              [--outdir DIR] [--timeout SECONDS] [--env K=V] [--cwd DIR]
                              [--stage LOCAL=REMOTE_DIR/] PROGRAM [-- ARGS...]
    skoracle board push       --board root@10.0.0.7 LOCAL REMOTE_PATH
    skoracle board fetch      --board root@10.0.0.7 REMOTE_PATH LOCAL
    skoracle board unlock     --profile board.toml
    skoracle board decode-parity --expect 2387,2387 | --expect @tokens.txt
                              [--format voicecc|ids|tokens] PROGRAM [-- ARGS...]
    skoracle board decode-parity --expect-from MODEL.gguf --tokens 2,105 PROGRAM [-- ARGS...]
    skoracle board kernel-parity --kernels-archive libskainet_kernels.a
                              (no --board/--profile: on the board-in-a-box)
    skoracle board kernel-parity --fixture   (the project's own test archive)
    skoracle board kernel-parity --fixture --lg-coordinator HOST:PORT --lg-pool pool=sl2610
                              --profile sl2610.toml   (every free board of a labgrid pool)
    skoracle board kernel-parity --fixture-wrong   (its deliberately wrong kernels)

Any action takes a board from a labgrid farm with --lg-coordinator and --lg-place NAME or
--lg-pool TAG=VALUE (reserved, queued behind other users, released at the end; see the
README's "Board farm").

Exit codes: 0 ok; 1 the program failed / parity differs; 2 usage, input or connection error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from harness.atomic import write_atomic
from harness.board import decode
from harness.board import profile as board_profile
from harness.board.parity import DEFAULT_SHAPES, kernel_parity
from harness.board.profile import resolve_profile
from harness.board.session import BoardSession
from harness.board.source import (
    BoardSpec,
    add_lab_options,
    lab_from_args,
    open_boards,
    open_session,
)
from harness.board.target import RunResult
from harness.board.validate import (
    check_outdir,
    check_program_arch,
    env_pair,
    fetch_destination,
    file_mode,
    positive_seconds,
    stage_pair,
)
from harness.errors import HarnessError
from harness.parity.verdict import Verdict


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("board connection")
    g.add_argument("--profile", metavar="FILE.toml",
                   help="board profile (TOML; keys listed in `skoracle board --help`) (default: "
                        "none, give --profile or --board)")
    g.add_argument("--board", metavar="USER@HOST[:PORT]", help="board address, overrides the "
                   "profile's (default: the profile's host, user root, port 22)")
    g.add_argument("--identity", metavar="KEY_FILE",
                   help="private key file (default: agent, ~/.ssh)")
    g.add_argument("--known-hosts", metavar="FILE", help="known_hosts file to check against "
                   "(default: the profile's known_hosts, else ~/.ssh/known_hosts)")
    g.add_argument("--trust-new", action="store_true",
                   help="accept an UNKNOWN host key and add it to known_hosts (a changed key "
                        "is still refused)")
    g.add_argument("--exec-prefix", metavar="CMD", help="prefix for running programs, e.g. "
                   "'qemu-aarch64 -cpu cortex-a76' (default: the profile's exec_prefix, else "
                   "none)")
    g.add_argument("--lock-wait", type=float, metavar="SECONDS",
                   help="seconds to wait for the lock (default: the profile's lock_wait, else 60)")
    add_lab_options(p.add_argument_group(
        "labgrid board farm (the place gives host, port and user; --profile the rest)"))


def _spec(args: argparse.Namespace, in_a_box_when_unset: bool = False) -> BoardSpec:
    return BoardSpec(args.profile, args.board, dict(
        identity_file=args.identity, known_hosts=args.known_hosts,
        exec_prefix=args.exec_prefix, lock_wait=args.lock_wait,
    ), in_a_box_when_unset=in_a_box_when_unset, lab=lab_from_args(args))


def _log(message: str) -> None:
    print(f"board: {message}", file=sys.stderr, flush=True)


def _in_a_box_note() -> None:
    print("board: no --board/--profile: starting the board-in-a-box (qemu-aarch64 "
          "-cpu cortex-a76)", file=sys.stderr)


@contextlib.contextmanager
def _session(args: argparse.Namespace,
             in_a_box_when_unset: bool = False) -> Iterator[BoardSession]:
    """The connected session every `board` subcommand works on (see harness.board.source);
    says so when a new host key was trusted."""
    with open_session(_spec(args, in_a_box_when_unset), on_start=_in_a_box_note,
                      trust_new=args.trust_new, log=_log) as sess:
        if sess.trusted_new_key:
            print(f"board: trusted new host key {sess.trusted_new_key} (added to "
                  f"{sess.profile.known_hosts})", file=sys.stderr)
        yield sess


def _profile(args: argparse.Namespace) -> board_profile.BoardProfile:
    """The profile as far as it is known before connecting (with a labgrid place: the
    profile file and options, the place's address still unknown)."""
    spec = _spec(args)
    if spec.lab:
        from harness.board.lab import LabPlace

        return LabPlace("labgrid place", "localhost", 22, "root").profile(
            spec.profile_file, spec.overrides)
    return resolve_profile(spec.profile_file, spec.board, **spec.overrides)


def _inputs(specs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for spec in specs:
        local, _, name = spec.partition("=")
        path = Path(local)
        if not path.is_file():
            raise HarnessError(f"--input {spec}: {local}: no such file")
        out[name or path.name] = path
    return out


def _live(stream) -> object:
    def write(chunk: bytes) -> None:
        stream.buffer.write(chunk)
        stream.flush()
    return write


def _write_outputs(result: RunResult, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    for name, data in result.outputs.items():
        write_atomic(outdir / name, data)


def _check_program(args: argparse.Namespace) -> None:
    """Everything about PROGRAM and its files that can be checked before connecting: it
    exists, it is built for the board's architecture, every --input exists."""
    program = Path(args.program)
    if not program.is_file():
        raise HarnessError(f"program not found: {args.program}")
    _inputs(args.input or [])
    prof = _profile(args)
    from harness.board.facts import emulated_arch
    from harness.board.validate import BOARD_ARCH

    check_program_arch(program, emulated_arch(prof) or BOARD_ARCH)


def _stage(args: argparse.Namespace, remote_dir: str) -> list[tuple[Path, str]]:
    """--stage pairs with relative board paths placed under the profile's remote_dir."""
    return [(local, remote if remote.startswith("/") else f"{remote_dir}/{remote}")
            for local, remote in (args.stage or [])]


def _run_program(args: argparse.Namespace, sess: BoardSession, quiet: bool = False,
                 on_stdout=None, on_stderr=None, spill_dir: Path | None = None) -> RunResult:
    return sess.run(
        args.program, args=args.args, inputs=_inputs(args.input or []),
        outputs=args.output or [], timeout=args.timeout,
        on_stdout=on_stdout or (None if quiet else _live(sys.stdout)),
        on_stderr=on_stderr or (None if quiet else _live(sys.stderr)),
        keep=getattr(args, "keep", False), env=dict(args.env or []), cwd=args.cwd,
        stage=_stage(args, sess.profile.remote_dir), spill_dir=spill_dir,
    )


def _print_result(result: RunResult) -> None:
    print(f"board: {result.summary()}", file=sys.stderr)
    if len(result.processes) > 1:
        for proc in result.processes:
            print(f"board:   pid {proc['pid']} {proc['comm']}: peak RSS "
                  f"{proc['peak_rss_kb'] / 1024:.1f} MiB", file=sys.stderr)
    for st in result.staged:
        how = "already there (hash matches), skipped" if st["skipped"] else \
            f"pushed {st['bytes']} bytes"
        print(f"board: staged {st['local']} -> {st['remote']}: {how}", file=sys.stderr)
    for note in result.notes:
        print(f"board: note: {note}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    outdir = Path(args.outdir)
    check_outdir(outdir)
    _check_program(args)
    with _session(args) as sess:
        result = _run_program(args, sess, quiet=args.json, spill_dir=outdir)
    _write_outputs(result, outdir)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        _print_result(result)
    return 0 if result.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    from harness.board.facts import program_view, view_lines
    from harness.board.hostkeys import fingerprint

    with _session(args) as sess:
        holder = sess.lock_holder()
        key = sess.transport.get_remote_server_key()
        view = program_view(sess.facts, sess.profile)
        data = {"board": sess.name, "where": sess.where,
                "host_key": f"{key.get_name()} {fingerprint(key)}", **view,
                "tools": sess.facts.get("tools", "").split(), "hash": sess.hash_tool,
                "lock": holder}
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    print(f"board {data['board']} ({data['where']})")
    print(f"  host key  {data['host_key']}")
    for line in view_lines(view):
        print(line)
    print(f"  tools     {' '.join(data['tools'])} (hash: {data['hash']})")
    print(f"  lock      {'held by ' + holder if holder else 'free'}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    if not Path(args.local).is_file():
        raise HarnessError(f"push: {args.local}: no such file")
    with _session(args) as sess:
        res = sess.push(Path(args.local), args.remote, mode=args.mode)
    if args.json:
        print(json.dumps({"local": args.local, "remote": args.remote, **res}, indent=1))
    elif res["skipped"]:
        print(f"{args.remote}: already up to date (hash matches), skipped")
    else:
        secs = float(res["seconds"])  # type: ignore[arg-type]
        mb = int(res["bytes"]) / 1e6  # type: ignore[call-overload]
        print(f"{args.remote}: {mb:.2f} MB in {secs:.2f}s ({mb / max(secs, 1e-9):.1f} MB/s), "
              "verified")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    dst = fetch_destination(args.remote, args.local)
    with _session(args) as sess:
        data = sess.fetch(args.remote)
    try:
        write_atomic(dst, data)
    except OSError as exc:
        raise HarnessError(f"fetch: cannot write {dst}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps({"remote": args.remote, "local": str(dst), "bytes": len(data)}))
    else:
        print(f"{args.remote} -> {dst}: {len(data)} bytes, verified")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    with _session(args) as sess:
        holder, ended = sess.unlock()
    if args.json:
        print(json.dumps({"held_by": holder, "process_groups_ended": ended}))
    elif holder:
        print(f"lock removed (was held by {holder}); ended {ended} process group(s) of its run")
    else:
        print("lock was free")
    return 0


def _patterns(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """Token, tok/s and ms/token patterns: the --format preset, each overridden by its own
    option; a rate pattern and a period pattern exclude each other."""
    fmt = decode.FORMATS[args.format]
    token = args.token_pattern or fmt.token_pattern
    if args.tps_pattern or args.ms_per_token_pattern:
        return token, args.tps_pattern, args.ms_per_token_pattern
    return token, fmt.tps_pattern, fmt.ms_per_token_pattern


def cmd_decode_parity(args: argparse.Namespace) -> int:
    import time

    from harness.board.facts import emulated_arch

    token_rx, tps_rx, ms_rx = _patterns(args)
    out_scan, err_scan = decode.scanners(token_rx, tps_rx, ms_rx)  # exit 2 if bad
    _check_program(args)
    end_ids: dict[int, str] = {}
    if args.end_ids is not None:
        end_ids = {i: "--end-ids" for i in decode.parse_expect(args.end_ids, "--end-ids")}
    ref: dict | None = None
    if args.expect_from:
        from harness.reference.cli import expect_options, expected_ids

        if not args.tokens:
            raise HarnessError("--expect-from needs --tokens (the prompt ids)")
        if args.end_ids is None:
            end_ids = decode.end_token_ids(args.expect_from)
        # the reference stops at the first end token: an early answer costs its own steps
        expected, ref = expected_ids(args.expect_from, args.tokens, args.expect_n,
                                     args.expect_semantics, stop_ids=end_ids,
                                     **expect_options(args))
        cut, at = decode.cut_at_end(expected, end_ids)
        stop = (f"; stops at end token {cut[-1]} (index {at}), {len(expected)} of "
                f"--expect-n {args.expect_n} steps decoded" if at is not None
                else "; no end token within --expect-n")
        print(f"reference ({ref['semantics_described']}): {' '.join(map(str, cut))}{stop}; "
              f"smallest top-2 margin {ref['min_margin']:.4g}", file=sys.stderr)
    else:
        expected = decode.parse_expect(args.expect)
    live_out = _live(sys.stdout) if args.verbose and not args.json else None
    live_err = _live(sys.stderr) if args.verbose and not args.json else None

    def took(scan: decode.DecodeScanner, live):
        def feed(chunk: bytes) -> None:
            scan.feed(chunk, time.perf_counter())
            if live:
                live(chunk)
        return feed

    with _session(args) as sess:
        result = _run_program(args, sess, quiet=True, on_stdout=took(out_scan, live_out),
                              on_stderr=took(err_scan, live_err))
    parity = decode.judge_decode(
        out_scan, err_scan, expected, started=result.started_at, end_ids=end_ids,
        target_tps=args.target_tps, target_label=args.target_label,
        emulated=emulated_arch(sess.profile) is not None)
    code = 0 if decode.decode_verdict(parity, result) == Verdict.PASS else 1
    if args.json:
        out = {"ok": code == 0, "parity": parity.to_dict(), "run": result.to_dict()}
        if ref is not None:
            out["reference"] = {k: ref[k] for k in (
                "semantics_described", "prompt_tokens", "tokens", "n", "stop_reason",
                "end_token", "min_margin", "steps")}
        print(json.dumps(out, indent=1))
        return code
    if not result.ok:
        print(f"board: {result.summary()}", file=sys.stderr)
        sys.stderr.write(result.stderr.decode("utf-8", "replace")[-2000:])
    print(parity.report())
    _print_result(result)
    return code


def _shapes(spec: str) -> list[tuple[int, int, int]]:
    """--shape OUTxIN[xBATCH], several separated by commas (and the option repeatable)."""
    out = []
    for one in (s.strip() for s in spec.split(",")):
        if not one:
            continue
        try:
            dims = [int(v) for v in one.lower().replace("b", "x").split("x")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {one!r}: OUTxIN[xBATCH]") from None
        if len(dims) == 2:
            dims.append(1)
        if len(dims) != 3 or min(dims) <= 0:
            raise argparse.ArgumentTypeError(f"bad shape {one!r}: OUTxIN[xBATCH]")
        out.append((dims[0], dims[1], dims[2]))
    if not out:
        raise argparse.ArgumentTypeError(f"bad shape {spec!r}: OUTxIN[xBATCH]")
    return out


def cmd_kernel_parity(args: argparse.Namespace) -> int:
    from harness.board.build import fixture_kernel_archive
    from harness.board.parity import FIXTURE_LABEL, build_kernel_driver

    fixture = args.fixture or args.fixture_wrong
    if [args.fixture, args.fixture_wrong, args.kernels_archive is not None].count(True) != 1:
        raise HarnessError("kernel-parity: give exactly one of --kernels-archive PATH (a "
                           "SKaiNET build), --fixture (the project's own test archive) and "
                           "--fixture-wrong (its deliberately wrong kernels)")
    if args.host:
        return _host_kernel_parity(args)
    archive = (fixture_kernel_archive(wrong=args.fixture_wrong) if fixture
               else Path(args.kernels_archive))
    say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    if fixture:
        say(f"kernel parity on {archive}: {FIXTURE_LABEL}")
    build_kernel_driver(archive, formats=args.formats)  # fail fast, exit 2
    shapes = [s for group in (args.shape or []) for s in group] or list(DEFAULT_SHAPES)
    spec = _spec(args, in_a_box_when_unset=True)
    if spec.lab and spec.lab.pool:  # every free board of the pool, cases spread over them
        from harness.board.spread import board_sessions, kernel_parity_spread

        with open_boards(spec, log=_log) as profiles, \
                board_sessions(profiles, trust_new=args.trust_new, log=_log) as sessions:
            result = kernel_parity_spread(sessions, archive, formats=args.formats,
                                          shapes=shapes, seed=args.seed, progress=say,
                                          fixture=fixture or None)
    else:
        with _session(args, in_a_box_when_unset=True) as sess:
            result = kernel_parity(sess, archive, formats=args.formats, shapes=shapes,
                                   seed=args.seed, progress=say, fixture=fixture or None)
    return _print_kernel_parity(result, args.json)


def _host_kernel_parity(args: argparse.Namespace) -> int:
    """`kernel-parity --host`: the library built for this machine, each case in a child."""
    from harness.board.hostkernels import (
        HOST_FIXTURE_LABEL,
        fixture_host_library,
        host_kernel_parity,
        host_library,
    )

    fixture = args.fixture or args.fixture_wrong
    spec = _spec(args)
    if spec.profile_file or spec.board or spec.lab:
        raise HarnessError("kernel-parity --host runs on this machine: drop --profile, "
                           "--board and the labgrid options (or drop --host)")
    say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    shapes = [s for group in (args.shape or []) for s in group] or list(DEFAULT_SHAPES)
    if fixture:
        say(f"kernel parity on the host: {HOST_FIXTURE_LABEL}")
    source = (fixture_host_library(wrong=args.fixture_wrong) if fixture
              else host_library(Path(args.kernels_archive)))
    with source as lib:
        result = host_kernel_parity(lib, formats=args.formats, shapes=shapes, seed=args.seed,
                                    progress=say, fixture=fixture,
                                    label=None if fixture else Path(args.kernels_archive))
    return _print_kernel_parity(result, args.json)


def _print_kernel_parity(result, as_json: bool) -> int:
    """The notes, failing rows and summary (or JSON); the exit status."""
    if as_json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0 if result.ok else 1
    for note in result.notes():
        print(f"  {note}")
    for c in result.failed:
        print(f"  FAIL {c.row()}")
    print(result.summary())
    return 0 if result.ok else 1


EXITS = {
    "check": "0 connected (facts printed); 2 usage, profile or connection error",
    "run": "0 the program exited 0; 1 it failed (non-zero exit, signal, timeout, out of "
           "memory); 2 usage or input error (bad option, missing file, a program for another "
           "architecture), or connection error",
    "push": "0 copied (or already there); 2 usage, input or connection error",
    "fetch": "0 copied; 2 usage, missing file, hash mismatch or connection error",
    "unlock": "0 lock removed or already free; 2 usage or connection error",
    "decode-parity": "0 every id matches (up to the first end token) and the run was ok; 1 "
                     "ids differ or the program failed; 2 usage or input error (bad pattern, "
                     "bad ids) or connection error",
    "kernel-parity": "0 every case passes the verdict rule; 1 a case fails; 2 usage or input "
                     "error (no archive, nothing to run) or connection error",
}


def _add_program(p: argparse.ArgumentParser) -> None:
    """PROGRAM, its ARGS and the options of a program run (run, decode-parity)."""
    p.add_argument("program", metavar="PROGRAM", help="local program file to push and run "
                   "(an ELF file must be built for the board's architecture)")
    p.add_argument("args", nargs="*", metavar="ARGS", help="its arguments (after --)")
    p.add_argument("--input", action="append", metavar="LOCAL[=NAME]",
                   help="file to push into the run directory (repeatable; default: none)")
    p.add_argument("--output", action="append", metavar="NAME",
                   help="file to fetch back from the run directory (repeatable; default: "
                        "none)")
    p.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                   help="kill the program's process group after SECONDS (default: no "
                        "limit)")
    p.add_argument("--env", action="append", type=env_pair, metavar="NAME=VALUE",
                   help="environment variable for the program (repeatable; default: "
                        "none), e.g. --env VOICECC_PROFILE=1 --env LD_LIBRARY_PATH=/home/"
                        "root/voicecc-kt")
    p.add_argument("--cwd", metavar="DIR", help="board directory the program starts in "
                   "(absolute, or relative to the run directory; default: the run "
                   "directory, where --input files are)")
    p.add_argument("--stage", action="append", type=stage_pair,
                   metavar="LOCAL=REMOTE_DIR/",
                   help="file pushed to a board path that persists across runs, skipped "
                        "when the board has the same bytes (hash), recorded in the "
                        "result; REMOTE ending in / keeps the file's name, a relative "
                        "REMOTE is under the profile's remote_dir (repeatable; default: "
                        "none)")
    p.add_argument("--keep", action="store_true", help="keep the remote run directory")



def _add_decode_options(p: argparse.ArgumentParser) -> None:
    """The reference, patterns and speed target of `board decode-parity`."""
    expect = p.add_mutually_exclusive_group(required=True)
    expect.add_argument("--expect", metavar="IDS|@FILE",
                        help="reference token ids: '2387,2387', '[1, 2]', or @FILE holding "
                             "them (JSON array or whitespace/comma separated; default: none, "
                             "give it or --expect-from)")
    from harness.reference.cli import add_expect_from
    add_expect_from(p, expect)
    p.add_argument("--end-ids", metavar="IDS",
                   help="end tokens: both sides are compared up to the first of them, "
                        "and the --expect-from reference stops there (default: the GGUF's "
                        "eos/eot/eom ids and end-of-turn pieces with --expect-from, else none)")
    p.add_argument("--format", choices=sorted(decode.FORMATS), default=decode.DEFAULT_FORMAT,
                   help="named output format, sets the patterns below (default %(default)s)")
    p.add_argument("--token-pattern", metavar="REGEX",
                   help="regex with exactly one group = a token id; lines where it is empty "
                        "are skipped (default: the --format's)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--tps-pattern", metavar="REGEX",
                       help="regex, its one group = a RATE in tokens per second (default: the "
                            "--format's)")
    speed.add_argument("--ms-per-token-pattern", metavar="REGEX",
                       help="regex, its one group = a PERIOD in milliseconds per token "
                            "(default: the --format's)")
    p.add_argument("--target-tps", type=float, default=decode.DEFAULT_TARGET_TPS,
                   metavar="TOK_PER_S", help="speed target (default %(default)s tok/s: "
                   f"{decode.DEFAULT_TARGET_LABEL})")
    p.add_argument("--target-label", metavar="TEXT", default=decode.DEFAULT_TARGET_LABEL,
                   help="what the target is, printed with it (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="stream the program's output")
    p.add_argument("--json", action="store_true",
                   help="print the comparison and the run as JSON")


def _add_kernel_options(p: argparse.ArgumentParser) -> None:
    """The archive, formats, shapes and seed of `board kernel-parity`."""
    p.add_argument("--kernels-archive", metavar="ARCHIVE",
                   help="the aarch64 static archive libskainet_kernels.a from the linuxarm64 "
                        "klib (default: none; give it or --fixture)")
    p.add_argument("--fixture", action="store_true",
                   help="run the project's own test archive (fixtures/board/kernels, built "
                        "with SKaiNET's flags) instead: checks the harness, not SKaiNET")
    p.add_argument("--fixture-wrong", action="store_true",
                   help="run the project's archive of deliberately wrong kernels "
                        "(fixtures/board/kernels_wrong, one per dense, BitNet, ternary and "
                        "lm-head kind): every kernel in it must FAIL")
    p.add_argument("--host", action="store_true",
                   help="run the kernels on this machine instead of a board: ARCHIVE is a "
                        "build for this host (lib.so, lib.a linked here into a temporary "
                        ".so, or SKaiNET's native-cpu JAR), its packed matmuls and dense "
                        "GEMMs each case in a child process through ctypes; with --fixture, "
                        "the project's scalar fixtures/host kernels; on x86-64 judged "
                        "bit-exact against skainet_x86, elsewhere (or where that order was "
                        "not established) within the rigorous bound")
    p.add_argument("--formats", type=lambda s: [f for f in s.split(",") if f], metavar="LIST",
                   help="comma-separated formats, e.g. Q8_0,Q4_K; also F32, BF16, F16 (dense "
                        "GEMM), TQ2_0 (BitNet GEMV), TERNARY, TERNARY4 (ternary GEMV, "
                        "lm-head) (default: all the archive exports)")
    p.add_argument("--shape", action="append", type=_shapes, metavar="OUTxIN[xBATCH][,...]",
                   help="case shapes: repeat the option or separate shapes with commas "
                        "(default: the built-in set of shapes)")
    p.add_argument("--seed", type=int, default=0, metavar="SEED",
                   help="seed for the weights and activations (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the cases and summary as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    board = subparsers.add_parser(
        "board", help="run programs on the board over SSH; decode and kernel parity",
        description=__doc__, epilog=board_profile.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = board.add_subparsers(dest="board_command", metavar="ACTION")
    sub.required = True

    def action(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description,
                           epilog=f"Exit codes: {EXITS[name]}.")
        _add_connection(p)
        return p

    p = action("check", "connect; show host key, what programs see, tools and lock",
               "Connect to the board and show its host key fingerprint, the architecture "
               "and memory a program run there sees (under qemu-user on the board-in-a-box: "
               "the emulated architecture and the memory cap), its tools and the lock.")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=cmd_check)

    p = action("run", "push a program and inputs, run it, fetch outputs",
               "Push PROGRAM (and --input/--stage files), run it on the board under the "
               "board lock in a session of its own, stream its output, fetch --output files. "
               "Reports the exit reason, the peak memory of the whole run (every process, "
               "sampled from /proc, and their sum), an OOM kill of any process of the run as "
               "'out of memory', and the processes that outlived the program and had to be "
               "killed. Output past 64 MiB per stream spills to a file in --outdir.")
    _add_program(p)
    p.add_argument("--outdir", default=".", metavar="DIR",
                   help="where fetched outputs (and spilled output) go (default .)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_run)

    p = action("push", "copy a file to the board (verified, atomic)",
               "Copy LOCAL to REMOTE_PATH on the board through `cat` under a temporary name, "
               "check the board's hash of it, then rename; skipped when the board already has "
               "the same bytes.")
    p.add_argument("local", metavar="LOCAL", help="local file to copy")
    p.add_argument("remote", metavar="REMOTE_PATH", help="absolute path on the board")
    p.add_argument("--mode", type=file_mode, default="644", metavar="MODE",
                   help="octal file mode (default 644)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_push)

    p = action("fetch", "copy a file back from the board (verified)",
               "Copy REMOTE_PATH from the board into LOCAL (a file, or a directory to put it "
               "in), checked against the board's own hash; written under a temporary name, "
               "then renamed.")
    p.add_argument("remote", metavar="REMOTE_PATH", help="absolute path on the board")
    p.add_argument("local", metavar="LOCAL", help="local file or directory to write into")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_fetch)

    p = action("unlock", "remove the board lock (after a run that died)",
               "Remove the board lock whoever holds it, ending its run's processes (for a "
               "lock left behind by a client that died).")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_unlock)

    p = action("decode-parity", "compare a decode run's token ids, timing and speed",
               "Run a decode program on the board and compare the token ids it prints with a "
               "reference (--expect ids or @FILE, or --expect-from MODEL.gguf: the reference "
               "decode, cut after the GGUF's first end token); both sides are compared up to "
               "their first end token. Reports load time, time to first token, per-step "
               "times (from [perf] step lines, else from when token lines arrived), ms/token "
               "and tok/s against --target-tps. Output formats: "
               + decode.formats_help() + ".")
    _add_program(p)
    _add_decode_options(p)
    p.set_defaults(func=cmd_decode_parity)

    p = action("kernel-parity", "real SKaiNET native kernels vs kernels_ref skainet_neon",
               "Link the project's C driver against a libskainet_kernels.a, run every "
               "exported kernel it knows (packed matmuls, dense fp32/bf16/fp16 GEMM, BitNet "
               "and ternary GEMV, ternary lm-head) on the board (the board-in-a-box when no "
               "--board/--profile is given) and judge each output with the one verdict rule.")
    _add_kernel_options(p)
    p.set_defaults(func=cmd_kernel_parity)
