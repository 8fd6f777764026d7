"""pytest plugin (entry point `pytest11: skainet`): session fixtures over the harness targets.

Any project's tests can use them once skainet-oracle is installed:
- `cref`: ggml's C reference library (built on first use, cached);
- `board`: a connected `BoardSession` — the real board given by `--board user@host[:port]`
  or `--board-profile FILE.toml`, else a board-in-a-box started for the session and
  stopped at its end;
- marker `board`: tests that need a board target (select with `-m board`);
- `skainet_jvm`: a JVM worker handle (`harness.jvm.worker.Worker`, pinned JIT, the found
  JDK) on the classpath given by `--skainet-classpath` (else the project's own fixture
  kernels), with `.kernels` (discovered) and `.jdk` set; marker `jvm`.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("skainet", "skainet-oracle targets")
    group.addoption("--board", default=None, metavar="USER@HOST[:PORT]",
                    help="run board tests on this real board instead of the board-in-a-box")
    group.addoption("--board-profile", default=None, metavar="FILE.toml",
                    help="board profile (host key pin, identity, exec prefix, limits)")
    group.addoption("--skainet-classpath", default=None, metavar="CP",
                    help="a SKaiNET build (jars/class dirs, ':'-separated) for jvm tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cref: needs ggml's C reference library (built on demand)")
    config.addinivalue_line("markers", "board: needs a board target (real, or board-in-a-box)")
    config.addinivalue_line("markers", "jvm: runs kernels in a JVM worker (skainet_jvm)")


@pytest.fixture(scope="session")
def cref():
    """ggml's C reference library through ctypes (`harness.cref.CRef`)."""
    from harness.cref import CRef

    return CRef.load()


@pytest.fixture(scope="session")
def board(request: pytest.FixtureRequest):
    """A connected BoardSession for the whole test session (see the module docstring)."""
    from harness.board.profile import resolve_profile
    from harness.board.session import BoardSession
    from harness.board.sim import BoardSim

    spec = request.config.getoption("--board")
    prof_file = request.config.getoption("--board-profile")
    if spec or prof_file:
        with BoardSession(resolve_profile(prof_file, spec)) as session:
            yield session
        return
    with BoardSim() as sim, BoardSession(sim.profile) as session:
        yield session


@pytest.fixture(scope="session")
def skainet_jvm(request: pytest.FixtureRequest):
    """One JVM worker for the session (see the module docstring)."""
    from harness.jvm.discovery import discover
    from harness.jvm.fixtures import fixture_classpath
    from harness.jvm.jdk import find_jdk
    from harness.jvm.worker import JvmConfig, Worker

    jdk = find_jdk()
    cp = request.config.getoption("--skainet-classpath") or fixture_classpath(jdk)
    with Worker(JvmConfig(str(jdk.home), cp, "auto", "pinned", jdk.has_vector)) as wk:
        wk.jdk, wk.kernels = jdk, discover(cp)
        wk.start()
        yield wk
