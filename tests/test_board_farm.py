"""The labgrid board farm, end to end on the farm-in-a-box: a real labgrid-coordinator on
127.0.0.1, a real labgrid-exporter publishing two boards-in-a-box (dropbear + qemu) as
NetworkService, places tagged pool=skoracle_farm (the `board_farm_sim` fixture of the
project's pytest plugin). Users contend, a pool spreads cases over both boards, and a client
that dies, however it dies, leaves the places free."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from childsignals import default_sigint
from proctree import mentioning, with_sim_id

from harness.board.lab import LabRequest, Lease, free_places, lab_request, release_hint
from harness.board.source import BoardSpec
from harness.errors import HarnessError

pytestmark = pytest.mark.board
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


def skoracle(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=timeout)


def pool(farm) -> LabRequest:
    return LabRequest(farm.coordinator, pool=("pool", "skoracle_farm"))


def place(farm, name: str) -> LabRequest:
    return LabRequest(farm.coordinator, place=name)


def wait_all_free(farm, limit: float = 30.0) -> dict:
    """Free places of the pool, polled until both are free (or `limit` s)."""
    deadline = time.monotonic() + limit
    while True:
        free = free_places(pool(farm))
        if free["free"] == free["total"] or time.monotonic() > deadline:
            return free
        time.sleep(0.2)


def reservations(farm) -> str:
    return subprocess.run(["labgrid-client", "-x", farm.coordinator, "reservations"],
                          capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def farm(board_farm_sim):
    """The session's farm, checked to be idle before and after each test."""
    assert wait_all_free(board_farm_sim)["free"] == 2
    yield board_farm_sim
    assert wait_all_free(board_farm_sim)["free"] == 2, "a test left a place held"
    assert "Reservation" not in reservations(board_farm_sim)


# -- the farm ---------------------------------------------------------------------------

def test_farm_publishes_each_board_as_a_networkservice_place_of_the_pool(farm):
    assert farm.coordinator.startswith("127.0.0.1:")  # no auth in labgrid: loopback only
    free = free_places(pool(farm))
    assert free == {"free": 2, "total": 2, "places": farm.places, "holders": {}}
    with Lease(pool(farm), count=0) as places:
        assert sorted(p.name for p in places) == farm.places
        assert sorted(p.port for p in places) == sorted(s.port for s in farm.sims)
        assert {(p.address, p.username) for p in places} == {("127.0.0.1", "board")}
        profiles = [p.profile(str(farm.profile_path)) for p in places]
    for prof, sim in zip(sorted(profiles, key=lambda p: p.name), farm.sims, strict=True):
        assert prof.remote_dir == sim.remote_dir  # the place's skoracle_remote_dir tag
        assert prof.identity_file == str(farm.dir / "client_key")


def test_a_place_is_named_exactly_not_by_substring(farm):
    with Lease(place(farm, "skoracle-farm-2")) as places:
        assert [p.name for p in places] == ["skoracle-farm-2"]
    with pytest.raises(HarnessError, match="no place named 'skoracle-farm-'"):
        with Lease(place(farm, "skoracle-farm-")):
            pass
    with pytest.raises(HarnessError, match="no place has the tag pool=other"):
        with Lease(LabRequest(farm.coordinator, pool=("pool", "other"))):
            pass


def test_a_second_user_queues_behind_the_first_and_gets_the_place_when_it_is_released(
        farm, monkeypatch):
    monkeypatch.setenv("LG_USERNAME", "alice")
    alice = Lease(place(farm, "skoracle-farm-1"))
    assert [p.name for p in alice.acquire()] == ["skoracle-farm-1"]
    monkeypatch.setenv("LG_USERNAME", "bob")
    heard: list[str] = []
    bob = Lease(place(farm, "skoracle-farm-1"), log=heard.append)
    got: list = []
    t = threading.Thread(target=lambda: got.append(bob.acquire()))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not bob.waited and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert bob.waited and not got, "bob must queue while alice holds the place"
        assert "acquired by" in heard[0] and "alice" in heard[0], heard
        released_at = time.monotonic()
        alice.release()
        t.join(60)
        assert got and [p.name for p in got[0]] == ["skoracle-farm-1"]
        assert time.monotonic() - released_at < 15  # not the ~75 s of a stale reservation
    finally:
        alice.release()
        t.join(60)
        bob.release()


