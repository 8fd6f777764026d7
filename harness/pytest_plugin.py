"""pytest plugin (entry point `pytest11: skainet`): session fixtures over the harness targets.

Any project's tests can use them once skainet-oracle is installed:
- `cref`: ggml's C reference library (built on first use, cached);
- `board`: a connected `BoardSession` — the real board given by `--board user@host[:port]`
  or `--board-profile FILE.toml`, or a place of a labgrid board farm (`--lg-coordinator
  HOST:PORT` with `--lg-place NAME` or `--lg-pool TAG=VALUE`: reserved, queued behind other
  users, acquired for the session and released at its end; under pytest-xdist each worker
  takes a place of its own, and a run with more workers than free places stops at once),
  else a board-in-a-box started for the session and stopped at its end;
- `board_farm_sim`: a labgrid farm of two boards-in-a-box on this machine
  (`harness.board.farm.FarmSim`: coordinator on 127.0.0.1, exporter, places tagged
  pool=skoracle_farm), for the session;
- marker `board`: tests that need a board target (select with `-m board`);
- `skainet_jvm`: a JVM worker handle (`harness.jvm.worker.Worker`, pinned JIT, the found
  JDK) on the SKaiNET build given by `--skainet-classpath`, with `.kernels` (discovered),
  `.jdk` and `.classpath` set; without the option every test using it is skipped, saying
  why (nothing stands in for your build);
- `skoracle_fixture_jvm`: the same over the project's own fixture kernels (fixtures/jvm,
  never SKaiNET), only for tests that ask for it by this name; `.label` says what it is;
- markers `jvm`, `llamacpp` (the real llama.cpp); the header shows the classpath and JDK;
- `--skainet-parity`: parity cases as test items, one per JVM kernel x shape x lanes x JIT
  mode, native kernel x shape on a board, or decode (harness.parity.pytest_items), each
  item's outcome its verdict; under pytest-xdist each worker owns its JVM workers and board
  session (every session fixture here is per worker too).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager
                     ) -> None:
    group = parser.getgroup("skainet", "skainet-oracle targets")
    group.addoption("--board", default=None, metavar="USER@HOST[:PORT]",
                    help="run board tests on this real board instead of the board-in-a-box")
    group.addoption("--board-profile", default=None, metavar="FILE.toml",
                    help="board profile (host key pin, identity, exec prefix, limits)")
    group.addoption("--skainet-classpath", default=None, metavar="CP",
                    help="a SKaiNET build (jars/class dirs, ':'-separated) for jvm tests")
    add_lab_options(group, pluginmanager)
    _add_parity_options(group)


def add_lab_options(group: pytest.OptionGroup,
                    pluginmanager: pytest.PytestPluginManager) -> None:
    """--lg-place, --lg-pool: the `board` fixture from a labgrid farm. --lg-coordinator is
    labgrid's own pytest plugin's option (installed with labgrid); it is added here only
    where that plugin is not loaded (-p no:labgrid)."""
    import importlib.util

    if pluginmanager.is_blocked("labgrid") or \
            importlib.util.find_spec("labgrid.pytestplugin") is None:
        group.addoption("--lg-coordinator", default=None, metavar="HOST:PORT",
                        dest="lg_coordinator",
                        help="labgrid coordinator of a board farm (default: $LG_COORDINATOR)")
    group.addoption("--lg-place", default=None, metavar="NAME",
                    help="board tests on this labgrid place (exact name), reserved and "
                         "acquired for the session")
    group.addoption("--lg-pool", default=None, metavar="TAG=VALUE",
                    help="board tests on a free labgrid place tagged TAG=VALUE (each xdist "
                         "worker its own)")


def _lab(config: pytest.Config):
    """The labgrid request of the --lg-* options (None without them); a bad value is a
    usage error."""
    from harness.board.source import lab_request
    from harness.errors import HarnessError

    try:
        return lab_request(getattr(config.option, "lg_coordinator", None),
                           config.getoption("--lg-place"), config.getoption("--lg-pool"))
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """With --lg-* under pytest-xdist, on the controller before any worker starts: more
    workers than free places is a usage error (harness.board.lab.too_many_workers)."""
    from harness.board.lab import too_many_workers
    from harness.errors import HarnessError

    config = session.config
    lab = _lab(config)
    workers = len(getattr(config.option, "tx", None) or []) \
        if getattr(config.option, "dist", "no") != "no" else 0
    if lab is None or workers < 2 or hasattr(config, "workerinput"):
        return
    try:
        problem = too_many_workers(lab, workers)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if problem:
        raise pytest.UsageError(problem)


def _add_parity_options(group: pytest.OptionGroup) -> None:
    """--skainet-parity and the options of its items (harness.parity.pytest_items)."""
    from harness.parity.pytest_items import add_options

    add_options(group)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Append the parity items before -k/-m/--deselect/--lf select among all items."""
    if config.getoption("--skainet-parity"):
        from harness.parity.pytest_items import collect

        items.extend(collect(session))


