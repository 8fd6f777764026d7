"""`skoracle board ...`: run programs on the board over SSH, and the parity modes.

    skoracle board check      --profile board.toml
    skoracle board run        --profile board.toml [--input F[=NAME]] [--output NAME]
                              [--outdir DIR] [--timeout S] PROGRAM [-- ARGS...]
    skoracle board push       --board root@10.0.0.7 LOCAL REMOTE_PATH
    skoracle board fetch      --board root@10.0.0.7 REMOTE_PATH LOCAL
    skoracle board unlock     --profile board.toml
    skoracle board decode-parity --expect tokens.txt PROGRAM [-- ARGS...]
    skoracle board decode-parity --expect-from MODEL.gguf --tokens 2,105 PROGRAM [-- ARGS...]
    skoracle board kernel-parity --kernels-archive libskainet_kernels.a
                              (no --board/--profile: on the board-in-a-box)
    skoracle board kernel-parity --fixture   (the project's own test archive)

Exit codes: 0 ok; 1 the program failed / parity differs; 2 usage, input or connection error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.atomic import write_atomic
from harness.board import profile as board_profile
from harness.board.parity import (
    DEFAULT_SHAPES,
    DEFAULT_TARGET_TPS,
    DEFAULT_TOKEN_PATTERN,
    DEFAULT_TPS_PATTERN,
    compare_decode,
    kernel_parity,
    read_token_list,
)
from harness.board.profile import resolve_profile
from harness.board.session import BoardSession
from harness.board.target import RunResult
from harness.board.validate import check_outdir, fetch_destination, file_mode, positive_seconds
from harness.errors import HarnessError


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("board connection")
    g.add_argument("--profile", metavar="FILE.toml",
                   help="board profile (TOML; keys listed in `skoracle board --help`) (default: "
                        "none, give --profile or --board)")
    g.add_argument("--board", metavar="USER@HOST[:PORT]", help="board address, overrides the "
                   "profile's (default: the profile's host, user root, port 22)")
    g.add_argument("--identity", metavar="KEY", help="private key file (default: agent, ~/.ssh)")
    g.add_argument("--known-hosts", metavar="FILE", help="known_hosts file to check against "
                   "(default: the profile's known_hosts, else ~/.ssh/known_hosts)")
    g.add_argument("--trust-new", action="store_true",
                   help="accept an UNKNOWN host key and add it to known_hosts (a changed key "
                        "is still refused)")
    g.add_argument("--exec-prefix", metavar="CMD", help="prefix for running programs, e.g. "
                   "'qemu-aarch64 -cpu cortex-a76' (default: the profile's exec_prefix, else "
                   "none)")
    g.add_argument("--lock-wait", type=float, metavar="S", help="seconds to wait for the lock "
                   "(default: the profile's lock_wait, else 60)")


def _session(args: argparse.Namespace) -> BoardSession:
    prof = resolve_profile(
        args.profile, args.board, identity_file=args.identity, known_hosts=args.known_hosts,
        exec_prefix=args.exec_prefix, lock_wait=args.lock_wait,
    )
    sess = BoardSession(prof, trust_new=args.trust_new,
                        log=lambda m: print(f"board: {m}", file=sys.stderr))
    sess.connect()
    if sess.trusted_new_key:
        print(f"board: trusted new host key {sess.trusted_new_key} (added to "
              f"{prof.known_hosts})", file=sys.stderr)
    return sess


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


def _result_json(result: RunResult) -> dict:
    return {
        "program": result.program, "exit_status": result.exit_status, "reason": result.reason,
        "ok": result.ok, "timed_out": result.timed_out, "pid": result.pid,
        "timings": result.timings, "peak_rss_kb": result.peak_rss_kb, "notes": result.notes,
        "outputs": {k: len(v) for k, v in result.outputs.items()},
    }


def _run_program(args: argparse.Namespace, sess: BoardSession, quiet: bool = False) -> RunResult:
    return sess.run(
        args.program, args=args.args, inputs=_inputs(args.input or []),
        outputs=args.output or [], timeout=args.timeout,
        on_stdout=None if quiet else _live(sys.stdout),
        on_stderr=None if quiet else _live(sys.stderr), keep=getattr(args, "keep", False),
    )


def cmd_run(args: argparse.Namespace) -> int:
    check_outdir(Path(args.outdir))
    if not Path(args.program).is_file():
        raise HarnessError(f"program not found: {args.program}")
    _inputs(args.input or [])  # each --input exists, before anything goes to the board
    with _session(args) as sess:
        result = _run_program(args, sess, quiet=args.json)
    _write_outputs(result, Path(args.outdir))
    if args.json:
        print(json.dumps(_result_json(result), indent=1))
    else:
        print(f"board: {result.summary()}", file=sys.stderr)
        for note in result.notes:
            print(f"board: note: {note}", file=sys.stderr)
    return 0 if result.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    with _session(args) as sess:
        holder = sess.lock_holder()
        key = sess.transport.get_remote_server_key()
        from harness.board.hostkeys import fingerprint

        print(f"board {sess.name} ({sess.where})")
        print(f"  host key  {key.get_name()} {fingerprint(key)}")
        print(f"  arch      {sess.facts.get('arch', '?')}")
        mem = sess.facts.get("memkb")
        print(f"  memory    {int(mem) / 1024:.0f} MiB" if mem else "  memory    ?")
        print(f"  tools     {sess.facts.get('tools', '')} (hash: {sess.hash_tool})")
        print(f"  lock      {'held by ' + holder if holder else 'free'}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    if not Path(args.local).is_file():
        raise HarnessError(f"push: {args.local}: no such file")
    with _session(args) as sess:
        res = sess.push(Path(args.local), args.remote, mode=args.mode)
    if res["skipped"]:
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
    print(f"{args.remote} -> {dst}: {len(data)} bytes, verified")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    with _session(args) as sess:
        holder, ended = sess.unlock()
    if holder:
        print(f"lock removed (was held by {holder}); ended {ended} process group(s) of its run")
    else:
        print("lock was free")
    return 0


def cmd_decode_parity(args: argparse.Namespace) -> int:
    if args.expect_from:
        from harness.reference.cli import expect_options, expected_ids

        if not args.tokens:
            raise HarnessError("--expect-from needs --tokens (the prompt ids)")
        expected, ref = expected_ids(args.expect_from, args.tokens, args.expect_n,
                                     args.expect_semantics, **expect_options(args))
        print(f"reference ({ref['semantics_described']}): {' '.join(map(str, expected))}; "
              f"smallest top-2 margin {ref['min_margin']:.4g}", file=sys.stderr)
    else:
        expected = read_token_list(args.expect)
    with _session(args) as sess:
        result = _run_program(args, sess, quiet=not args.verbose)
    if not result.ok:
        print(f"board: {result.summary()}", file=sys.stderr)
        sys.stderr.write(result.stderr.decode("utf-8", "replace")[-2000:])
        return 1
    parity = compare_decode(result.stdout.decode("utf-8", "replace"), expected,
                            args.token_pattern, args.tps_pattern, args.target_tps,
                            stderr=result.stderr.decode("utf-8", "replace"))
    print(parity.report())
    print(f"board: {result.summary()}", file=sys.stderr)
    return 0 if parity.ids_match else 1


def _shape(spec: str) -> tuple[int, int, int]:
    try:
        dims = [int(v) for v in spec.lower().replace("b", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {spec!r}: OUTxIN[xBATCH]") from None
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"bad shape {spec!r}: OUTxIN[xBATCH]")
    return dims[0], dims[1], dims[2]


def cmd_kernel_parity(args: argparse.Namespace) -> int:
    import contextlib

    from harness.board.build import fixture_kernel_archive
    from harness.board.parity import FIXTURE_LABEL, build_kernel_driver

    if args.fixture == (args.kernels_archive is not None):
        raise HarnessError("kernel-parity: give exactly one of --kernels-archive PATH (a "
                           "SKaiNET build) and --fixture (the project's own test archive)")
    archive = fixture_kernel_archive() if args.fixture else Path(args.kernels_archive)
    if args.fixture:
        print(f"kernel parity on {archive}: {FIXTURE_LABEL}", flush=True)
    build_kernel_driver(archive, formats=args.formats)  # fail fast, exit 2
    with contextlib.ExitStack() as stack:
        if args.profile or args.board:
            sess = stack.enter_context(_session(args))
        else:
            from harness.board.sim import BoardSim

            print("board: no --board/--profile: starting the board-in-a-box (qemu-aarch64 "
                  "-cpu cortex-a76)", file=sys.stderr)
            sim = stack.enter_context(BoardSim())
            sess = stack.enter_context(BoardSession(sim.profile))
        result = kernel_parity(sess, archive, formats=args.formats,
                               shapes=args.shape or DEFAULT_SHAPES, seed=args.seed,
                               progress=lambda line: print(line, flush=True),
                               fixture=args.fixture or None)
    for note in result.notes():
        print(f"  {note}")
    for c in result.failed:
        print(f"  FAIL {c.row()}")
    print(result.summary())
    return 0 if result.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    board = subparsers.add_parser(
        "board", help="run programs on the board over SSH; decode and kernel parity",
        description=__doc__, epilog=board_profile.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = board.add_subparsers(dest="board_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("check", help="connect, show host key, tools, memory and lock")
    _add_connection(p)
    p.set_defaults(func=cmd_check)

    def add_program(p: argparse.ArgumentParser) -> None:
        p.add_argument("program", help="local program file to push and run")
        p.add_argument("args", nargs="*", help="its arguments (after --)")
        p.add_argument("--input", action="append", metavar="LOCAL[=NAME]",
                       help="file to push into the run directory (repeatable; default: none)")
        p.add_argument("--output", action="append", metavar="NAME",
                       help="file to fetch back from the run directory (repeatable; default: "
                            "none)")
        p.add_argument("--timeout", type=positive_seconds, metavar="S",
                       help="kill the program's process group after S seconds (default: no "
                            "limit)")
        p.add_argument("--keep", action="store_true", help="keep the remote run directory")

    p = sub.add_parser("run", help="push a program and inputs, run it, fetch outputs")
    _add_connection(p)
    add_program(p)
    p.add_argument("--outdir", default=".", help="where fetched outputs go (default .)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("push", help="copy a file to the board (verified, atomic)")
    _add_connection(p)
    p.add_argument("local", help="local file to copy")
    p.add_argument("remote", help="absolute path on the board")
    p.add_argument("--mode", type=file_mode, default="644",
                   help="octal file mode (default 644)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("fetch", help="copy a file back from the board (verified)")
    _add_connection(p)
    p.add_argument("remote", help="absolute path on the board")
    p.add_argument("local", help="local file to write (temp name, then renamed)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("unlock", help="remove the board lock (after a run that died)")
    _add_connection(p)
    p.set_defaults(func=cmd_unlock)

    p = sub.add_parser("decode-parity", help="compare a decode run's token ids and tok/s")
    _add_connection(p)
    add_program(p)
    expect = p.add_mutually_exclusive_group(required=True)
    expect.add_argument("--expect", metavar="TOKENS",
                        help="reference token ids (JSON array or whitespace/comma separated; "
                             "default: none, give it or --expect-from)")
    from harness.reference.cli import add_expect_from
    add_expect_from(p, expect)
    p.add_argument("--token-pattern", default=DEFAULT_TOKEN_PATTERN,
                   help="regex, group 1 = a token id (default: %(default)s)")
    p.add_argument("--tps-pattern", default=DEFAULT_TPS_PATTERN,
                   help="regex, group 1 = tokens per second (default: %(default)s)")
    p.add_argument("--target-tps", type=float, default=DEFAULT_TARGET_TPS,
                   help="speed target (default %(default)s tok/s, llama.cpp on the SL2610)")
    p.add_argument("--verbose", action="store_true", help="stream the program's output")
    p.set_defaults(func=cmd_decode_parity)

    p = sub.add_parser("kernel-parity",
                       help="real SKaiNET native kernels vs kernels_ref skainet_neon")
    _add_connection(p)
    p.add_argument("--kernels-archive", metavar="libskainet_kernels.a",
                   help="the aarch64 static archive from the linuxarm64 klib (default: none; "
                        "give it or --fixture)")
    p.add_argument("--fixture", action="store_true",
                   help="run the project's own test archive (fixtures/board/kernels, built "
                        "with SKaiNET's flags) instead: checks the harness, not SKaiNET")
    p.add_argument("--formats", type=lambda s: [f for f in s.split(",") if f],
                   help="comma-separated formats (default: all the archive exports)")
    p.add_argument("--shape", action="append", type=_shape, metavar="OUTxIN[xBATCH]",
                   help="case shape (repeatable; default: the built-in set of shapes)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the weights and activations (default %(default)s)")
    p.set_defaults(func=cmd_kernel_parity)
