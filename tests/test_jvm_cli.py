"""What a user of the JVM leg reads, end to end through `skoracle jvm ...` and `skoracle run`,
on the project's fixture kernels (fixtures/jvm, labelled fixtures, never SKaiNET): verdicts
independent of the directory the user runs from, the board's 4 lanes judged by default,
guard cells, setup errors for an incomplete classpath, the user's frame of a crash, nothing
left running after kill -9 / Ctrl-C / a kernel's own processes, greppable output."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from childsignals import default_sigint
from proctree import cmdline, descendants

from harness.cli import main
from harness.jvm.discovery import discover, inventory
from harness.jvm.fixtures import fixture_classpath
from harness.jvm.jdk import find_jdk
from harness.jvm.parity import error_detail, missing_class, missing_class_message, run_matrix
from harness.jvm.worker import SENTINEL_BITS, changed_cells, guard_violations, guarded_output

pytestmark = pytest.mark.jvm
ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ("Blocks", "VectorBlocks", "Q8_0MatmulKernel", "Q4_0MatmulKernel")
#: the mirrors of SKaiNET's interfaces that the scalar fixture kernels implement
MIRRORS = ("Q8_0MatmulKernel", "Q4_0MatmulKernel")
ONE_SHAPE = ["--shape", "16x256x2", "--jit", "pinned"]


@pytest.fixture(scope="module")
def jdk():
    return find_jdk()


@pytest.fixture(scope="module")
def cp(jdk) -> str:
    return fixture_classpath(jdk)


def subset(cp: str, where: Path, *kernels: str, support: tuple[str, ...] = SUPPORT) -> Path:
    """A class directory holding only the named fixture kernels (and the classes they need)."""
    pkg = where / "skoracle" / "fixture"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in (*support, *kernels):
        shutil.copy(Path(cp) / "skoracle" / "fixture" / f"{name}.class", pkg)
    api = Path("sk") / "ainet" / "backend" / "api" / "kernel"
    (where / api).mkdir(parents=True, exist_ok=True)
    for name in MIRRORS:
        shutil.copy(Path(cp) / api / f"{name}.class", where / api)
    return where


def skoracle(*args: str, cwd: Path | str = ROOT, timeout: float = 300,
             **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), **kw)


def verdicts(doc: dict) -> list[tuple]:
    return [(c["kernel"], c["shape"], c["lanes"], c["jit"], c["verdict"], c["reference"])
            for cfg in doc["configs"] for c in cfg["cases"]]


# ------------------------------------------------------------- 1: the caller's directory

def test_a_relative_classpath_and_jdk_from_another_directory_give_the_same_verdicts(
        cp, jdk, tmp_path):
    subset(cp, tmp_path / "build" / "classes", "ScalarQ8_0MatmulKernel",
           "PanamaVectorQ8_0MatmulKernel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rel = skoracle("jvm", "parity", "--classpath", "../build/classes", "--jdk",
                   os.path.relpath(jdk.home, elsewhere), "--lanes", "4", "--json", *ONE_SHAPE,
                   cwd=elsewhere)
    assert rel.returncode == 0, rel.stderr
    absolute = skoracle("jvm", "parity", "--classpath", str(tmp_path / "build" / "classes"),
                        "--lanes", "4", "--json", *ONE_SHAPE)
    got, want = verdicts(json.loads(rel.stdout)), verdicts(json.loads(absolute.stdout))
    assert got == want and len(got) == 2
    assert {v[4] for v in got} == {"bit-exact"}
    assert json.loads(rel.stdout)["classpath"] == str(tmp_path / "build" / "classes")


# --------------------------------------------- 2, 5, 11: the board's width, the user's line

def test_run_judges_the_host_width_and_4_lanes_and_names_the_4_lane_crash(cp, tmp_path):
    build = subset(cp, tmp_path / "build", "Overreads4LaneQ8_0MatmulKernel")
    out = tmp_path / "report"
    r = skoracle("run", "--only", "jvm", "--classpath", str(build), "--out", str(out),
                 "--json", timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    leg = doc["legs"][0]
    widths = leg["data"]["jvm"]["widths"]
    assert "4 lanes" in widths and any(w.endswith("(host)") for w in widths), widths
    crash = re.compile(r"FAIL: Overreads4LaneQ8_0MatmulKernel at 4 lanes: crash "
                       r"IndexOutOfBoundsException at Overreads4LaneQ8_0MatmulKernel\.java:\d+")
    assert crash.search(leg["summary"]), leg["summary"]
    assert "{" not in leg["summary"]  # no dict repr
    assert "4 lanes" in leg["summary"] and "(host)" in leg["summary"]
    rows = [row for row in leg["rows"] if "lanes=4 " in row["case"]]
    assert rows and all(row["verdict"] == "FAIL" for row in rows)
    host = [row for row in leg["rows"] if "lanes=4 " not in row["case"]]
    assert host and all(row["verdict"] == "bit-exact" for row in host)  # only 4 lanes crash
    # the user's frame comes first on every surface, before any JDK frame
    user = re.compile(r"IndexOutOfBoundsException at Overreads4LaneQ8_0MatmulKernel\.java:\d+ "
                      r"in Overreads4LaneQ8_0MatmulKernel\.matmul")
    for name, text in (("terminal", r.stderr), ("json", rows[0]["detail"]),
                       ("report.md", (out / "report.md").read_text()),
                       ("report.html", (out / "report.html").read_text())):
        m = user.search(text)
        assert m, name
        assert "jdk.internal" not in text[:m.start()].rsplit("\n", 1)[-1], name


def test_auto_is_not_run_twice_when_it_equals_a_width_given(cp, jdk, tmp_path):
    ks = discover(str(subset(cp, tmp_path, "ScalarQ8_0MatmulKernel")))
    run = run_matrix(jdk, str(tmp_path), ks, lanes=("auto", "4", "8", "16"), jit=("pinned",),
                     shapes=[(8, 64, 1, 0)])
    auto = next(cr for cr in run.configs if cr.lanes == "auto")
    host = auto.info["lanes"]
    assert auto.same_as == f"{host} lanes" and not auto.cases
    assert f"{host} lanes" in run.widths and len(run.widths) == len(set(run.widths))
    assert sum(len(cr.cases) for cr in run.configs) == 3  # 4, 8, 16; auto once, as its width


# -------------------------------------------------------------------- 3: guard cells

def test_a_kernel_writing_past_its_row_fails_naming_the_index(cp, tmp_path):
    build = subset(cp, tmp_path, "WritesPastRowQ8_0MatmulKernel", "ScalarQ8_0MatmulKernel")
    r = skoracle("jvm", "parity", "--classpath", str(build), "--lanes", "4", *ONE_SHAPE)
    assert r.returncode == 1, r.stderr
    row = next(line for line in r.stdout.splitlines()
               if line.startswith("WritesPastRowQ8_0MatmulKernel"))
    assert " FAIL " in row and "wrote output[outputOffset+outputDim+0] (row 0's call" in row
    ok = next(line for line in r.stdout.splitlines() if line.startswith("ScalarQ8_0Matmul"))
    assert " bit-exact " in ok  # the same values, within its row: not failed by the guards


def test_guard_cells_and_input_weight_checks_name_the_index():
    offsets, arr = guarded_output(2, 5)
    assert arr[offsets[0] - 1].view(np.uint32) == SENTINEL_BITS
    assert np.isnan(arr[offsets[1] + 5]) and not arr[offsets[0]:offsets[0] + 5].any()
    full = arr.copy()
    assert guard_violations(full, offsets, 5) == []
    full[offsets[1] - 2] = np.float32(np.nan)  # a kernel's own NaN is not the sentinel
    full[offsets[0] + 5] = 0.0
    got = guard_violations(full, offsets, 5)
    assert got[0].startswith("wrote output[outputOffset+outputDim+0] (row 0's call")
    assert got[1].startswith("wrote output[outputOffset+outputDim+14] (row 0's call")
    w = np.arange(40, dtype=np.uint8)
    bad = w.copy().view(np.int8)
    bad[33] = 0
    assert changed_cells("weight", bad, w, 30) == ["changed weight[33] (weightByteOffset+3)"]
    x = np.ones(4, np.float32)
    assert changed_cells("input", x.copy(), x, 0) == []


# --------------------------------------------------------- 4: a build the JVM cannot load

def test_a_class_the_build_cannot_load_is_a_setup_error_naming_it(cp, tmp_path):
    build = subset(cp, tmp_path, "ScalarQ8_0MatmulKernel", support=("Q8_0MatmulKernel",))
    r = skoracle("jvm", "parity", "--classpath", str(build), "--lanes", "4", *ONE_SHAPE)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "cannot load skoracle.fixture.Blocks" in lines[0]
    assert "needed by skoracle.fixture.ScalarQ8_0MatmulKernel" in lines[0]


@pytest.mark.parametrize("missing,jar", [
    ("kotlin/jvm/internal/Intrinsics", "kotlin-stdlib"),
    ("kotlinx/coroutines/CoroutineScope", "kotlinx-coroutines-core"),
])
def test_kotlin_runtime_classes_name_the_jar_that_provides_them(missing, jar):
    err = {"class": "java.lang.ExceptionInInitializerError", "message": "",
           "causes": [["java.lang.NoClassDefFoundError", missing]]}
    name = missing_class(err)
    assert name == missing.replace("/", ".")
    msg = missing_class_message(name, "sk.ainet.exec.kernel.PanamaVectorQ8_0MatmulKernel")
    assert f"add {jar} " in msg and "\n" not in msg
    assert missing_class({"class": "java.lang.NoClassDefFoundError",
                          "message": "Could not initialize class a.B"}) is None


def test_control_characters_in_exception_messages_are_escaped():
    detail, frame = error_detail({
        "class": "java.lang.IllegalStateException", "message": "bad\n\x1b[31mred\u202e",
        "frames": [["jdk.internal.util.Preconditions", "outOfBounds", "Preconditions.java", 100],
                   ["sk.ainet.K", "matmul", "K.kt", 56]]})
    assert detail.startswith("IllegalStateException at K.kt:56 in K.matmul: bad\\n\\x1b[31mred")
    assert "\\u202e" in detail and not re.search("[\x00-\x1f\x7f\u202e]", detail)
    assert frame == "sk.ainet.K.matmul(K.kt:56)"


# ---------------------------------------------- 7, 8, 9: nothing outlives the client

def _start_parity(build: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "jvm", "parity", "--classpath", str(build),
         "--lanes", "4", "--timeout", "300", "-v", *ONE_SHAPE, *extra],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        preexec_fn=default_sigint)


def _until_hanging(client: subprocess.Popen[str], before: str = "DropsLastBlockMatmulKernel"
                   ) -> tuple[set[int], str]:
    """Wait for the verdict of kernel `before` (the next one hangs); the client's process
    tree and the JVM worker's log file."""
    for line in client.stderr:
        if before in line:
            break
    time.sleep(1.0)  # the hanging kernel is now running
    tree = descendants(client.pid)
    worker = next(p for p in tree if "harness.jvm.worker:main" in cmdline(p))
    return tree, cmdline(worker).split()[-1]


