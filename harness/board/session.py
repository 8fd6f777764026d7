"""`BoardSession`: the `Target` interface over SSH (paramiko), for a BusyBox board.

The board has no sftp, no rsync and no `timeout`, so everything is done with exec channels
and POSIX shell: files are streamed into `cat` under a temporary name, checked with the
board's `sha256sum` (or `md5sum`), then `chmod`ed and `mv`ed into place (a transfer that
ends short removes its temporary on the board); a run is started in its own session/process
group (`setsid`) and reports its PID first thing; a board-side watchdog keeps the clock and
kills the whole group (TERM, then KILL) when time is up, client or no client; the script that
does it, samples every process of the run from /proc, kills what outlives the program (found
by a run tag in its environment) and reads the kernel log's OOM lines is built by a pure
function, `harness.board.runscript.run_script`; a lock
directory created with `mkdir` (atomic) keeps two runs from sharing the board's memory, and
its keeper process (one channel open as long as the lock is held) ends the run's processes
and frees the lock as soon as the client goes away, however it goes.

Every channel is waited for until the board closes it: dropbear keeps a channel slot
(of a small fixed number per connection) for one the client closes while its command
still runs, so closing early would exhaust a long session.

Remote layout under `remote_dir`: `bin/` (pushed programs), `lib/` (compat links),
`runs/<id>/` (a run's inputs and outputs), `lock/` (held while a run is on the board:
`owner` = token, holder, keeper PID + start time + its `cat` PID; `procs` = the running
program's and watchdog's process groups; `cleanup` = run directories to remove).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import secrets
import select
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import paramiko

from harness.board.hostkeys import (
    RefusingPolicy,
    changed_key_message,
    known_hosts_name,
    load_known_hosts,
)
from harness.board.profile import BoardProfile
from harness.board.runscript import (
    RunReport,
    RunSpec,
    read_report,
    run_script,
    tagged_sh,
)
from harness.board.streams import DEFAULT_MEMORY_CAP, SpillBuffer
from harness.board.target import InputFiles, RunResult, StreamCallback, exit_reason, oom_line
from harness.board.validate import connect_failure
from harness.errors import HarnessError

q = shlex.quote


class MarkerFilter:
    """Takes the runner's own lines (`<tag><key> <value>\n`, tag random per run) out of a
    program's stderr as it streams, passing everything else through unchanged."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.buf = b""
        self.found: dict[str, str] = {}
        self.lines: list[tuple[str, str]] = []  # every report line, in order

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while True:
            i = self.buf.find(self.tag)
            if i < 0:
                keep = next((k for k in range(min(len(self.tag) - 1, len(self.buf)), 0, -1)
                             if self.buf.endswith(self.tag[:k])), 0)
                cut = len(self.buf) - keep
                out, self.buf = out + self.buf[:cut], self.buf[cut:]
                return out
            j = self.buf.find(b"\n", i)
            out += self.buf[:i]
            if j < 0:
                self.buf = self.buf[i:]
                return out
            key, _, value = self.buf[i + len(self.tag):j].partition(b" ")
            k, v = key.decode("ascii", "replace"), value.decode("utf-8", "replace")
            self.found[k] = v
            self.lines.append((k, v))
            self.buf = self.buf[j + 1:]

    def finish(self) -> bytes:
        rest, self.buf = self.buf, b""
        return rest

_CHUNK = 1 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")
ProgressCallback = Callable[[int, int], None]


def _check_name(kind: str, name: str) -> str:
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise HarnessError(
            f"{kind} name {name!r}: use a plain file name (letters, digits, . _ + -), no paths"
        )
    return name


