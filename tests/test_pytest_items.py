"""`pytest --skainet-parity`: parity cases as test items, run as a user runs them (a pytest
subprocess in an empty directory) on the project's own fixture kernels (fixtures/jvm,
fixtures/board): the verdict -> outcome mapping, the wrong fixture kernels failing with
their names, -k, -x, --lf, --junitxml, and pytest-xdist's -n."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.parity.verdict import Verdict, item_outcome

ROOT = Path(__file__).resolve().parents[1]
JVM_LABEL = "[project fixture kernel (not SKaiNET)]"
BOARD_LABEL = "[TEST FIXTURE: the project's own C kernels"
#: one shape, one JIT mode, a short hang timeout: the JVM fixture matrix in seconds
JVM_FAST = ["--skainet-fixtures", "--skainet-jit", "pinned", "--skainet-shape", "16x256x2",
            "--skainet-timeout", "5"]


def run_pytest(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """pytest with the plugin of this checkout, in `cwd` (no test files of its own)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pytest", "--skainet-parity", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def junit_cases(path: Path) -> dict[str, dict]:
    """testcase name -> {classname, outcome, message, properties} from a junit XML file."""
    out = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome, message = tag, el.get("message", "")
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        out[tc.get("name")] = {"classname": tc.get("classname"), "outcome": outcome,
                               "message": message, "props": props}
    return out


# -- the mapping itself --------------------------------------------------------------------

@pytest.mark.parametrize(("verdict", "asked", "outcome"), [
    (Verdict.BIT_EXACT, False, "passed"), (Verdict.WITHIN_BOUND, False, "passed"),
    (Verdict.PASS, False, "passed"), (Verdict.FAIL, False, "failed"),
    (Verdict.CRASH, False, "failed"), (Verdict.TIMEOUT, False, "failed"),
    (Verdict.ERROR, False, "failed"), (Verdict.UNAVAILABLE, False, "skipped"),
    (Verdict.UNAVAILABLE, True, "failed"), (Verdict.NOT_RUNNABLE, False, "skipped"),
    (Verdict.NOT_RUNNABLE, True, "failed"), (Verdict.NOT_JUDGED, False, "skipped"),
    (Verdict.SKIPPED, True, "skipped"), (Verdict.KNOWN_FAILURE, False, "xfailed"),
])
def test_item_outcome_of_every_verdict(verdict, asked, outcome):
    assert item_outcome(verdict, asked) == outcome


def test_every_verdict_has_an_outcome_and_only_passing_ones_pass():
    passing = {v for v in Verdict if item_outcome(v, True) == "passed"}
    assert passing == {Verdict.BIT_EXACT, Verdict.WITHIN_BOUND, Verdict.PASS}


# -- JVM items on the fixture kernels ------------------------------------------------------

