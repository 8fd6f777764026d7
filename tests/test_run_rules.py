"""One rule for `run` and the subcommands it composes: an artifact with nothing to check is
an input error (exit 2) in `run --klib` as in `elf-check`; no option that does nothing; the
footprint leg names the budget it used; tables draw what a leg has and never a number that
reads as a verdict where there is none; --json on selfcheck and board-sim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from harness.cli import main
from harness.report import Leg, Report, render_html, render_markdown
from harness.run import summary_tables

ROOT = Path(__file__).resolve().parent.parent


def skoracle(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def test_nothing_to_check_is_exit_2_in_run_and_in_elf_check(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no ELF here\n")
    alone = skoracle("elf-check", str(empty))
    assert alone.returncode == 2 and "nothing to check" in alone.stderr
    out = tmp_path / "report"
    assert main(["run", "--only", "gate", "--klib", str(empty), "--out", str(out)]) == 2
    doc = json.loads((out / "report.json").read_text())
    gate = doc["legs"][0]
    assert gate["status"] == "error" and doc["exit_code"] == 2
    assert any(r["verdict"] == "error" and "nothing to check" in r["detail"]
               for r in gate["rows"])


def test_skainet_version_is_not_an_option(capsys) -> None:
    try:
        main(["run", "--skainet-version", "0.40.0"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "unrecognized arguments: --skainet-version" in capsys.readouterr().err


def test_footprint_leg_title_shows_the_budget_used(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["run", "--only", "footprint", "--budget", "0.4GB", "--out", str(out)]) == 1
    title = json.loads((out / "report.json").read_text())["legs"][0]["title"]
    assert title == "FunctionGemma-270M footprint against the budget 400.0 MB"
    out2 = tmp_path / "report2"
    assert main(["run", "--only", "footprint", "--out", str(out2)]) == 0
    title = json.loads((out2 / "report.json").read_text())["legs"][0]["title"]
    assert title.endswith("against the budget 1.90 GB (the SL2610's RAM)")


def _report() -> Report:
    kernels = Leg("kernels", "Kernels")
    kernels.add("Q4_K skainet_neon.fused vs exact", "not-judged", 2066656329, 0.5,
                "bound >= 2|y| on 90 of 192 outputs")
    kernels.add("Q8_0 ggml vs C", "bit-exact", 0, 0.25, "")
    gate = Leg("gate", "Gate")
    gate.add("tokens -march=armv8.2-a", "pass", detail="clean")
    return Report(legs=[kernels, gate])


def test_not_judged_rows_show_a_dash_and_why_and_empty_columns_are_not_drawn() -> None:
    rep = _report()
    md = render_markdown(rep)
    assert "2066656329" not in md
    assert "| Q4_K skainet_neon.fused vs exact | not-judged | — | 0.500 s | not judged: bound " \
           ">= 2|y| on 90 of 192 outputs |" in md
    assert "| case | verdict | detail |\n|---|---|---|\n| tokens -march=armv8.2-a | pass | " \
           "clean |" in md  # the gate leg has no ulps and no times
    html = render_html(rep)
    assert "2066656329" not in html
    gate_table = html[html.index("id='leg-gate'"):]
    assert "<th>max ulp</th>" not in gate_table[:gate_table.index("</table>")]
    console = Console(width=200, record=True)
    tables = summary_tables(rep)
    assert tables[1].columns == ["case", "verdict", "detail"]
    for t in tables:
        console.print(t.rich())
    text = console.export_text()
    assert "2066656329" not in text and "—" in text


def test_kernels_leg_records_no_ulp_for_a_not_judged_row(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["run", "--only", "kernels", "--out", str(out)]) == 0
    rows = json.loads((out / "report.json").read_text())["legs"][0]["rows"]
    not_judged = [r for r in rows if r["verdict"] == "not-judged"]
    assert not_judged and all(r["max_ulp"] is None for r in not_judged)


def test_selfcheck_json() -> None:
    r = skoracle("selfcheck", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["exit_code"] == 0
    assert [f["format"] for f in doc["formats"]] == [
        "Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_1", "Q8_1", "Q2_K", "Q3_K",
        "Q8_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]
    assert all(f["cases"] == doc["cases_per_format"] and not f["quantize_mismatch"]
               for f in doc["formats"])


def test_board_sim_json(tmp_path: Path) -> None:
    d = tmp_path / "sim"
    start = skoracle("board-sim", "start", "--dir", str(d), "--json")
    try:
        assert start.returncode == 0, start.stderr
        up = json.loads(start.stdout)
        assert up["state"] == "up" and Path(up["profile"]).is_file() and up["port"] > 0
        status = json.loads(skoracle("board-sim", "status", "--dir", str(d), "--json").stdout)
        assert status["state"] == "up" and status["pid"] == up["pid"]
    finally:
        stop = skoracle("board-sim", "stop", "--dir", str(d), "--json")
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["state"] == "stopped"
