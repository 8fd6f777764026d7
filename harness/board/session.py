"""`BoardSession`: the `Target` interface over SSH (paramiko), for a BusyBox board.

The board has no sftp, no rsync and no `timeout`, so everything is done with exec channels
and POSIX shell. `BoardSession` is the facade over four parts, each its own module:
- `harness.board.transport`: the connection (host key checked) and exec channels, with
  typed errors (`CannotConnect`, `LoginRefused`, `ConnectionLost`, `TimedOut`, all
  `HarnessError`s);
- `harness.board.transfer`: push/fetch through `cat`, hash-checked, never a partial file;
- `harness.board.lock`: the board lock and the keeper that ends a run's processes and frees
  the lock as soon as the client goes away, however it goes;
- `harness.board.runner`: one program run (the remote script is built by the pure
  `harness.board.runscript.run_script`): channel pump, timeout policy, markers, verdict.

Remote layout under `remote_dir`: `bin/` (pushed programs), `lib/` (compat links),
`runs/<id>/` (a run's inputs and outputs), `lock/` (held while a run is on the board; see
harness.board.lock).
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import paramiko

from harness.board import lock as board_lock
from harness.board import transfer, transport
from harness.board.profile import BoardProfile
from harness.board.runner import (  # noqa: F401  (MarkerFilter, needed_libraries: re-exported)
    MarkerFilter,
    check_name,
    judge_run,
    needed_libraries,
    run_remote,
)
from harness.board.runscript import RunReport, RunSpec
from harness.board.streams import DEFAULT_MEMORY_CAP, SpillBuffer
from harness.board.target import InputFiles, RunResult, StreamCallback
from harness.board.transfer import ProgressCallback
from harness.board.transport import (  # noqa: F401  (the error types, re-exported)
    CannotConnect,
    ConnectionLost,
    LoginRefused,
    TimedOut,
)
from harness.errors import HarnessError

q = shlex.quote


class BoardSession:
    """One SSH connection to a board, implementing the `Target` interface."""

    def __init__(self, profile: BoardProfile, trust_new: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.profile = profile
        self.name = profile.label
        self.trust_new = trust_new
        self.log = log or (lambda msg: None)
        self.client: paramiko.SSHClient | None = None
        self.hash_tool: str | None = None
        self.has_setsid = True
        self.facts: dict[str, str] = {}
        self.trusted_new_key: str | None = None
        self._lock_depth = 0
        self._keeper: paramiko.Channel | None = None

    # -- connection ---------------------------------------------------------------------

    def __enter__(self) -> BoardSession:
        if self.client is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return transport.where(self.profile)

    def connect(self) -> BoardSession:
        """Open the SSH connection (host key checked), then probe the board's tools.
        Raises `CannotConnect`, `LoginRefused` or `TimedOut` (see harness.board.transport)."""
        self.client, self.trusted_new_key = transport.open_client(self.profile, self.trust_new)
        self._probe()
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @property
    def transport(self) -> paramiko.Transport:
        return transport.active_transport(self.client, self.where)

    def open_channel(self, cmd: str) -> paramiko.Channel:
        """An exec channel running `cmd`; the caller reads it to its end and closes it."""
        return transport.open_channel(self.transport, cmd, self.where,
                                      self.profile.connect_timeout)

    def exec(self, cmd: str, stdin: bytes | None = None,
             timeout: float = 120.0) -> tuple[int, bytes, bytes]:
        """Run a shell command on the board; (exit status, stdout, stderr)."""
        return transport.exec_channel(self.open_channel(cmd), self.where, cmd, stdin, timeout)

    def exec_ok(self, cmd: str, what: str, timeout: float = 120.0) -> bytes:
        status, out, err = self.exec(cmd, timeout=timeout)
        if status != 0:
            msg = err.decode("utf-8", "replace").strip() or f"exit status {status}"
            raise HarnessError(f"{self.where}: {what} failed: {msg}")
        return out

    def _probe(self) -> None:
        """What the board has: hash tool, setsid, timeout, architecture, memory."""
        rd = q(self.profile.remote_dir)
        out = self.exec_ok(
            "for t in sha256sum md5sum setsid timeout; do "
            "command -v $t >/dev/null 2>&1 && echo \"tool $t\"; done; "
            "echo \"arch $(uname -m)\"; "
            "while read k v u; do [ \"$k\" = MemTotal: ] && echo \"memkb $v\"; done "
            "< /proc/meminfo; "
            "echo \"vlimit $(ulimit -v)\"; "
            "while IFS=: read -r n c g; do case $c in memory|'') for f in "
            "/sys/fs/cgroup$g/memory.max /sys/fs/cgroup/memory$g/memory.limit_in_bytes; do "
            "[ -r $f ] && read -r v < $f && echo \"cgmem $v\" && break 2; done;; esac; "
            "done < /proc/self/cgroup 2>/dev/null; "
            f"mkdir -p {rd}/bin {rd}/lib {rd}/runs && echo ready",
            "probing the board",
        ).decode("utf-8", "replace")
        tools = {ln.split()[1] for ln in out.splitlines() if ln.startswith("tool ")}
        for ln in out.splitlines():
            if ln.startswith(("arch ", "memkb ", "vlimit ", "cgmem ")):
                k, _, v = ln.partition(" ")
                self.facts[k] = v
        self.facts["tools"] = " ".join(sorted(tools))
        if "sha256sum" in tools:
            self.hash_tool = "sha256sum"
        elif "md5sum" in tools:
            self.hash_tool = "md5sum"
        else:
            raise HarnessError(f"{self.where}: the board has neither sha256sum nor md5sum; "
                               "transfers cannot be verified")
        self.has_setsid = "setsid" in tools
        if "ready" not in out:
            raise HarnessError(f"{self.where}: cannot create {self.profile.remote_dir}")

    # -- files ----------------------------------------------------------------------------

    def push(self, src: Path | str | bytes, remote_path: str, mode: int = 0o644,
             progress: ProgressCallback | None = None) -> dict[str, object]:
        """Copy a file (or bytes) to `remote_path`; skipped when the board already has it.

        Streams into `cat` under a temporary name beside the target, verifies the board's
        hash of it, then `chmod` and `mv` (atomic on one filesystem). On any failure the
        target is untouched: a dropped connection never leaves a partial file there.
        """
        return transfer.push(self, src, remote_path, mode, progress)

    def fetch(self, remote_path: str) -> bytes:
        """Read a board file back with `cat`, verified against the board's own hash."""
        return transfer.fetch(self, remote_path)

    # -- lock -----------------------------------------------------------------------------

    @property
    def lock_dir(self) -> str:
        return f"{self.profile.remote_dir}/lock"

    def lock_holder(self) -> str | None:
        status, out, _ = self.exec(
            f"[ -d {q(self.lock_dir)} ] || exit 1; "
            f"sed -n 2p {q(self.lock_dir)}/owner 2>/dev/null; true"
        )
        if status != 0:
            return None
        return out.decode("utf-8", "replace").strip() or "an unknown holder"

    @contextmanager
    def lock(self, what: str = "", wait: float | None = None) -> Iterator[None]:
        """Hold the board lock (re-entrant within this session) for as long as a keeper
        channel stays open (see harness.board.lock). Nothing of a run outlives the client:
        however the client ends, the keeper's stdin ends and it cleans up."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        wait = self.profile.lock_wait if wait is None else wait
        with board_lock.hold(self, self.lock_dir, what, wait) as keeper:
            self._keeper = keeper
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                self._keeper = None

    def _register_cleanup(self, run_dir: str) -> None:
        """Have the lock's keeper remove `run_dir` when the lock ends, however it ends."""
        board_lock.register_cleanup(self._keeper, run_dir, self.where)

    def unlock(self) -> tuple[str | None, int]:
        """Remove the lock whoever holds it, ending its run's processes and its keeper;
        returns (the holder it named, how many process groups were still running)."""
        out = self.exec_ok(board_lock.unlock_script(self.profile.remote_dir, self.lock_dir),
                           "removing the lock").decode("utf-8", "replace")
        holder = next((ln[5:] for ln in out.splitlines() if ln.startswith("HELD ")), None)
        return holder, sum(ln.startswith("ENDED ") for ln in out.splitlines())

    # -- running --------------------------------------------------------------------------

    def _libcrypt_compat(self, program: Path) -> tuple[str | None, str | None]:
        """(lib dir for LD_LIBRARY_PATH, note) when the program needs libcrypt.so.1."""
        if "libcrypt.so.1" not in needed_libraries(program):
            return None, None
        rd = self.profile.remote_dir
        dirs = " ".join(q(d) for d in self.profile.lib_dirs)
        out = self.exec_ok(
            f"for d in {dirs}; do [ -e \"$d/libcrypt.so.1\" ] && {{ echo \"HAVE $d\"; exit 0; }}; "
            "done\n"
            f"for d in {dirs}; do if [ -e \"$d/libcrypt.so.2\" ]; then "
            f"ln -sf \"$d/libcrypt.so.2\" {q(rd)}/lib/libcrypt.so.1 && echo \"LINK $d\"; "
            "exit 0; fi; done\necho NONE",
            "setting up the libcrypt compat link",
        ).decode().strip()
        if out.startswith("LINK"):
            return f"{rd}/lib", (f"libcrypt.so.1 -> {out.split(' ', 1)[1]}/libcrypt.so.2 "
                                 f"compat link in {rd}/lib (LD_LIBRARY_PATH)")
        if out.startswith("NONE"):
            return None, "program needs libcrypt.so.1; the board has neither .so.1 nor .so.2"
        return None, None

    def _kill_group(self, pid: int, sig: str) -> None:
        target = f"-{pid}" if self.has_setsid else str(pid)
        try:
            self.exec(f"kill -{sig} {target} 2>/dev/null; true", timeout=10.0)
        except HarnessError:
            pass


    def run(
        self,
        program: Path | str,
        args: Sequence[str] = (),
        inputs: InputFiles | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
        on_stdout: StreamCallback | None = None,
        on_stderr: StreamCallback | None = None,
        env: dict[str, str] | None = None,
        keep: bool = False,
        cwd: str | None = None,
        stage: Sequence[tuple[Path | str, str]] = (),
        spill_dir: Path | str | None = None,
        memory_cap: int = DEFAULT_MEMORY_CAP,
    ) -> RunResult:
        """Push `program` and `inputs`, run it under the board lock, fetch `outputs`.

        `stage` files (local, remote path) are pushed where they persist across runs,
        skipped when the board already has the same bytes; `cwd` is the board directory the
        program starts in (default: the run directory, where inputs and outputs are); each
        of stdout/stderr is held in memory up to `memory_cap` bytes, then spilled whole to a
        file in `spill_dir` (default: the system temp dir)."""
        program = Path(program)
        if not program.is_file():
            raise HarnessError(f"program not found: {program}")
        for name in [*(inputs or {}), *outputs]:
            check_name("input/output file", name)
        check_name("program", program.name)
        rd = self.profile.remote_dir
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        run_dir = f"{rd}/runs/{run_id}"
        t0 = time.perf_counter()
        result = RunResult(program=program.name, exit_status=None, reason="")
        with self.lock(program.name):
            if not keep:
                self._register_cleanup(run_dir)
            remote_prog = self._push_run_files(result, program, run_dir, inputs, stage)
            env = self._run_env(result, program, env)
            result.timings["push"] = time.perf_counter() - t0
            spec = RunSpec(
                tag=f"@@skoracle-{secrets.token_hex(4)}-", run_token=secrets.token_hex(8),
                run_dir=run_dir, argv=(*self.profile.exec_prefix_argv, remote_prog, *args),
                lock_dir=self.lock_dir, env=tuple(env.items()), cwd=cwd, timeout=timeout,
                kill_grace=self.profile.kill_grace,
                sample_interval=self.profile.sample_interval, has_setsid=self.has_setsid)
            t_run = time.perf_counter()
            streams = [SpillBuffer(f"{program.name}-{n}", memory_cap, spill_dir)
                       for n in ("stdout", "stderr")]
            try:
                report = self._run_remote(result, spec, streams, on_stdout, on_stderr)
            except BaseException:
                for sb in streams:
                    sb.discard()
                raise
            result.timings["run"] = time.perf_counter() - t_run
            self._judge_run(result, report)
            self._fetch_outputs(result, run_dir, outputs)
        result.timings["total"] = time.perf_counter() - t0
        return result

    def _push_run_files(self, result: RunResult, program: Path, run_dir: str,
                        inputs: InputFiles | None,
                        stage: Sequence[tuple[Path | str, str]]) -> str:
        """Push the program (to bin/), the staged files and the inputs; the program's
        board path."""
        remote_prog = f"{self.profile.remote_dir}/bin/{program.name}"
        self.push(program, remote_prog, mode=0o755)
        for local, remote in stage:
            res = self.push(Path(local), remote)
            result.staged.append({"local": str(local), "remote": remote,
                                  "skipped": bool(res["skipped"]), "bytes": res["bytes"]})
        for name, src in (inputs or {}).items():
            self.push(src if isinstance(src, bytes) else Path(src), f"{run_dir}/{name}")
        return remote_prog

    def _run_env(self, result: RunResult, program: Path,
                 env: dict[str, str] | None) -> dict[str, str]:
        """The run's environment, with the libcrypt compat directory when it needs one."""
        env = dict(env or {})
        libdir, note = self._libcrypt_compat(program)
        if note:
            result.notes.append(note)
        if libdir:
            prev = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = f"{libdir}:{prev}" if prev else libdir
        return env

    def _fetch_outputs(self, result: RunResult, run_dir: str, outputs: Sequence[str]) -> None:
        """Fetch the outputs; after a failed run a missing one is a note, not an error."""
        t_fetch = time.perf_counter()
        for name in outputs:
            try:
                result.outputs[name] = self.fetch(f"{run_dir}/{name}")
            except HarnessError as exc:
                if result.ok:
                    raise
                result.notes.append(f"output {name} not fetched: {exc}")
        result.timings["fetch"] = time.perf_counter() - t_fetch

    _judge_run = staticmethod(judge_run)

    def _run_remote(self, result: RunResult, spec: RunSpec, streams: list[SpillBuffer],
                    on_stdout: StreamCallback | None, on_stderr: StreamCallback | None
                    ) -> RunReport:
        """Run `spec` on the board (see harness.board.runner.run_remote); the client's
        fallback kill goes through `_kill_group`."""
        return run_remote(self, result, spec, streams, on_stdout, on_stderr,
                          kill=lambda pid, sig: self._kill_group(pid, sig))