def test_jvm_items_outcome_is_the_verdict_and_junit_names_the_failing_kernel(tmp_path):
    """-k picks the 4-lane items of the fixture JVM kernels; under -n 2 each worker runs
    its own JVM; the wrong kernels fail with their name, verdict and (crash) the user's
    file:line; the good ones pass; junit XML carries all of it, labelled as fixtures."""
    xml = tmp_path / "junit.xml"
    proc = run_pytest(tmp_path, *JVM_FAST, "-k", "fixture-jvm and lanes4 and Q8_0",
                      "-n", "2", "-v", f"--junitxml={xml}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[gw0]" in proc.stdout and "[gw1]" in proc.stdout  # spread over both workers
    cases = junit_cases(xml)
    by_kernel = {name.split("[")[0]: c for name, c in cases.items()}
    assert set(by_kernel) >= {"ScalarQ8_0MatmulKernel", "LeavesProcessQ8_0MatmulKernel",
                              "DropsLastBlockMatmulKernel", "ThrowingQ8_0MatmulKernel",
                              "NeverReturnsQ8_0MatmulKernel",
                              "WritesPastRowQ8_0MatmulKernel"}
    assert all(n.endswith("[Q8_0-16x256x2-lanes4-pinned]") for n in cases)
    assert {c["classname"] for c in cases.values()} == {"skainet-parity.fixture-jvm"}
    good = by_kernel["ScalarQ8_0MatmulKernel"]
    assert good["outcome"] == "passed" and good["props"]["verdict"] == "bit-exact"
    assert good["props"]["label"] == "project fixture kernel (not SKaiNET)"
    drops = by_kernel["DropsLastBlockMatmulKernel"]
    assert drops["outcome"] == "failure" and drops["props"]["verdict"] == "FAIL"
    assert drops["message"].startswith(f"{JVM_LABEL} FAIL: OUTSIDE error_bound")
    crash = by_kernel["ThrowingQ8_0MatmulKernel"]
    assert crash["outcome"] == "failure"
    assert crash["message"].startswith(f"{JVM_LABEL} crash: IllegalStateException at "
                                       "ThrowingQ8_0MatmulKernel.java:16 in "
                                       "ThrowingQ8_0MatmulKernel.checkLayout: fixture kernel "
                                       "refuses inputDim 256")
    hang = by_kernel["NeverReturnsQ8_0MatmulKernel"]
    assert hang["outcome"] == "failure" and "timeout: a call did not return within 5s" in \
        hang["message"]
    past = by_kernel["WritesPastRowQ8_0MatmulKernel"]
    assert past["outcome"] == "failure" and "outside its output range" in past["message"]
    assert "items under fixture-jvm / fixture-board run the project's own fixture kernels: " \
        "project fixture kernel (not SKaiNET)" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_exitfirst_then_last_failed_rerun_only_the_failure(tmp_path):
    """-x stops at the first failing item; --lf then runs only the items that failed."""
    sel = ["-k", "fixture-jvm and lanes4 and (ScalarQ8_0 or DropsLast)", "-p", "cacheprovider"]
    first = run_pytest(tmp_path, *JVM_FAST, *sel, "-x")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "stopping after 1 failures" in first.stdout
    again = run_pytest(tmp_path, *JVM_FAST, *sel, "--lf", "-v")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "run-last-failure: rerun previous 1 failure" in again.stdout
    ran = [ln for ln in again.stdout.splitlines() if ln.startswith("skainet-parity::")
           and (" PASSED" in ln or " FAILED" in ln)]
    assert len(ran) == 1 and "DropsLastBlockMatmulKernel[Q8_0-16x256x2-lanes4-pinned]" in ran[0]


def test_a_lane_width_asked_for_that_the_cpu_lacks_fails_not_skips(tmp_path):
    """--skainet-lanes 16 on a CPU without 512-bit vectors: the Panama kernel's item is
    unavailable, and since the user asked for it, it fails saying why."""
    wide = "avx512f" in Path("/proc/cpuinfo").read_text()
    proc = run_pytest(tmp_path, *JVM_FAST, "--skainet-lanes", "16", "-k",
                      "PanamaVectorQ8_0MatmulKernel", "-rA")
    out = proc.stdout
    if wide:
        assert proc.returncode == 0 and "1 passed" in out, out
    else:
        assert proc.returncode == 1 and "1 failed" in out, out
        assert "unavailable: 16 lanes not available on this CPU" in out


# -- board items ------------------------------------------------------------------------

def test_board_items_on_the_board_in_a_box(tmp_path):
    """One item per native kernel x shape on the fixture archive; the deliberately wrong
    skainet_q5_0_matmul_rm fails by name, a shape that is no whole block is skipped."""
    xml = tmp_path / "junit.xml"
    proc = run_pytest(tmp_path, "--skainet-fixtures", "--skainet-formats", "Q5_0",
                      "--skainet-shape", "32x256x1", "--skainet-shape", "8x48x1",
                      "-k", "fixture-board", f"--junitxml={xml}", "-rs")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = junit_cases(xml)
    assert cases["skainet_q5_0_matmul[Q5_0-32x256x1]"]["outcome"] == "passed"
    assert cases["skainet_q5_0_matmul[Q5_0-32x256x1]"]["props"]["verdict"] == "bit-exact"
    wrong = cases["skainet_q5_0_matmul_rm[Q5_0-32x256x1]"]
    assert wrong["outcome"] == "failure" and wrong["classname"] == "skainet-parity.fixture-board"
    assert wrong["message"].startswith(BOARD_LABEL) and "FAIL: " in wrong["message"]
    assert "outputs differ" in wrong["message"]
    assert cases["skainet_q5_0_matmul[Q5_0-8x48x1]"]["outcome"] == "skipped"
    assert "not a multiple of Q5_0's 32-element block" in proc.stdout


# -- decode items ---------------------------------------------------------------------------

def test_decode_items_one_per_prompt(tmp_path):
    """--expect-from MODEL with two --tokens: two items; the program prints the reference's
    ids for the first prompt (pass) and not for the second (FAIL at index 0)."""
    from harness.board.build import fixture_program
    from harness.board.decode import end_token_ids
    from harness.golden import tinygemma
    from harness.reference.cli import expected_ids

    model = tmp_path / "tiny.gguf"
    tinygemma.write(model)
    ids, _ = expected_ids(model, [2, 105, 300], 8, stop_ids=end_token_ids(model))
    (tmp_path / "expected.txt").write_text(",".join(map(str, ids)))
    xml = tmp_path / "junit.xml"
    proc = run_pytest(tmp_path, "--expect-from", "tiny.gguf", "--tokens", "2,105,300",
                      "--tokens", "2,105", "--expect-n", "8",
                      "--decode-program", str(fixture_program("voicecc")),
                      "--decode-args", "toks.txt --delay-ms 0",
                      "--decode-input", "expected.txt=toks.txt", f"--junitxml={xml}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = junit_cases(xml)
    assert cases["tokens[2,105,300]"]["outcome"] == "passed"
    bad = cases["tokens[2,105]"]
    assert bad["outcome"] == "failure"
    assert bad["message"].startswith("FAIL: token ids: FIRST DIVERGENCE at index 0")


# -- usage -------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "says"), [
    ((), "--skainet-parity: nothing to run"),
    (("--expect-from", "m.gguf"), "--expect-from needs --tokens"),
    (("--skainet-fixtures", "--skainet-lanes", "5"), "--skainet-lanes: 5 not one of"),
    (("--skainet-fixtures", "--skainet-shape", "16x"), "--skainet-shape: '16x' is not"),
    (("--kernels-archive", "nope.a"), "--kernels-archive"),
])
def test_bad_options_are_one_line_usage_errors(tmp_path, args, says):
    proc = run_pytest(tmp_path, *args)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr


def test_archive_given_as_kernels_archive_is_still_labelled_and_an_unreachable_board_fails(
        tmp_path):
    """The fixture archive passed as --kernels-archive is still the project's fixture (its
    items sit under fixture-board, labelled); a board that refuses the connection fails
    every item asked for, saying so, after one attempt."""
    from harness.board.build import fixture_kernel_archive

    xml = tmp_path / "junit.xml"
    proc = run_pytest(tmp_path, "--kernels-archive", str(fixture_kernel_archive()),
                      "--board", "root@127.0.0.1:9", "--skainet-formats", "Q8_0",
                      "--skainet-shape", "32x256x1", f"--junitxml={xml}", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = junit_cases(xml)
    assert set(cases) == {"skainet_q8_0_matmul[Q8_0-32x256x1]",
                          "skainet_q8_0_matmul_rm[Q8_0-32x256x1]"}
    for c in cases.values():
        assert c["classname"] == "skainet-parity.fixture-board" and c["outcome"] == "failure"
        assert c["message"].startswith(f"{BOARD_LABEL}") and "error: board: " in c["message"]