def pytest_report_collectionfinish(config: pytest.Config,
                                   items: list[pytest.Item]) -> list[str]:
    """The parity items per target, the project's fixture kernels labelled as such."""
    from harness.parity.pytest_items import collection_lines

    return collection_lines(items)


def board_spec(config: pytest.Config):
    """The board the options name (`--board`, `--board-profile`, a labgrid place or pool),
    else the board-in-a-box: for the `board` fixture and the board parity items alike."""
    from harness.board.source import BoardSpec

    return BoardSpec(config.getoption("--board-profile"), config.getoption("--board"),
                     lab=_lab(config))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cref: needs ggml's C reference library (built on demand)")
    config.addinivalue_line("markers", "board: needs a board target (real, or board-in-a-box)")
    config.addinivalue_line("markers", "jvm: runs kernels in a JVM worker (skainet_jvm)")
    config.addinivalue_line("markers", "llamacpp: runs the real llama.cpp (built on demand)")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's --dist loadgroup "
                                       "keeps a group on one worker (parity items: per JVM "
                                       "configuration)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The JVM target of this session: the classpath (or that there is none) and the JDK."""
    from harness.errors import HarnessError
    from harness.jvm.jdk import find_jdk

    cp = config.getoption("--skainet-classpath")
    try:
        jdk = find_jdk().describe()
    except HarnessError as exc:
        jdk = str(exc)
    lines = [f"skainet: --skainet-classpath {cp}" if cp else
             "skainet: no --skainet-classpath: tests using skainet_jvm are skipped",
             f"skainet: {jdk}"]
    if config.getoption("--skainet-parity") and config.getoption("--skainet-fixtures"):
        from harness.jvm.fixtures import LABEL

        lines.append(f"skainet: items under fixture-jvm / fixture-board run the project's "
                     f"own fixture kernels: {LABEL}")
    return lines


@pytest.fixture(scope="session")
def cref():
    """ggml's C reference library through ctypes (`harness.ggml.cref.CRef`)."""
    from harness.ggml.cref import CRef

    return CRef.load()


@pytest.fixture(scope="session")
def board(request: pytest.FixtureRequest):
    """A connected BoardSession for the whole test session (see the module docstring)."""
    from harness.board.source import open_session

    with open_session(board_spec(request.config)) as session:
        yield session


@pytest.fixture(scope="session")
def board_farm_sim():
    """A labgrid farm of two boards-in-a-box for the session (`FarmSim`: `.coordinator`,
    `.places`, `.pool`, `.profile_path`, `.options()`); stopped at its end."""
    from harness.board.farm import FarmSim

    with FarmSim(2) as farm:
        yield farm


def _jvm_worker(classpath: str, where: str):
    """One pinned-JIT JVM worker over `classpath` for a session (a generator fixture body)."""
    from harness.jvm.discovery import discover, resolve_classpath
    from harness.jvm.jdk import find_jdk
    from harness.jvm.worker import JvmConfig, Worker

    jdk = find_jdk()
    cp = resolve_classpath(classpath, where)
    kernels = discover(cp)
    if not kernels:
        pytest.fail(f"--skainet-classpath {classpath}: no packed matmul kernel found",
                    pytrace=False)
    with Worker(JvmConfig(str(jdk.home), cp, "auto", "pinned", jdk.has_vector)) as wk:
        wk.jdk, wk.kernels, wk.classpath = jdk, kernels, cp
        wk.start()
        yield wk


@pytest.fixture(scope="session")
def skainet_jvm(request: pytest.FixtureRequest):
    """A JVM worker over your SKaiNET build (--skainet-classpath); skipped without one."""
    cp = request.config.getoption("--skainet-classpath")
    if not cp:
        pytest.skip("skainet_jvm: no SKaiNET build given; pass --skainet-classpath CP (the "
                    "JVM runtime classpath of skainet-backend-cpu, ':'-separated)")
    yield from _jvm_worker(cp, str(request.config.invocation_params.dir))


@pytest.fixture(scope="session")
def skoracle_fixture_jvm():
    """A JVM worker over the project's own fixture kernels (fixtures/jvm): they test the
    plumbing and are never SKaiNET; `.label` says so."""
    from harness.jvm.fixtures import LABEL, fixture_classpath
    from harness.jvm.jdk import find_jdk

    for wk in _jvm_worker(fixture_classpath(find_jdk()), "."):
        wk.label = LABEL
        yield wk
