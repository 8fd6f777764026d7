"""SSH transport to a board: the connection (host key checked) and exec channels.

Failures are typed so callers can tell them apart; every type is a `HarnessError`, so a
catch of that still catches them all, with the same one-line messages:
`CannotConnect` (no TCP connection, no SSH server, a refused host key), `LoginRefused`
(authentication failed), `ConnectionLost` (an open connection dropped), `TimedOut` (an
answer did not come in time).

Every channel is waited for until the board closes it: dropbear keeps a channel slot
(of a small fixed number per connection) for one the client closes while its command
still runs, so closing early would exhaust a long session.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import paramiko

from harness.board.hostkeys import (
    RefusingPolicy,
    changed_key_message,
    known_hosts_name,
    load_known_hosts,
)
from harness.board.profile import BoardProfile
from harness.board.validate import connect_failure
from harness.errors import HarnessError

CHUNK = 1 << 20
CHANNEL_ERRORS = (paramiko.SSHException, OSError, EOFError)


class CannotConnect(HarnessError):
    """No SSH connection came up: host unreachable, no SSH server, or its key refused."""


class LoginRefused(HarnessError):
    """The board's SSH server refused the login (key or agent)."""


class ConnectionLost(HarnessError):
    """An open connection to the board dropped (or was never there when needed)."""


class TimedOut(HarnessError):
    """The board (or the peer) did not answer within the allowed time."""


def where(profile: BoardProfile) -> str:
    """`user@host:port`, the prefix of every message about this board."""
    return f"{profile.user}@{profile.host}:{profile.port}"


def close_quietly(chan: paramiko.Channel) -> None:
    """Close a channel; on a dead connection closing raises, which must not hide the error
    that is already being reported."""
    try:
        chan.close()
    except CHANNEL_ERRORS:
        pass


def lost(at: str, what: str, exc: BaseException | None = None) -> ConnectionLost:
    detail = f": {exc}" if exc else ""
    return ConnectionLost(f"{at}: connection lost while {what}{detail}")


def handshake_timeout(profile: BoardProfile) -> TimedOut:
    t = profile.connect_timeout
    return TimedOut(f"{where(profile)}: SSH handshake timed out: the TCP connection was "
                    f"accepted but no SSH server answered within {t:g}s "
                    "(connect_timeout); is this the board's SSH port?")


def tcp_connect(profile: BoardProfile) -> socket.socket:
    """The TCP connection, once the peer has started talking: a peer that accepts and
    stays silent is reported as a handshake timeout, not left to paramiko's banner read
    (which ends in an unrelated "No existing session")."""
    sock = socket.create_connection((profile.host, profile.port),
                                    timeout=profile.connect_timeout)
    try:
        ready, _, _ = select.select([sock], [], [], profile.connect_timeout)
    except BaseException:
        sock.close()
        raise
    if not ready:
        sock.close()
        raise handshake_timeout(profile)
    return sock


def _host_key_policy(client: paramiko.SSHClient, profile: BoardProfile,
                     trust_new: bool) -> RefusingPolicy:
    if profile.host_key_fingerprint:
        policy = RefusingPolicy(None, profile.port, pinned=profile.host_key_fingerprint)
    else:
        load_known_hosts(client, profile.known_hosts)
        policy = RefusingPolicy(profile.known_hosts, profile.port, trust_new=trust_new)
    client.set_missing_host_key_policy(policy)
    return policy


def _key_file(profile: BoardProfile) -> str | None:
    if not profile.identity_file:
        return None
    key_file = str(Path(profile.identity_file).expanduser())
    if not Path(key_file).is_file():
        raise HarnessError(f"identity_file {key_file}: no such file")
    return key_file


def _connect_error(profile: BoardProfile, exc: BaseException,
                   key_file: str | None) -> HarnessError:
    """The typed error, with today's message, for a failed `SSHClient.connect`."""
    at = where(profile)
    if isinstance(exc, paramiko.BadHostKeyException):
        return CannotConnect(changed_key_message(
            known_hosts_name(profile.host, profile.port), exc.key, exc.expected_key,
            profile.known_hosts))
    if isinstance(exc, paramiko.AuthenticationException):
        how = f"key {key_file}" if key_file else "the ssh agent and ~/.ssh/id_* keys"
        return LoginRefused(f"{at}: authentication failed with {how}: {exc}")
    if isinstance(exc, TimeoutError):
        return TimedOut(
            f"{at}: cannot connect: timeout (no answer within "
            f"{profile.connect_timeout:g}s, connect_timeout: host down, wrong address, or "
            "packets dropped)")
    if isinstance(exc, paramiko.SSHException | EOFError) and (
            "timed out" in str(exc) or "timeout" in str(exc).lower()):
        return handshake_timeout(profile)
    return CannotConnect(f"{at}: cannot connect: {connect_failure(exc)}")