def _gone(pids: set[int], timeout: float = 10.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p: c for p in pids if (c := cmdline(p))}
        if not left:
            return {}
        time.sleep(0.05)
    return left


def test_kill_9_of_jvm_parity_leaves_no_worker_no_kernel_process_and_no_log(cp, tmp_path):
    # LeavesProcess starts `sleep 2741` and returns; NeverReturns then hangs
    build = subset(cp, tmp_path, "LeavesProcessQ8_0MatmulKernel", "ScalarQ8_0MatmulKernel",
                   "NeverReturnsQ8_0MatmulKernel")
    client = _start_parity(build)
    try:
        tree, log = _until_hanging(client, "LeavesProcessQ8_0MatmulKernel")
        assert tree and Path(log).exists() and "skoracle-jvm-" in log
        assert any(cmdline(p) == "sleep 2741" for p in tree)
        client.kill()
        client.wait(10)
        assert _gone(tree) == {}
        assert not Path(log).exists()
    finally:
        if client.poll() is None:
            client.kill()


def test_ctrl_c_during_a_hanging_kernel_ends_jvm_parity_with_130_and_keeps_results(
        cp, tmp_path):
    build = subset(cp, tmp_path, "DropsLastBlockMatmulKernel", "NeverReturnsQ8_0MatmulKernel")
    client = _start_parity(build)
    try:
        tree, log = _until_hanging(client)
        t0 = time.monotonic()
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
        took = time.monotonic() - t0
        print(f"jvm parity: SIGINT to exit {took:.2f}s")
        assert client.returncode == 130, err
        assert took < 10, took  # not the 300 s per-call timeout (measured ~0.3 s)
        rows = {line.split()[0]: line for line in out.splitlines()
                if line.startswith(("DropsLast", "NeverReturns"))}
        assert " FAIL " in rows["DropsLastBlockMatmulKernel"]  # judged before: kept
        assert " interrupted " in rows["NeverReturnsQ8_0MatmulKernel"]
        assert "interrupted" in err
        assert _gone(tree) == {} and not Path(log).exists()
    finally:
        if client.poll() is None:
            client.kill()


