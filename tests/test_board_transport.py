"""Typed connection errors of the board transport (harness.board.transport): each failure
has its own type, all of them `HarnessError`s with the one-line messages users see."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest

from harness.board.profile import BoardProfile
from harness.board.session import BoardSession
from harness.board.sim import BoardSim
from harness.board.transport import CannotConnect, ConnectionLost, LoginRefused, TimedOut
from harness.errors import HarnessError


@pytest.fixture(scope="module")
def sim():
    with BoardSim() as s:
        yield s
    assert not s.processes(), "the board-in-a-box left processes behind"


def test_every_typed_error_is_a_harness_error():
    for kind in (CannotConnect, LoginRefused, ConnectionLost, TimedOut):
        assert issubclass(kind, HarnessError)
    assert len({CannotConnect, LoginRefused, ConnectionLost, TimedOut}) == 4


def test_refused_port_cannot_connect():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(CannotConnect, match=r"cannot connect: connection refused"):
        BoardSession(BoardProfile(host="127.0.0.1", port=port, known_hosts=None,
                                  connect_timeout=2.0)).connect()


def test_silent_peer_timed_out():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
    try:
        prof = BoardProfile(host="127.0.0.1", port=srv.getsockname()[1], known_hosts=None,
                            connect_timeout=1.0)
        with pytest.raises(TimedOut, match="SSH handshake timed out"):
            BoardSession(prof).connect()
    finally:
        srv.close()
        for c in held:
            c.close()


def test_wrong_key_login_refused(sim, tmp_path):
    key = tmp_path / "other_key"  # a well-formed key the board does not know
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, capture_output=True)
    with pytest.raises(LoginRefused, match=rf"authentication failed with key {key}"):
        BoardSession(sim.profile.with_overrides(identity_file=str(key))).connect()


def test_unknown_host_key_cannot_connect(sim, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(CannotConnect, match="unknown host key"):
        BoardSession(sim.profile.with_overrides(known_hosts=str(kh))).connect()


def test_slow_command_timed_out_and_dropped_connection_lost(sim):
    with BoardSession(sim.profile) as board:
        with pytest.raises(TimedOut, match=r"'sleep 5' took over 0.5s"):
            board.exec("sleep 5", timeout=0.5)
        assert board.exec("echo ok")[1] == b"ok\n"  # the session survives a timeout
        board.client.close()
        with pytest.raises(ConnectionLost, match="not connected"):
            board.exec("true")