def test_pool_spreads_kernel_parity_over_both_boards_with_the_verdicts_of_one_board(farm):
    common = ["board", "kernel-parity", "--fixture", "--formats", "Q8_0", "--json",
              "--lg-coordinator", farm.coordinator, "--profile", str(farm.profile_path)]
    spread = skoracle(*common, "--lg-pool", farm.pool)
    one = skoracle(*common, "--lg-place", "skoracle-farm-1")
    assert spread.returncode == 0, spread.stderr
    assert one.returncode == 0, one.stderr
    s, o = json.loads(spread.stdout), json.loads(one.stdout)
    assert sorted(s["boards"]) == farm.places
    assert {c["board"] for c in s["cases"]} == set(farm.places)
    assert "acquired place skoracle-farm-1" in one.stderr
    assert {c["board"] for c in o["cases"]} == {""}  # one board: no board column

    def strip(cases: list[dict]) -> list[dict]:
        return [{k: v for k, v in c.items() if k != "board"} for c in cases]

    # same cases, same inputs, same verdicts, in the same order
    assert strip(s["cases"]) == strip(o["cases"])
    assert all(c["verdict"] == "bit-exact" for c in s["cases"])


def test_run_spreads_its_board_legs_kernel_parity_over_the_pool_in_one_report(farm,
                                                                              tmp_path):
    from harness.board.build import fixture_kernel_archive

    res = skoracle("run", "--only", "board", "--out", str(tmp_path / "rep"),
                   "--kernels-archive", str(fixture_kernel_archive()),
                   "--lg-coordinator", farm.coordinator, "--lg-pool", farm.pool,
                   "--profile", str(farm.profile_path))
    assert res.returncode == 1, res.stderr  # the fixture's one deliberately wrong kernel
    leg = json.loads((tmp_path / "rep" / "report.json").read_text())["legs"][0]
    cases = [r for r in leg["rows"] if r["case"].startswith("skainet_")]
    assert len(cases) == 71  # 47 packed + 24 dense, BitNet and ternary
    on = {r["detail"].rsplit("; on ", 1)[1] for r in cases}
    assert on == set(farm.places)  # each case names its board; both boards ran cases
    failed = {r["case"].split()[0] for r in cases if r["verdict"] == "FAIL"}
    assert failed == {"skainet_q5_0_matmul_rm"}
    assert "labgrid place skoracle-farm-" in leg["rows"][0]["detail"]
    inventory = next(r for r in leg["rows"] if r["case"].startswith("kernel parity"))
    assert "spread over 2 boards" in inventory["detail"]


# -- a client that dies leaves nothing held ------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from harness.board.lab import LabRequest
    from harness.board.source import BoardSpec, open_session
    lab = LabRequest(sys.argv[1], place=sys.argv[2])
    with open_session(BoardSpec(sys.argv[3], lab=lab)) as s:
        s.exec_ok("true", "probe")
        print("held", s.profile.name, flush=True)
        time.sleep(300)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "sigterm", "kill-9"])
def test_a_killed_client_leaves_its_place_released_and_its_reservation_cancelled(farm, sig):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, farm.coordinator,
                             "skoracle-farm-2", str(farm.profile_path)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        assert proc.stdout.readline().split() == ["held", "skoracle-farm-2"], proc.stderr
        held = free_places(pool(farm))
        assert held["free"] == 1 and "skoracle-farm-2" in held["holders"]
        assert "Reservation" in reservations(farm)
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    free = wait_all_free(farm, limit=20)
    assert free["free"] == 2, free  # released at once, not after labgrid's ~75 s expiry
    assert "Reservation" not in reservations(farm)


