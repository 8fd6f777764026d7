"""File transfer to and from a board without sftp: `cat` over exec channels, hash-checked.

A push streams into `cat` under a temporary name beside the target, has the board hash it
(`sha256sum`, else `md5sum`), then `chmod`s and `mv`s it into place (atomic on one
filesystem); a transfer that ends short removes its temporary on the board, so the target
is never left half-written. A fetch is `cat` back, checked against the board's own hash.
"""

from __future__ import annotations

import hashlib
import secrets
import select
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import paramiko

from harness.board.transport import (
    CHANNEL_ERRORS,
    CHUNK,
    ConnectionLost,
    close_quietly,
    drain_stderr,
    read_line,
)
from harness.errors import HarnessError

q = shlex.quote
ProgressCallback = Callable[[int, int], None]


class Shell(Protocol):
    """What a transfer needs of a connected board."""

    where: str
    hash_tool: str | None
    log: Callable[[str], None]

    def open_channel(self, cmd: str) -> paramiko.Channel: ...

    def exec(self, cmd: str, stdin: bytes | None = None,
             timeout: float = 120.0) -> tuple[int, bytes, bytes]: ...


def digest(hash_tool: str | None, data_or_path: bytes | Path) -> str:
    """The local hash of bytes or a file, with the board's tool's algorithm."""
    h = hashlib.sha256() if hash_tool == "sha256sum" else hashlib.md5()
    if isinstance(data_or_path, bytes):
        h.update(data_or_path)
    else:
        with data_or_path.open("rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                h.update(block)
    return h.hexdigest()


def push_script(remote_path: str, tmp: str, want: str, size: int, mode: int,
                hash_tool: str | None) -> str:
    """The board side of a push: SKIP (same bytes there), else SEND, read stdin into
    `tmp`, check size and hash, DONE once moved into place (SHORT / MISMATCH otherwise)."""
    rdir, _, base = remote_path.rpartition("/")
    f, t, ht = q(remote_path), q(tmp), hash_tool
    return (
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


def _send(chan: paramiko.Channel, data: bytes | None, path: Path | None, size: int,
          progress: ProgressCallback | None) -> None:
    """Stream the bytes (or the file) into the channel, reporting progress."""
    if data is not None:
        for i in range(0, size, CHUNK):
            chan.sendall(data[i:i + CHUNK])
            if progress:
                progress(min(size, i + CHUNK), size)
        return
    sent = 0
    assert path is not None
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            chan.sendall(block)
            sent += len(block)
            if progress:
                progress(sent, size)


def _finish(chan: paramiko.Channel) -> tuple[int, bytes]:
    """End the upload, read the board's verdict to EOF: (exit status or -1, its stdout)."""
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
    return (chan.recv_exit_status() if chan.status_event.is_set() else -1), rest


def discard_partial(sh: Shell, chan: paramiko.Channel, tmp: str) -> str:
    """Make sure a push's temporary file is gone after a failed transfer; says what
    happened to it. The board side removes it itself when its stdin ends short (sent
    here first) or its channel closes; this removes it from the client's side too."""
    try:
        chan.shutdown_write()
    except CHANNEL_ERRORS:
        pass
    try:
        status, _, err = sh.exec(f"rm -f {q(tmp)} && [ ! -e {q(tmp)} ]", timeout=15.0)
    except HarnessError as exc:
        return (f"could not check that the partial file {tmp} is gone ({exc}); the "
                "board removes it when the channel closes, and the next push into that "
                "directory clears any left")
    if status != 0:
        why = err.decode("utf-8", "replace").strip() or f"status {status}"
        return f"could NOT remove the partial file {tmp} on the board: {why}"
    return f"partial file {tmp} removed"


def _source(src: Path | str | bytes) -> tuple[bytes | None, Path | None, int]:
    if isinstance(src, bytes):
        return src, None, len(src)
    path = Path(src)
    if not path.is_file():
        raise HarnessError(f"push: {path}: no such file")
    return None, path, path.stat().st_size


def _transfer(sh: Shell, chan: paramiko.Channel, remote_path: str, tmp: str,
              body: tuple[bytes | None, Path | None, int],
              progress: ProgressCallback | None) -> tuple[int, bytes] | None:
    """The client side of one push channel: None when skipped, else (status, stdout)."""
    try:
        first = read_line(chan, sh.where, f"pushing {remote_path}")
        if first == "SKIP":
            chan.status_event.wait(60.0)
            return None
        if first != "SEND":
            raise HarnessError(f"{sh.where}: cannot write {remote_path}: "
                               f"{drain_stderr(chan) or first or 'no answer'}")
        _send(chan, *body, progress)
        return _finish(chan)
    except KeyboardInterrupt:
        sh.log(f"push of {remote_path} interrupted: {discard_partial(sh, chan, tmp)}")
        raise
    except CHANNEL_ERRORS as exc:
        if chan.exit_status_ready() and chan.recv_exit_status() not in (0, -1):
            raise HarnessError(
                f"{sh.where}: push of {remote_path} failed on the board (status "
                f"{chan.recv_exit_status()}: {drain_stderr(chan) or 'no message'}); "
                f"target untouched") from None
        raise ConnectionLost(
            f"{sh.where}: connection lost while pushing {remote_path} ({exc}); "
            f"nothing was written at {remote_path}; {discard_partial(sh, chan, tmp)}"
        ) from None
    finally:
        close_quietly(chan)


def push(sh: Shell, src: Path | str | bytes, remote_path: str, mode: int = 0o644,
         progress: ProgressCallback | None = None) -> dict[str, object]:
    """Copy a file (or bytes) to `remote_path`; skipped when the board already has it.
    On any failure the target is untouched."""
    body = _source(src)
    data, path, size = body
    want = digest(sh.hash_tool, data if data is not None else path)  # type: ignore[arg-type]
    rdir, _, base = remote_path.rpartition("/")
    if not base or not rdir.startswith("/"):
        raise HarnessError(f"push: remote path {remote_path!r} must be absolute")
    tmp = f"{rdir}/.{base}.part-{secrets.token_hex(4)}"
    t0 = time.perf_counter()
    chan = sh.open_channel(push_script(remote_path, tmp, want, size, mode, sh.hash_tool))
    done = _transfer(sh, chan, remote_path, tmp, body, progress)
    if done is None:
        return {"skipped": True, "bytes": 0, "seconds": time.perf_counter() - t0}
    status, rest = done
    if status == -1:
        raise ConnectionLost(f"{sh.where}: connection lost while pushing {remote_path}; "
                             f"nothing was written at {remote_path}; "
                             f"{discard_partial(sh, chan, tmp)}")
    if status != 0:
        text = rest.decode("utf-8", "replace").strip()
        raise HarnessError(f"{sh.where}: push of {remote_path} failed "
                           f"(status {status}: {text or 'no message'}); target untouched")
    return {"skipped": False, "bytes": size, "seconds": time.perf_counter() - t0}


def fetch(sh: Shell, remote_path: str) -> bytes:
    """Read a board file back with `cat`, verified against the board's own hash."""
    f = q(remote_path)
    status, out, err = sh.exec(
        f"[ -f {f} ] || {{ echo 'no such file' >&2; exit 3; }}\n"
        f"set -- $({sh.hash_tool} < {f}); echo \"$1\" >&2; exec cat {f}",
        timeout=600.0,
    )
    lines = err.decode("utf-8", "replace").split()
    if status != 0:
        raise HarnessError(f"{sh.where}: fetch {remote_path}: "
                           f"{' '.join(lines) or f'status {status}'}")
    got = digest(sh.hash_tool, out)
    if not lines or lines[0] != got:
        raise HarnessError(f"{sh.where}: fetch {remote_path}: hash mismatch (board "
                           f"{lines[0] if lines else '?'}, received {got})")
    return out