def test_ctrl_c_during_a_hanging_kernel_ends_run_with_130_and_a_partial_report(cp, tmp_path):
    build = subset(cp, tmp_path / "b", "DropsLastBlockMatmulKernel",
                   "NeverReturnsQ8_0MatmulKernel")
    out = tmp_path / "report"
    client = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--only", "jvm", "--classpath", str(build),
         "--lanes", "4", "--out", str(out)], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both JIT modes' workers are up
            tree = descendants(client.pid)
            if sum("harness.jvm.worker:main" in cmdline(p) for p in tree) == 2:
                break
            time.sleep(0.1)
        time.sleep(8)  # DropsLastBlock judged (pinned at least); NeverReturns hanging
        tree = descendants(client.pid)
        t0 = time.monotonic()
        client.send_signal(signal.SIGINT)
        client.communicate(timeout=60)
        took = time.monotonic() - t0
        print(f"run: SIGINT to exit {took:.2f}s")
        assert client.returncode == 130 and took < 10
        doc = json.loads((out / "report.json").read_text())
        assert doc["partial"] is True and doc["exit_code"] == 130
        leg = doc["legs"][0]
        assert leg["status"] == "interrupted"
        kept = [r for r in leg["rows"] if r["case"].startswith("DropsLastBlockMatmulKernel")
                and "pinned" in r["case"]]
        assert kept and all(r["verdict"] == "FAIL" for r in kept)
        assert _gone(tree) == {}
    finally:
        if client.poll() is None:
            client.kill()