def open_client(profile: BoardProfile,
                trust_new: bool = False) -> tuple[paramiko.SSHClient, str | None]:
    """A connected SSH client (host key checked) and the new host key it trusted, if any."""
    client = paramiko.SSHClient()
    policy = _host_key_policy(client, profile, trust_new)
    key_file = _key_file(profile)
    t = profile.connect_timeout
    try:
        client.connect(
            profile.host, port=profile.port, username=profile.user, key_filename=key_file,
            sock=tcp_connect(profile), timeout=t, banner_timeout=t, auth_timeout=t,
            allow_agent=True, look_for_keys=key_file is None,
        )
    except HarnessError as exc:  # a refused host key (the policy) or a silent peer
        client.close()
        if type(exc) is HarnessError:
            raise CannotConnect(str(exc)) from None
        raise
    except (*CHANNEL_ERRORS, TimeoutError) as exc:
        client.close()
        raise _connect_error(profile, exc, key_file) from None
    transport = client.get_transport()
    assert transport is not None
    if profile.keepalive > 0:
        transport.set_keepalive(profile.keepalive)
    try:  # many small request/reply exchanges: do not let Nagle hold them back
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
    return client, policy.added


def active_transport(client: paramiko.SSHClient | None, at: str) -> paramiko.Transport:
    t = client.get_transport() if client else None
    if t is None or not t.is_active():
        raise ConnectionLost(f"{at}: not connected (connection lost?)")
    return t


def open_channel(transport: paramiko.Transport, cmd: str, at: str,
                 timeout: float) -> paramiko.Channel:
    """An exec channel running `cmd` on the board."""
    try:
        chan = transport.open_session(timeout=timeout)
        chan.exec_command(cmd)
    except CHANNEL_ERRORS as exc:
        raise lost(at, "opening a channel", exc) from None
    return chan


def _take(chan: paramiko.Channel, out: list[bytes], err: list[bytes]) -> None:
    while chan.recv_ready():
        out.append(chan.recv(CHUNK))
    while chan.recv_stderr_ready():
        err.append(chan.recv_stderr(CHUNK))


def _pump_until_eof(chan: paramiko.Channel, out: list[bytes], err: list[bytes],
                    deadline: float, timed_out: str) -> None:
    while True:
        _take(chan, out, err)
        if chan.eof_received or chan.closed:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimedOut(timed_out)
        select.select([chan], [], [], min(left, 1.0))
    _take(chan, out, err)  # what arrived between the last read and the EOF


def exec_channel(chan: paramiko.Channel, at: str, cmd: str, stdin: bytes | None,
                 timeout: float) -> tuple[int, bytes, bytes]:
    """Feed `stdin` to a channel opened on `cmd`, read it to its end and close it:
    (exit status, stdout, stderr)."""
    out: list[bytes] = []
    err: list[bytes] = []
    deadline = time.monotonic() + timeout
    first = cmd.strip().splitlines()[0] if cmd.strip() else cmd
    try:
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        _pump_until_eof(chan, out, err, deadline, f"{at}: {first!r} took over {timeout:g}s")
        if not chan.status_event.wait(max(1.0, deadline - time.monotonic())):
            raise TimedOut(f"{at}: {first!r}: no exit status")
        status = chan.recv_exit_status()
    except CHANNEL_ERRORS as exc:
        raise lost(at, f"running {first!r}", exc) from None
    finally:
        close_quietly(chan)
    if status == -1:
        raise lost(at, f"running {first!r}")
    return status, b"".join(out), b"".join(err)


def read_line(chan: paramiko.Channel, at: str, what: str, limit: float = 60.0) -> str:
    """One line of a channel's stdout (what is there when the channel ends)."""
    buf = b""
    deadline = time.monotonic() + limit
    while b"\n" not in buf:
        if chan.recv_ready():
            buf += chan.recv(1)
        elif chan.exit_status_ready() or chan.closed:
            break
        elif time.monotonic() > deadline:
            raise TimedOut(f"{at}: no answer within {limit:g}s while {what}")
        else:
            select.select([chan], [], [], 0.05)
    return buf.decode("utf-8", "replace").strip()


def drain_stderr(chan: paramiko.Channel) -> str:
    err = b""
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(4096)
    return err.decode("utf-8", "replace").strip()
