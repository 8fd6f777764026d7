"""Every leg's one-line summary names what failed: the gate leg's failing summary is not its
passing one, and a leg whose own summary does not name its failures gets them named."""

from __future__ import annotations

import json
from pathlib import Path

from harness.board.build import fixture_program
from harness.cli import main
from harness.report import Leg
from harness.run import name_failures


def test_a_failing_leg_summary_names_its_failures() -> None:
    lg = Leg("oracle", "t")
    lg.add("Q4_0 quantize+dequantize, 40 cases", "bit-exact")
    lg.add("Q8_0 quantize+dequantize, 40 cases", "FAIL", detail="mismatching cases: zeros; big")
    lg.summary = "7 formats x 40 cases against ggml's C code"
    lg.settle()
    name_failures(lg)
    assert lg.summary == ("FAIL: Q8_0 quantize+dequantize, 40 cases: mismatching cases: zeros; "
                          "7 formats x 40 cases against ggml's C code")
    passing = Leg("oracle", "t", summary="same")
    passing.add("a", "bit-exact")
    passing.settle()
    name_failures(passing)
    assert passing.summary == "same"
    own = Leg("jvm", "t", summary="FAIL: K at 4 lanes: crash X at K.kt:1")
    own.add("K", "FAIL")
    own.settle()
    name_failures(own)
    assert own.summary == "FAIL: K at 4 lanes: crash X at K.kt:1"  # already names it


def test_gate_leg_failing_summary_differs_from_passing_and_names_the_artifact(
        tmp_path: Path) -> None:
    i8mm = fixture_program("i8mm", march="armv8.2-a+i8mm")
    assert main(["run", "--only", "gate", "--out", str(tmp_path / "ok")]) == 0
    assert main(["run", "--only", "gate", "--klib", str(i8mm), "--out",
                 str(tmp_path / "bad")]) == 1
    ok, bad = (json.loads((tmp_path / d / "report.json").read_text())["legs"][0]["summary"]
               for d in ("ok", "bad"))
    assert ok != bad and not ok.startswith("FAIL")
    assert bad.startswith(f"FAIL: {i8mm.name} (cortex-a55): ") and "I8MM" in bad.upper()