def test_kill_9_of_the_labgrid_client_itself_is_freed_by_the_documented_command(farm):
    lease = Lease(place(farm, "skoracle-farm-1"))
    lease.acquire()
    os.kill(lease.proc.pid, signal.SIGKILL)
    lease.release()  # copes with a client that is already dead
    stuck = free_places(pool(farm))
    assert stuck["free"] == 1 and "skoracle-farm-1" in stuck["holders"]
    hint = release_hint(farm.coordinator, "skoracle-farm-1")
    assert subprocess.run(hint.split(), capture_output=True, timeout=60).returncode == 0
    reserved = reservations(farm)
    for line in reserved.splitlines():  # the token of the dead client's reservation
        if line.startswith("Reservation '"):
            token = line.split("'")[1]
            subprocess.run(["labgrid-client", "-x", farm.coordinator, "cancel-reservation",
                            token], capture_output=True, timeout=60, check=True)
    assert free_places(pool(farm))["free"] == 2


# -- the pytest plugin ------------------------------------------------------------------

PLUGIN_TEST = textwrap.dedent("""
    import os, time

    def test_on_a_farm_board(board):
        board.exec_ok("true", "probe")
        out = os.environ["PLACES_SEEN"]
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        with open(os.path.join(out, os.environ.get("PYTEST_XDIST_WORKER", "main")), "w") as f:
            f.write(board.profile.name)
        deadline = time.monotonic() + 120  # every worker holds its place at the same time
        while len(os.listdir(out)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(os.listdir(out)) >= workers

    def test_second(board):
        assert board.exec_ok("echo ok", "probe").strip() == b"ok"
""")


def test_pytest_plugin_takes_a_place_per_xdist_worker_and_refuses_more_workers_than_places(
        farm, tmp_path):
    (tmp_path / "test_farm_user.py").write_text(PLUGIN_TEST)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--lg-coordinator", farm.coordinator, "--board-profile", str(farm.profile_path),
            str(tmp_path / "test_farm_user.py")]

    def pytest(seen: Path, *args: str) -> subprocess.CompletedProcess:
        seen.mkdir()
        env = {k: v for k, v in ENV.items() if not k.startswith("PYTEST_")}  # ours, if xdist
        return subprocess.run([*base, *args], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(env, PLACES_SEEN=str(seen)), timeout=300)

    one = pytest(tmp_path / "one", "--lg-place", "skoracle-farm-2")
    assert one.returncode == 0, one.stdout + one.stderr
    assert (tmp_path / "one" / "main").read_text() == "skoracle-farm-2"
    two = pytest(tmp_path / "two", "--lg-pool", farm.pool, "-n", "2", "--dist", "each")
    assert two.returncode == 0, two.stdout + two.stderr
    assert sorted((tmp_path / "two" / w).read_text() for w in ("gw0", "gw1")) == farm.places
    three = pytest(tmp_path / "three", "--lg-pool", farm.pool, "-n", "3")
    assert three.returncode == 4
    assert "2 of 2 places free, but -n 3 starts 3 workers" in three.stderr
    assert "Use -n 2 or fewer" in three.stderr


# -- options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("coordinator, place_, pool_, message", [
    (None, "p1", None, "no coordinator: give --lg-coordinator"),
    ("127.0.0.1:1", "p1", "pool=x", "give one of them"),
    ("127.0.0.1:1", None, "Pool=x", "--lg-pool 'Pool=x': TAG=VALUE"),
    ("127.0.0.1:1", None, "pool", "--lg-pool 'pool': TAG=VALUE"),
    ("127.0.0.1:1", None, None, "give --lg-place NAME or --lg-pool"),
    ("host:port", "p1", None, "--lg-coordinator 'host:port': HOST[:PORT]"),
])
def test_bad_labgrid_options_are_one_clear_error(coordinator, place_, pool_, message,
                                                 monkeypatch):
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    with pytest.raises(HarnessError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lab_request(coordinator, place_, pool_)


def test_env_coordinator_and_board_conflict(monkeypatch):
    monkeypatch.setenv("LG_COORDINATOR", "127.0.0.1:20408")
    assert lab_request(None, "p1", None) == LabRequest("127.0.0.1:20408", place="p1")
    assert lab_request(None, None, None) is None
    with pytest.raises(HarnessError, match="--board and --lg-place/--lg-pool"):
        BoardSpec(board="root@h", lab=LabRequest("127.0.0.1:1", place="p1"))


def test_board_cli_refuses_bad_labgrid_options_with_exit_2_and_one_line():
    res = skoracle("board", "check", "--lg-coordinator", "127.0.0.1:1", "--lg-pool", "x")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "skoracle board: error: --lg-pool 'x': TAG=VALUE (TAG: lower-case letters, digits, "
        "_; VALUE without '=' or spaces), e.g. pool=sl2610"]
    res = skoracle("board", "check", "--lg-coordinator", "127.0.0.1:1", "--lg-place", "p1")
    assert res.returncode == 2 and "cannot connect" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_ctrl_c_while_queued_cancels_the_reservation_at_once(farm):
    holder = Lease(place(farm, "skoracle-farm-1"))
    holder.acquire()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "board", "check", "--lg-coordinator",
             farm.coordinator, "--lg-place", "skoracle-farm-1", "--profile",
             str(farm.profile_path)], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        try:
            line = proc.stderr.readline()
            assert "board: labgrid: waiting for labgrid place skoracle-farm-1" in line, line
            assert reservations(farm).count("Reservation '") == 2
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130
        finally:
            proc.kill()
            proc.wait()
        assert reservations(farm).count("Reservation '") == 1  # only the holder's is left
    finally:
        holder.release()