def needed_libraries(program: Path) -> list[str]:
    """DT_NEEDED entries of an ELF file (empty for a static or non-ELF file)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with program.open("rb") as fh:
            elf = ELFFile(fh)
            out: list[str] = []
            for sec in elf.iter_sections():
                if isinstance(sec, DynamicSection):
                    out += [t.needed for t in sec.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
            return out
    except (ELFError, OSError, ValueError):
        return []


def _close_quietly(chan: paramiko.Channel) -> None:
    """Close a channel; on a dead connection closing raises, which must not hide the error
    that is already being reported."""
    try:
        chan.close()
    except (paramiko.SSHException, OSError, EOFError):
        pass


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
        p = self.profile
        return f"{p.user}@{p.host}:{p.port}"

    def connect(self) -> BoardSession:
        """Open the SSH connection (host key checked), then probe the board's tools."""
        p = self.profile
        client = paramiko.SSHClient()
        if p.host_key_fingerprint:
            policy = RefusingPolicy(None, p.port, pinned=p.host_key_fingerprint)
        else:
            load_known_hosts(client, p.known_hosts)
            policy = RefusingPolicy(p.known_hosts, p.port, trust_new=self.trust_new)
        client.set_missing_host_key_policy(policy)
        key_file = None
        if p.identity_file:
            key_file = str(Path(p.identity_file).expanduser())
            if not Path(key_file).is_file():
                raise HarnessError(f"identity_file {key_file}: no such file")
        try:
            sock = self._tcp_connect()
            client.connect(
                p.host, port=p.port, username=p.user, key_filename=key_file, sock=sock,
                timeout=p.connect_timeout, banner_timeout=p.connect_timeout,
                auth_timeout=p.connect_timeout, allow_agent=True,
                look_for_keys=key_file is None,
            )
        except HarnessError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HarnessError(changed_key_message(
                known_hosts_name(p.host, p.port), exc.key, exc.expected_key, p.known_hosts
            )) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            how = f"key {key_file}" if key_file else "the ssh agent and ~/.ssh/id_* keys"
            raise HarnessError(f"{self.where}: authentication failed with {how}: {exc}") from None
        except TimeoutError:
            client.close()
            raise HarnessError(
                f"{self.where}: cannot connect: timeout (no answer within "
                f"{p.connect_timeout:g}s, connect_timeout: host down, wrong address, or "
                "packets dropped)"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            if isinstance(exc, paramiko.SSHException | EOFError) and (
                    "timed out" in str(exc) or "timeout" in str(exc).lower()):
                raise self._handshake_timeout() from None
            raise HarnessError(f"{self.where}: cannot connect: {connect_failure(exc)}") \
                from None
        self.trusted_new_key = policy.added
        transport = client.get_transport()
        assert transport is not None
        if p.keepalive > 0:
            transport.set_keepalive(p.keepalive)
        try:  # many small request/reply exchanges: do not let Nagle hold them back
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self.client = client
        self._probe()
        return self

    def _handshake_timeout(self) -> HarnessError:
        t = self.profile.connect_timeout
        return HarnessError(f"{self.where}: SSH handshake timed out: the TCP connection was "
                            f"accepted but no SSH server answered within {t:g}s "
                            "(connect_timeout); is this the board's SSH port?")

    def _tcp_connect(self) -> socket.socket:
        """The TCP connection, once the peer has started talking: a peer that accepts and
        stays silent is reported as a handshake timeout, not left to paramiko's banner read
        (which ends in an unrelated "No existing session")."""
        p = self.profile
        sock = socket.create_connection((p.host, p.port), timeout=p.connect_timeout)
        try:
            ready, _, _ = select.select([sock], [], [], p.connect_timeout)
        except BaseException:
            sock.close()
            raise
        if not ready:
            sock.close()
            raise self._handshake_timeout()
        return sock

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @property
    def transport(self) -> paramiko.Transport:
        t = self.client.get_transport() if self.client else None
        if t is None or not t.is_active():
            raise HarnessError(f"{self.where}: not connected (connection lost?)")
        return t

    def _lost(self, what: str, exc: BaseException | None = None) -> HarnessError:
        detail = f": {exc}" if exc else ""
        return HarnessError(f"{self.where}: connection lost while {what}{detail}")

    def _open(self, cmd: str) -> paramiko.Channel:
        try:
            chan = self.transport.open_session(timeout=self.profile.connect_timeout)
            chan.exec_command(cmd)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost("opening a channel", exc) from None
        return chan

    def exec(self, cmd: str, stdin: bytes | None = None,
             timeout: float = 120.0) -> tuple[int, bytes, bytes]:
        """Run a shell command on the board; (exit status, stdout, stderr)."""
        chan = self._open(cmd)
        out, err = [], []
        deadline = time.monotonic() + timeout
        first = cmd.strip().splitlines()[0] if cmd.strip() else cmd
        try:
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                while chan.recv_ready():
                    out.append(chan.recv(_CHUNK))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(_CHUNK))
                if chan.eof_received or chan.closed:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"{self.where}: {first!r} took over {timeout:g}s")
                select.select([chan], [], [], min(left, 1.0))
            while chan.recv_ready():  # what arrived between the last read and the EOF
                out.append(chan.recv(_CHUNK))
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(_CHUNK))
            if not chan.status_event.wait(max(1.0, deadline - time.monotonic())):
                raise HarnessError(f"{self.where}: {first!r}: no exit status")
            status = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(f"running {first!r}", exc) from None
        finally:
            _close_quietly(chan)
        if status == -1:
            raise self._lost(f"running {first!r}")
        return status, b"".join(out), b"".join(err)

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

    def _digest(self, data_or_path: bytes | Path) -> str:
        h = hashlib.sha256() if self.hash_tool == "sha256sum" else hashlib.md5()
        if isinstance(data_or_path, bytes):
            h.update(data_or_path)
        else:
            with data_or_path.open("rb") as fh:
                for block in iter(lambda: fh.read(_CHUNK), b""):
                    h.update(block)
        return h.hexdigest()

    # -- files ----------------------------------------------------------------------------

    def push(self, src: Path | str | bytes, remote_path: str, mode: int = 0o644,
             progress: ProgressCallback | None = None) -> dict[str, object]:
        """Copy a file (or bytes) to `remote_path`; skipped when the board already has it.

        Streams into `cat` under a temporary name beside the target, verifies the board's
        hash of it, then `chmod` and `mv` (atomic on one filesystem). On any failure the
        target is untouched: a dropped connection never leaves a partial file there.
        """
        data = src if isinstance(src, bytes) else None
        path = None if data is not None else Path(src)  # type: ignore[arg-type]
        if path is not None and not path.is_file():
            raise HarnessError(f"push: {path}: no such file")
        size = len(data) if data is not None else path.stat().st_size  # type: ignore[union-attr]
        want = self._digest(data if data is not None else path)  # type: ignore[arg-type]
        rdir, _, base = remote_path.rpartition("/")
        if not base or not rdir.startswith("/"):
            raise HarnessError(f"push: remote path {remote_path!r} must be absolute")
        tmp = f"{rdir}/.{base}.part-{secrets.token_hex(4)}"
        f, t, ht = q(remote_path), q(tmp), self.hash_tool
        script = (
            f"mkdir -p {q(rdir)} || exit 3\n"
            f"rm -f {q(rdir)}/.{q(base)}.part-* 2>/dev/null\n"
            f"if [ -f {f} ]; then set -- $({ht} < {f}); "
            f"if [ \"$1\" = {want} ]; then chmod {mode:o} {f} && echo SKIP && exit 0; fi; fi\n"
            f"trap 'rm -f {t}; exit 6' HUP INT TERM PIPE\n"
            "echo SEND\n"
            f"cat > {t} || {{ rm -f {t}; exit 4; }}\n"
            f"set -- $(ls -ln {t}); [ \"$5\" = {size} ] || {{ rm -f {t}; echo SHORT; exit 5; }}\n"
            f"set -- $({ht} < {t})\n"
            f"if [ \"$1\" = {want} ]; then chmod {mode:o} {t} && mv -f {t} {f} && echo DONE "
            "&& exit 0; fi\n"
            f"rm -f {t}; echo \"MISMATCH $1\"; exit 5\n"
        )
        t0 = time.perf_counter()
        what = f"pushing {remote_path}"
        chan = self._open(script)
        try:
            first = self._read_line(chan, what)
            if first == "SKIP":
                chan.status_event.wait(60.0)
                return {"skipped": True, "bytes": 0, "seconds": time.perf_counter() - t0}
            if first != "SEND":
                err = self._drain_stderr(chan)
                raise HarnessError(f"{self.where}: cannot write {remote_path}: "
                                   f"{err or first or 'no answer'}")
            sent = 0
            if data is not None:
                for i in range(0, size, _CHUNK):
                    chan.sendall(data[i:i + _CHUNK])
                    sent = min(size, i + _CHUNK)
                    if progress:
                        progress(sent, size)
            else:
                with path.open("rb") as fh:  # type: ignore[union-attr]
                    for block in iter(lambda: fh.read(_CHUNK), b""):
                        chan.sendall(block)
                        sent += len(block)
                        if progress:
                            progress(sent, size)
            chan.shutdown_write()
            rest = b""
            while True:
                while chan.recv_ready():
                    rest += chan.recv(4096)
                if chan.eof_received or chan.closed:
                    while chan.recv_ready():
                        rest += chan.recv(4096)
                    break
                select.select([chan], [], [], 1.0)
            chan.status_event.wait(600.0)
            status = chan.recv_exit_status() if chan.status_event.is_set() else -1
        except KeyboardInterrupt:
            self.log(f"push of {remote_path} interrupted: {self._discard_partial(chan, tmp)}")
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if chan.exit_status_ready() and chan.recv_exit_status() not in (0, -1):
                raise HarnessError(
                    f"{self.where}: push of {remote_path} failed on the board (status "
                    f"{chan.recv_exit_status()}: {self._drain_stderr(chan) or 'no message'}); "
                    f"target untouched") from None
            raise HarnessError(
                f"{self.where}: connection lost while pushing {remote_path} ({exc}); "
                f"nothing was written at {remote_path}; {self._discard_partial(chan, tmp)}"
            ) from None
        finally:
            _close_quietly(chan)
        if status == -1:
            raise HarnessError(f"{self.where}: connection lost while pushing {remote_path}; "
                               f"nothing was written at {remote_path}; "
                               f"{self._discard_partial(chan, tmp)}")
        if status != 0:
            text = rest.decode("utf-8", "replace").strip()
            raise HarnessError(f"{self.where}: push of {remote_path} failed "
                               f"(status {status}: {text or 'no message'}); target untouched")
        return {"skipped": False, "bytes": size, "seconds": time.perf_counter() - t0}

    def _discard_partial(self, chan: paramiko.Channel, tmp: str) -> str:
        """Make sure a push's temporary file is gone after a failed transfer; says what
        happened to it. The board side removes it itself when its stdin ends short (sent
        here first) or its channel closes; this removes it from the client's side too."""
        try:
            chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError):
            pass
        try:
            status, _, err = self.exec(f"rm -f {q(tmp)} && [ ! -e {q(tmp)} ]", timeout=15.0)
        except HarnessError as exc:
            return (f"could not check that the partial file {tmp} is gone ({exc}); the "
                    "board removes it when the channel closes, and the next push into that "
                    "directory clears any left")
        if status != 0:
            why = err.decode("utf-8", "replace").strip() or f"status {status}"
            return f"could NOT remove the partial file {tmp} on the board: {why}"
        return f"partial file {tmp} removed"

    def _read_line(self, chan: paramiko.Channel, what: str, limit: float = 60.0) -> str:
        buf = b""
        deadline = time.monotonic() + limit
        while b"\n" not in buf:
            if chan.recv_ready():
                buf += chan.recv(1)
            elif chan.exit_status_ready() or chan.closed:
                break
            elif time.monotonic() > deadline:
                raise HarnessError(f"{self.where}: no answer within {limit:g}s while {what}")
            else:
                select.select([chan], [], [], 0.05)
        return buf.decode("utf-8", "replace").strip()

    @staticmethod
    def _drain_stderr(chan: paramiko.Channel) -> str:
        err = b""
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(4096)
        return err.decode("utf-8", "replace").strip()

    def fetch(self, remote_path: str) -> bytes:
        """Read a board file back with `cat`, verified against the board's own hash."""
        f = q(remote_path)
        status, out, err = self.exec(
            f"[ -f {f} ] || {{ echo 'no such file' >&2; exit 3; }}\n"
            f"set -- $({self.hash_tool} < {f}); echo \"$1\" >&2; exec cat {f}",
            timeout=600.0,
        )
        lines = err.decode("utf-8", "replace").split()
        if status != 0:
            raise HarnessError(f"{self.where}: fetch {remote_path}: "
                               f"{' '.join(lines) or f'status {status}'}")
        got = self._digest(out)
        if not lines or lines[0] != got:
            raise HarnessError(f"{self.where}: fetch {remote_path}: hash mismatch (board "
                               f"{lines[0] if lines else '?'}, received {got})")
        return out

    # -- lock -----------------------------------------------------------------------------

    @property
    def lock_dir(self) -> str:
        return f"{self.profile.remote_dir}/lock"

    def _lock_sh(self) -> str:
        """Shell functions the lock scripts share (BusyBox sh).

        `pst PID`: the process's start time (field 22 of /proc/PID/stat, after the command
        name, which may hold spaces), empty when it is gone; a PID with another start time
        is a reused one. `endrun`: SIGKILL every process group recorded in the lock's `procs`
        (`PID START g|p` lines, written by the run wrapper), unless the PID now names a newer
        process: a group's number is not reused while any member lives, so a group whose
        leader is gone is still ours. `droplock`: remove the run directories the holder
        registered (only under runs/), then the lock. Their variables start with `_` so
        they do not clobber the caller's.
        """
        runs = q(f"{self.profile.remote_dir}/runs/")
        return (
            'pst() { l=; { read -r l < /proc/$1/stat; } 2>/dev/null; '
            'set -- ${l##*") "}; echo "${20}"; }\n'
            'endrun() { [ -f "$L/procs" ] || return 0; while read -r _i _t _k; do '
            '[ -n "$_i" ] || continue; if [ "$_k" = e ]; then '
            f'for _x in $({tagged_sh("$_i")}); do kill -KILL $_x 2>/dev/null; done; continue; '
            'fi; _c=$(pst $_i); '
            'if [ -z "$_c" ] || [ "$_c" = "$_t" ]; then '
            'if [ "$_k" = g ]; then kill -KILL -$_i; else kill -KILL $_i; fi 2>/dev/null '
            '&& echo "ENDED $_i"; fi; done < "$L/procs"; }\n'
            'droplock() { endrun; [ -f "$L/cleanup" ] && while read -r _d; do case $_d in '
            f'{runs}?*) rm -rf "$_d";; esac; done < "$L/cleanup"; rm -rf "$L"; }}\n'
            f"L={q(self.lock_dir)}\n"
        )

    def lock_holder(self) -> str | None:
        status, out, _ = self.exec(
            f"[ -d {q(self.lock_dir)} ] || exit 1; "
            f"sed -n 2p {q(self.lock_dir)}/owner 2>/dev/null; true"
        )
        if status != 0:
            return None
        return out.decode("utf-8", "replace").strip() or "an unknown holder"

    def _keeper_script(self, token: str, info: str) -> str:
        """The board side of a held lock: one channel that lives as long as the lock.

        Takes the lock (`mkdir`, atomic) or, when the holder's keeper process is gone (its
        client died and nothing cleaned up), takes it over under a second `mkdir` mutex and
        ends that run's processes first. Then it records itself in `owner` (token, who,
        keeper PID + start time) and copies its stdin into `cleanup` (run directories the
        client registers) until the stdin ends: the client closing it, or the connection
        dropping when the client is killed. Either way (or on HUP/TERM) it then ends the run's
        recorded processes, removes the registered run directories and frees the lock. Its
        output goes to /dev/null once it has answered, so a write cannot kill it (SIGPIPE)
        halfway through that cleanup.
        """
        return (
            self._lock_sh()
            + 'rel() { t=; { read -r t < "$L/owner"; } 2>/dev/null; '
            f'[ "$t" = {token} ] && droplock; }}\n'
            "took=\n"
            'if ! mkdir "$L" 2>/dev/null; then\n'
            ' if mkdir "$L.takeover" 2>/dev/null; then\n'
            '  t=; h=; k=; ks=; { read -r t; read -r h; read -r k ks c; } < "$L/owner" '
            "2>/dev/null\n"
            '  if [ -n "$k" ] && [ "$(pst $k)" != "$ks" ]; then\n'
            '   n=$(droplock | wc -l); took="$h|$n"; mkdir "$L" 2>/dev/null || took=\n'
            "  fi\n"
            '  rmdir "$L.takeover"\n'
            " fi\n"
            ' [ -n "$took" ] || { echo BUSY; sed -n 2p "$L/owner" 2>/dev/null; exit 0; }\n'
            "fi\n"
            "exec 3<&0\n"
            'cat <&3 >> "$L/cleanup" & c=$!\n'
            "exec 3<&-\n"
            f'printf \'%s\\n\' {token} {q(info)} "$$ $(pst $$) $c" > "$L/owner"\n'
            "trap 'kill $c 2>/dev/null; rel; exit 0' HUP INT TERM\n"
            'echo "GOT $took"\n'
            "exec >/dev/null 2>&1\n"  # the client may be gone when it cleans up: no SIGPIPE
            "wait $c\n"
            "rel\n"
        )

    @contextmanager
    def lock(self, what: str = "", wait: float | None = None) -> Iterator[None]:
        """Hold the board lock (re-entrant within this session) for as long as a keeper
        channel stays open; see `_keeper_script`. Nothing of a run outlives the client:
        however the client ends, the keeper's stdin ends and it cleans up."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        wait = self.profile.lock_wait if wait is None else wait
        token = secrets.token_hex(8)
        info = (f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}" + (f" running {what}" if what else ""))
        script = self._keeper_script(token, info)
        t0 = time.monotonic()
        announced = False
        while True:
            chan = self._open(script)
            first = ""
            try:
                first = self._read_line(chan, "taking the board lock")
                if first.startswith("GOT"):
                    break
                holder = self._read_line(chan, "reading the lock holder") or "an unknown holder"
                chan.status_event.wait(10.0)
            finally:
                if not first.startswith("GOT"):
                    _close_quietly(chan)
            if first != "BUSY":
                raise HarnessError(f"{self.where}: taking the board lock failed: "
                                   f"{self._drain_stderr(chan) or first or 'no answer'}")
            if time.monotonic() - t0 >= wait:
                raise HarnessError(
                    f"{self.name}: board is busy: {self.lock_dir} held by {holder} for over "
                    f"{wait:g}s (lock_wait). If that run is gone, free it with "
                    f"`skoracle board unlock`"
                )
            if not announced:
                self.log(f"board busy (held by {holder}); waiting up to {wait:g}s")
                announced = True
            time.sleep(0.25)
        took = first[3:].strip()
        if took:
            holder, _, ended = took.rpartition("|")
            self.log(f"took over a stale lock held by {holder or 'an unknown holder'} (its "
                     f"client is gone and left it behind); ended {ended} of its process "
                     "groups still running")
        self._keeper = chan
        self._lock_depth = 1
        try:
            yield
        finally:
            self._lock_depth = 0
            self._keeper = None
            try:  # end of stdin: the keeper ends the run's processes and frees the lock
                chan.shutdown_write()
                chan.status_event.wait(30.0)
            except (paramiko.SSHException, OSError, EOFError):
                pass  # connection gone: the board-side keeper sees it and cleans up
            finally:
                _close_quietly(chan)

    def _register_cleanup(self, run_dir: str) -> None:
        """Have the lock's keeper remove `run_dir` when the lock ends, however it ends."""
        if self._keeper is None:
            raise HarnessError("internal: a run directory registered outside the lock")
        try:
            self._keeper.sendall(f"{run_dir}\n".encode())
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost("registering the run directory", exc) from None

    def unlock(self) -> tuple[str | None, int]:
        """Remove the lock whoever holds it, ending its run's processes and its keeper;
        returns (the holder it named, how many process groups were still running)."""
        out = self.exec_ok(
            self._lock_sh()
            + '[ -d "$L" ] || exit 0\n'
            't=; h=; k=; ks=; c=; { read -r t; read -r h; read -r k ks c; } < "$L/owner" '
            "2>/dev/null\n"
            'echo "HELD ${h:-an unknown holder}"\n'
            "droplock\n"
            '[ -n "$k" ] && [ "$(pst $k)" = "$ks" ] && kill -TERM $k $c 2>/dev/null\n'
            "true\n",
            "removing the lock",
        ).decode("utf-8", "replace")
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
            _check_name("input/output file", name)
        _check_name("program", program.name)
        rd = self.profile.remote_dir
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        run_dir = f"{rd}/runs/{run_id}"
        t0 = time.perf_counter()
        result = RunResult(program=program.name, exit_status=None, reason="")
        with self.lock(program.name):
            if not keep:
                self._register_cleanup(run_dir)
            remote_prog = f"{rd}/bin/{program.name}"
            self.push(program, remote_prog, mode=0o755)
            for local, remote in stage:
                res = self.push(Path(local), remote)
                result.staged.append({"local": str(local), "remote": remote,
                                      "skipped": bool(res["skipped"]), "bytes": res["bytes"]})
            for name, src in (inputs or {}).items():
                self.push(src if isinstance(src, bytes) else Path(src), f"{run_dir}/{name}")
            env = dict(env or {})
            libdir, note = self._libcrypt_compat(program)
            if note:
                result.notes.append(note)
            if libdir:
                prev = env.get("LD_LIBRARY_PATH")
                env["LD_LIBRARY_PATH"] = f"{libdir}:{prev}" if prev else libdir
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
            t_fetch = time.perf_counter()
            for name in outputs:
                try:
                    result.outputs[name] = self.fetch(f"{run_dir}/{name}")
                except HarnessError as exc:
                    if result.ok:
                        raise
                    result.notes.append(f"output {name} not fetched: {exc}")
            result.timings["fetch"] = time.perf_counter() - t_fetch
        result.timings["total"] = time.perf_counter() - t0
        return result

    @staticmethod
    def _judge_run(result: RunResult, report: RunReport) -> None:
        """Reason, memory and what had to be killed, from the board's report: an OOM kill of
        any process of the run (kernel log), or an allocation failure on stderr, is "out of
        memory" whatever the program's exit status."""
        result.processes = [{"pid": pid, "comm": comm, "peak_rss_kb": kb}
                            for pid, (kb, comm) in sorted(report.peaks.items())]
        result.peak_rss_kb = report.peak_kb
        result.killed_after = [{"pid": pid, "comm": comm} for pid, comm in report.strays]
        if report.strays:
            names = ", ".join(f"{pid} ({comm})" for pid, comm in report.strays)
            result.notes.append(f"{len(report.strays)} process(es) outlived the run (left its "
                                f"process group/session) and were killed: {names}")
        if report.pid is None:
            report.pid = result.pid
        victims = report.oom_victims()
        if report.kernel_log_error is not None:
            result.notes.append("kernel log not readable "
                                f"({report.kernel_log_error}): an OOM kill of the run's "
                                "processes could not be checked there (stderr only)")
        if result.timed_out:
            return
        if victims:
            result.out_of_memory = True
            who = ", ".join(f"pid {pid} ({comm})" for pid, comm in victims)
            main = result.pid in {pid for pid, _ in victims}
            result.reason = ("out of memory: killed by the kernel OOM killer (SIGKILL)" if main
                             else f"out of memory: the kernel OOM killer killed {who} of the "
                             f"run (the program exited {result.exit_status})")
            return
        result.reason = exit_reason(result.exit_status, result.stderr)
        if result.exit_status == 0:
            line = oom_line(result.stderr)
            if line is not None:
                result.out_of_memory = True
                result.reason = (f"out of memory: a process of the run failed to allocate "
                                 f"({line!r} on stderr), though the program exited 0")
        elif result.exit_status == 128 + 9 and report.kernel_log_error is not None:
            result.reason = "killed (SIGKILL; the kernel log could not be read for an OOM trace)"

    def _run_remote(self, result: RunResult, spec: RunSpec, streams: list[SpillBuffer],
                    on_stdout: StreamCallback | None, on_stderr: StreamCallback | None
                    ) -> RunReport:
        """Run `spec`'s script on one exec channel and stream its output (see
        harness.board.runscript); the board enforces the timeout. The client only steps in
        if the board's watchdog has not acted well past the deadline."""
        timeout, grace = spec.timeout, spec.kill_grace
        chan = self._open(run_script(spec))
        markers = MarkerFilter(spec.tag.encode())
        out, err = streams
        pid: int | None = None
        started = time.monotonic()
        kill_at: float | None = None
        sent_kill = False
        name = spec.argv[-1] if spec.argv else "program"

        def take_stderr(data: bytes) -> None:
            data = markers.feed(data)
            if data:
                err.write(data)
                if on_stderr:
                    on_stderr(data)

        def drain() -> None:
            """Take whatever stdout/stderr the channel holds now, streaming it live."""
            while chan.recv_ready():
                data = chan.recv(65536)
                out.write(data)
                if on_stdout:
                    on_stdout(data)
            while chan.recv_stderr_ready():
                take_stderr(chan.recv_stderr(65536))

        try:
            chan.shutdown_write()
            while True:
                drain()
                if pid is None and "pid" in markers.found:
                    pid = int(markers.found["pid"])
                    result.started_at = time.perf_counter()
                if chan.eof_received or chan.closed or chan.exit_status_ready():
                    break
                now = time.monotonic()
                if pid is None and timeout is not None and now - started > timeout + 30.0:
                    raise HarnessError(f"{self.where}: {name} did not start within "
                                       f"{timeout + 30.0:g}s")
                if timeout is not None and pid is not None:  # the board did not act
                    if not result.timed_out and now - started > timeout + grace + 5.0:
                        result.timed_out = True
                        self._kill_group(pid, "TERM")
                        kill_at = now + grace
                        result.reason = (f"timed out after {timeout:g}s: process group "
                                         f"{pid} killed with SIGTERM")
                    elif result.timed_out and not sent_kill and kill_at and now > kill_at:
                        sent_kill = True
                        self._kill_group(pid, "KILL")
                        result.reason = (f"timed out after {timeout:g}s: process group "
                                         f"{pid} killed with SIGKILL (still there "
                                         f"{grace:g}s after SIGTERM)")
                select.select([chan], [], [], 0.02)
            chan.status_event.wait(30.0)
            drain()
            status = chan.recv_exit_status() if chan.status_event.is_set() else -1
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost("running the program", exc) from None
        finally:
            _close_quietly(chan)
        tail = markers.finish()
        if tail:
            err.write(tail)
            if on_stderr:
                on_stderr(tail)
        for sb in streams:
            sb.close()
        if status == -1:
            raise self._lost(f"running {name}")
        report = read_report(markers.lines)
        if pid is None:
            pid = report.pid
        if report.timeout in ("TERM", "KILL"):
            result.timed_out = True
            how = report.timeout
            result.reason = (f"timed out after {timeout:g}s: process group {pid} killed with "
                             f"SIG{how}" + (f" (still there {grace:g}s after SIGTERM)"
                                            if how == "KILL" else ""))
        if report.leftover:
            result.notes.append(f"processes of group {pid} outlived the run; killed")
        result.exit_status = status
        result.pid = pid
        result.stdout, result.stderr = out.head, err.head
        for key, sb in zip(("stdout", "stderr"), streams, strict=True):
            if sb.path is not None:
                result.spilled[key] = str(sb.path)
                result.notes.append(sb.note() or "")
        return report
