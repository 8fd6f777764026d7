"""bench/bench_speed.py in its smoke form: tiny sizes, the whole table printed.

Speed goals are judged by the benchmark's printed ratios, never by timed assertions; this
only checks that every row of the issue's table is there, with a ratio against its peer
and a verdict, and that the load average is reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_smoke_run_prints_the_table():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "bench_speed.py", "--smoke"], cwd=ROOT / "bench",
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "load average at start:" in out and "load average at end:" in out
    assert "compiled twin in use" in out
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    whats = [ln.split("|")[1].strip() for ln in table]
    for sem in ("fast", "exact", "skainet_neon", "skainet_scalar", "skainet_panama"):
        assert f"reference `{sem}`" in whats
        assert any(w.startswith("packed peak RSS") and f"`{sem}`" in w for w in whats)
    for fmt in ("Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"):
        assert sum(w.startswith(f"dequantize {fmt} ") for w in whats) == 2
    assert any(w.startswith("lm_head") for w in whats)
    verdicts = [ln.rsplit("|", 2)[1].strip() for ln in table[1:]]
    assert all(v == "met" or v == "n/a" or v.startswith("MISSED by") for v in verdicts)
    assert "goals:" in out