def test_a_process_a_kernel_leaves_running_is_ended_and_named(cp, tmp_path):
    build = subset(cp, tmp_path, "LeavesProcessQ8_0MatmulKernel", "ScalarQ8_0MatmulKernel")
    r = skoracle("jvm", "parity", "--classpath", str(build), "--lanes", "4", *ONE_SHAPE)
    assert r.returncode == 0, r.stderr
    killed = re.findall(r"killed pid (\d+) \(sleep 2741\), left running by the code under "
                        r"test", r.stdout)
    assert len(killed) == 1, r.stdout
    assert "sleep 2741" not in cmdline(int(killed[0]))


# -------------------------------------------------------- 12, 13: greppable, exit codes

def test_piped_parity_output_is_one_line_per_case(cp, tmp_path):
    build = subset(cp, tmp_path, "ScalarQ8_0MatmulKernel", "PanamaVectorQ8_0MatmulKernel",
                   "ThrowingQ8_0MatmulKernel")
    r = skoracle("jvm", "parity", "--classpath", str(build), "--lanes", "4", "--jit",
                 "pinned", "--shape", "16x256x2,7x512x1+40")
    assert r.returncode == 1
    for k in ("ScalarQ8_0MatmulKernel", "PanamaVectorQ8_0MatmulKernel",
              "ThrowingQ8_0MatmulKernel"):
        rows = [line for line in r.stdout.splitlines() if line.startswith(k + " ")]
        assert len(rows) == 2, k
        assert all(re.search(r" (bit-exact|crash) ", line) for line in rows)
    assert all(not line.endswith(" ") for line in r.stdout.splitlines())


