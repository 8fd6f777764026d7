"""Board decode parity held to the reference: `--expect-from MODEL.gguf --tokens ...` on the
board-in-a-box (real dropbear, qemu-aarch64), and the run report's board leg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.board.build import fixture_program
from harness.board.sim import BoardSim
from harness.reference.cli import board_reference_ids
from refmodel import Gemma3Reference

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "golden" / "tiny-gemma3.gguf"


@pytest.fixture(scope="module")
def sim():
    with BoardSim() as s:
        yield s
    assert not s.processes(), "the board-in-a-box left processes behind"


def test_decode_parity_expects_the_reference_ids(sim, tmp_path):
    tokens = fixture_program("tokens", out_dir=tmp_path)
    ref = Gemma3Reference(TINY, "skainet_neon").decode([2, 105, 300], 4).tokens
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(map(str, ref)))
    base = [sys.executable, "-m", "harness", "board", "decode-parity", "--profile",
            str(sim.profile_path), "--expect-from", str(TINY), "--tokens", "2,105,300",
            "--expect-n", "4", "--input", f"{ids}=t.txt", str(tokens), "--", "t.txt"]
    ok = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all 4 match" in ok.stdout and "reference (skainet_neon)" in ok.stderr
    bad = subprocess.run([*base, "2"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 1
    assert f"FIRST DIVERGENCE at index 2: expected {ref[2]}, got {ref[2] + 1}" in bad.stdout
    missing = subprocess.run(base[:9] + base[11:], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
    assert missing.returncode == 2 and "--expect-from needs --tokens" in missing.stderr


def test_run_board_leg_takes_the_reference_ids(tmp_path):
    ids, note = board_reference_ids(tmp_path, n=3)
    assert ids == Gemma3Reference(TINY, "skainet_neon").decode([2, 105, 300], 3).tokens
    assert "skoracle reference" in note and (tmp_path / "tiny-gemma3.gguf").is_file()
