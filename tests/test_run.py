"""`skoracle run`: legs compose into one report with a stable schema, exit codes a CI job
can use, and an HTML page that really renders (headless Chromium) with plots and tables."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from childsignals import default_sigint
from proctree import SimsStartedBy, cmdline

from harness.cli import main
from harness.report import SCHEMA
from oracle import BLOCK_TYPES

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "report"
    assert main(["run", "--only", "oracle,kernels,fixtures,footprint,gate",
                 "--out", str(out)]) == 0
    return out


def test_report_files_and_schema(report_dir: Path) -> None:
    doc = json.loads((report_dir / "report.json").read_text())
    assert doc["schema"] == SCHEMA and doc["exit_code"] == 0 and doc["partial"] is False
    legs = {leg["name"]: leg for leg in doc["legs"]}
    assert list(legs) == ["oracle", "kernels", "fixtures", "footprint", "gate"]
    for leg in legs.values():
        assert set(leg) >= {"name", "title", "status", "summary", "elapsed_s", "rows", "data"}
        for row in leg["rows"]:
            assert set(row) == {"case", "verdict", "max_ulp", "seconds", "detail"}
    assert all(r["verdict"] == "bit-exact" for r in legs["oracle"]["rows"])
    assert [r["case"].split()[0] for r in legs["oracle"]["rows"]] == list(BLOCK_TYPES)
    fp = {r["case"].split(":")[0]: r for r in legs["footprint"]["rows"]}
    assert "does NOT fit" in fp["dequant-fp32"]["detail"] and "fits" in fp["packed"]["detail"]
    assert fp["dequant-fp32"]["verdict"] == "known-failure"  # never a green "pass"
    kern = legs["kernels"]["rows"]
    assert all("ulp at max|y|" in r["detail"] and "bound/max|y|" in r["detail"] for r in kern
               if "vs exact" in r["case"])
    # NEON Q4_K/Q6_K quantize activations: their bound is wider than the outputs, so the
    # leg must not call them "within-bound"
    for fmt in ("Q4_K", "Q6_K"):
        row = next(r for r in kern if r["case"] == f"{fmt} skainet_neon.fused vs exact")
        assert row["verdict"] == "not-judged" and "would pass a sign flip" in row["detail"]
    assert "| oracle | pass |" in (report_dir / "report.md").read_text()


def test_fixtures_leg_says_what_it_checked_and_names_no_scratch_path(report_dir: Path) -> None:
    """The leg's set lives in the run's scratch, which is gone after the run: the summary
    gives counts and how to write a set to keep, never the vanished path."""
    doc = json.loads((report_dir / "report.json").read_text())
    fx = next(leg for leg in doc["legs"] if leg["name"] == "fixtures")
    m = re.match(r"(\d+) files generated in [\d.]+s and verified: (\d+)/(\d+) checks pass",
                 fx["summary"])
    assert m and int(m[1]) > 0 and m[2] == m[3] and int(m[3]) >= int(m[1]), fx["summary"]
    # every stored output recomputed bit for bit; a recorded refusal is a pass, never "bit-exact"
    assert len(fx["rows"]) > 0 and all(
        r["verdict"] == ("pass" if r["detail"] == "refused as recorded" else "bit-exact")
        for r in fx["rows"])
    assert "`skoracle fixtures --out DIR` writes one to keep" in fx["summary"]
    assert tempfile.gettempdir() not in json.dumps(fx) and "skoracle-run-" not in json.dumps(fx)


def test_kernel_leg_holds_ggml_to_the_c_library(report_dir: Path) -> None:
    doc = json.loads((report_dir / "report.json").read_text())
    kern = next(leg for leg in doc["legs"] if leg["name"] == "kernels")
    ggml_rows = [r for r in kern["rows"] if "ggml C" in r["case"]]
    assert len(ggml_rows) == 7 and all(r["verdict"] == "bit-exact" for r in ggml_rows)
    # the NEON order held bit for bit to the project's C kernels compiled with SKaiNET's flags
    neon_rows = [r for r in kern["rows"] if "vs fixture C kernel" in r["case"]]
    assert len(neon_rows) == 7 and all(r["verdict"] == "bit-exact" for r in neon_rows)
    # the x86-64 order held to the project's host fixture (Q8_0, Q4_0, Q4_K) built with gcc here
    x86_rows = [r for r in kern["rows"] if "skainet_x86 vs host fixture" in r["case"]]
    assert [r["case"].split()[0] for r in x86_rows] == ["Q4_0", "Q8_0", "Q4_K"]
    assert all(r["verdict"] == "bit-exact" for r in x86_rows)
    assert kern["data"]["ulp_samples"] and kern["data"]["matrix"]["cells"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium not installed: scripts/setup.sh installs the Debian package"
    return exe


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def test_html_renders_with_plots_and_tables(report_dir: Path, tmp_path: Path) -> None:
    page = (report_dir / "report.html").resolve()
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained, offline
    profile = tmp_path / "chrome-profile"
    dom = subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}",
                          "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    for plot in ("ulp_histogram", "footprint_bars", "verdict_heatmap"):
        assert f"id=\"{plot}\"" in dom and "data:image/png;base64," in dom, plot
    for table in ("legs", "leg-oracle", "leg-kernels", "leg-fixtures", "leg-footprint",
                  "leg-gate"):
        assert f"id=\"{table}\"" in dom, table
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-screenshot.png"
    shot.unlink(missing_ok=True)
    subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}",
                    f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 2000 and float(np.std(pixels)) > 0.05  # not a blank page


def test_unknown_leg_and_explicit_unavailable_leg_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["run", "--only", "oracle,nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown leg" in capsys.readouterr().err
    assert main(["run", "--only", "jvm", "--out", str(tmp_path / "r2")]) == 2
    doc = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert doc["exit_code"] == 2 and doc["legs"][0]["status"] == "unavailable"
    assert main(["run", "--only", "footprint,jvm", "--out", str(tmp_path / "r3")]) == 2
    # a JVM flag is an explicit request too, even without --only
    assert main(["run", "--only", "footprint", "--out", str(tmp_path / "r4")]) == 0
    assert main(["run", "--classpath", str(tmp_path), "--out", str(tmp_path / "r5")]) == 2
    doc = json.loads((tmp_path / "r5" / "report.json").read_text())
    statuses = {leg["name"]: leg["status"] for leg in doc["legs"]}
    assert statuses.pop("jvm") == "error" and set(statuses.values()) == {"pass"}  # bad path


def test_ctrl_c_writes_a_partial_report_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--only",
                             "oracle,kernels,fixtures", "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:  # wait until the first leg has finished
        line = proc.stdout.readline()
        seen += line
        if line.startswith("oracle:"):
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + rest
    doc = json.loads((out / "report.json").read_text())
    assert doc["partial"] is True and doc["exit_code"] == 130
    assert doc["legs"][0]["status"] == "pass"
    assert "PARTIAL" in (out / "report.html").read_text()


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3])
def test_ctrl_c_during_the_board_leg_leaves_nothing_running(tmp_path: Path, delay: float):
    """Once its board-in-a-box answers SSH, Ctrl-C at any point (connecting, pushing,
    mid-run) stops every process of that sim and still writes the report; if the leg
    finished first, the run just passes. Only this run's sim counts: others may be running
    board tests on the same machine."""
    out = tmp_path / "report"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--only", "board",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=default_sigint)
    sims = SimsStartedBy(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while not sims.up() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sims.up(), "its board-in-a-box never started"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            sims.look()  # a sim started after the signal would count too
            time.sleep(0.05)
        assert proc.wait(timeout=1) in (0, 130)
        doc = json.loads((out / "report.json").read_text())
        assert doc["partial"] is (proc.returncode == 130)
        deadline = time.monotonic() + 10
        while sims.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sims.processes()
        assert not left, [cmdline(pid) for pid in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sims.kill()


def test_board_leg_judges_kernel_parity_with_the_one_rule(tmp_path: Path) -> None:
    """`run --kernels-archive` on the project's test archive: the deliberately wrong kernel
    fails the leg, the summary names it, rows carry the mismatch counts and the inventory,
    and everything is labelled as the test fixture."""
    from harness.board.build import fixture_kernel_archive

    out = tmp_path / "report"
    code = main(["run", "--only", "board", "--kernels-archive", str(fixture_kernel_archive()),
                 "--out", str(out)])
    assert code == 1
    leg = json.loads((out / "report.json").read_text())["legs"][0]
    assert leg["status"] == "fail" and "FAILED: skainet_q5_0_matmul_rm" in leg["summary"]
    rows = {r["case"]: r for r in leg["rows"]}
    wrong = rows["skainet_q5_0_matmul_rm Q5_0 64x256 b1"]
    assert wrong["verdict"] == "FAIL" and " of 64 outputs differ" in wrong["detail"]
    assert rows["skainet_q5_1_matmul_rm Q5_1 64x256 b1"]["verdict"] == "bit-exact"
    inv = rows["kernel parity: inventory and rule"]["detail"]
    assert inv.startswith("[TEST FIXTURE") and "ABSENT from the archive (1)" in inv
    assert "passes only bit-exact" in inv