def test_kernels_listing_names_each_source_once(cp, tmp_path):
    jar = tmp_path / "k.jar"
    with zipfile.ZipFile(jar, "w") as z:
        for f in Path(cp).rglob("*.class"):
            z.write(f, f.relative_to(cp).as_posix())
    r = skoracle("jvm", "kernels", "--classpath", str(jar))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(str(jar)) == 1
    assert len([line for line in r.stdout.splitlines()
                if line.startswith("skoracle.fixture.")]) == len(inventory(str(jar)))
    assert "not run: implements NarrowFloatMatmulKernel with a codec read at run time" \
        in r.stdout


def test_a_name_is_never_split_in_a_narrow_terminal():
    from rich.console import Console

    from harness.console import ResultTable

    t = ResultTable("t", ("kernel", "detail"), names=("kernel",))
    t.add_row("PanamaVectorQ8_0MatmulKernel", "crash " * 30)
    c = Console(width=70, force_terminal=True, record=True)
    t.print(c)
    assert "PanamaVectorQ8_0MatmulKernel" in c.export_text()


@pytest.mark.parametrize("what", ["empty dir", "empty jar", "empty classpath"])
def test_nothing_to_check_is_exit_2_for_kernels_and_parity(tmp_path, capsys, what):
    if what == "empty dir":
        cp = str(tmp_path)
    elif what == "empty jar":
        cp = str(tmp_path / "empty.jar")
        zipfile.ZipFile(cp, "w").close()
    else:
        cp = ""
    for cmd in ("kernels", "parity"):
        assert main(["jvm", cmd, "--classpath", cp]) == 2
        err = capsys.readouterr().err
        assert "no packed matmul kernel found" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------- 6: pytest plugin

INNER_TESTS = '''
import pytest


def test_uses_the_users_build(skainet_jvm):
    assert skainet_jvm.kernels and skainet_jvm.classpath.startswith("/")


@pytest.mark.llamacpp
@pytest.mark.jvm
@pytest.mark.cref
@pytest.mark.board
def test_every_documented_marker_is_registered():
    pass
'''


def test_plugin_skips_without_a_classpath_and_shows_its_target(cp, tmp_path):
    subset(cp, tmp_path / "build", "ScalarQ8_0MatmulKernel")
    (tmp_path / "test_user.py").write_text(INNER_TESTS)

    def pytest_(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               "--strict-markers", "-rs", "test_user.py", *args],
                              cwd=tmp_path, text=True, capture_output=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))

    bare = pytest_()
    assert bare.returncode == 0, bare.stdout
    assert "1 passed, 1 skipped" in bare.stdout
    assert "SKIPPED" in bare.stdout and "pass --skainet-classpath CP" in bare.stdout
    assert "skainet: no --skainet-classpath: tests using skainet_jvm are skipped" in bare.stdout
    assert re.search(r"skainet: JDK \S+ at /", bare.stdout)
    given = pytest_("--skainet-classpath", "build")  # relative to where pytest runs
    assert given.returncode == 0, given.stdout
    assert "2 passed" in given.stdout
    assert "skainet: --skainet-classpath build" in given.stdout