# -- farm-sim ---------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_farm_sim_cli_stop_ends_exactly_what_start_started_even_after_a_kill_9(tmp_path):
    d = tmp_path / "farm"
    up = skoracle("farm-sim", "start", "--boards", "1", "--dir", str(d), "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    assert state["places"] == ["skoracle-farm-1"] and state["pool"] == "pool=skoracle_farm"
    assert skoracle("farm-sim", "status", "--dir", str(d)).returncode == 0
    again = skoracle("farm-sim", "start", "--dir", str(d))
    assert again.returncode == 2 and "already holds a running farm" in again.stderr
    check = skoracle("board", "check", "--lg-coordinator", state["coordinator"],
                     "--lg-place", "skoracle-farm-1", "--profile", state["profile"])
    assert check.returncode == 0, check.stderr
    pids = [p["pid"] for p in state["processes"]] + [state["supervisor"]["pid"]]
    sim_id = state["sims"][0]["id"]
    assert all(alive(p) for p in pids) and with_sim_id(sim_id)
    os.kill(state["supervisor"]["pid"], signal.SIGKILL)  # the supervisor dies unannounced
    down = skoracle("farm-sim", "status", "--dir", str(d))
    assert down.returncode == 1 and "DOWN" in down.stdout
    stop = skoracle("farm-sim", "stop", "--dir", str(d))
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(map(alive, pids)) or with_sim_id(sim_id)):
        time.sleep(0.1)
    assert not any(map(alive, pids)) and not with_sim_id(sim_id)
    assert not d.exists()
    gone = skoracle("farm-sim", "stop", "--dir", str(d))
    assert gone.returncode == 2 and "no farm in" in gone.stderr


def test_farm_sim_stop_never_kills_a_process_it_did_not_start(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"], preexec_fn=default_sigint)
    try:
        d = tmp_path / "farm"
        d.mkdir()
        (d / "state.json").write_text(json.dumps({  # the pid is right, the start time not
            "coordinator": "127.0.0.1:1", "places": [], "pool": "pool=x", "dir": str(d / "f"),
            "supervisor": {"pid": stranger.pid, "start_time": 1},
            "processes": [{"what": "coordinator", "pid": stranger.pid, "start_time": 1}],
            "sims": []}))
        stop = skoracle("farm-sim", "stop", "--dir", str(d))
        assert stop.returncode == 0, stop.stderr
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_sigterm_to_the_labgrid_client_itself_releases_its_place(farm):
    lease = Lease(place(farm, "skoracle-farm-1"))
    lease.acquire()
    os.kill(lease.proc.pid, signal.SIGTERM)
    assert lease.proc.wait(30) == 0
    assert wait_all_free(farm, limit=10)["free"] == 2
    lease.release()


def test_ctrl_c_during_farm_sim_start_leaves_no_farm_running(tmp_path):
    d = tmp_path / "farm"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "farm-sim", "start", "--dir",
                             str(d)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 30
    while not (d / "farm").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the supervisor has begun building the farm
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not (d / "state.json").exists() and not (d / "farm").exists()
    assert not mentioning(str(d))  # no coordinator, exporter or board of it runs
