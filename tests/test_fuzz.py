"""A bounded fuzz run of every input parser (harness/fuzz.py), in a memory-capped child:
only the project's own errors, no case over a few seconds, no worker over the cap.

bench/bench_fuzz.py runs the long version (10 000 cases per parser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.fuzz import format_result, gate_seeds, gguf_seeds, run_parser
from harness.gate.testbins import Built, build_once

#: Cases per parser, sized for a CI budget of about 15 s in all.
CASES = {"gguf": 400, "elf": 150, "ar": 400, "zip": 300, "klib": 120}
CASE_SECONDS = 3.0
MEMORY_CAP = 1 << 30


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    built: Built = build_once(lambda: tmp_path_factory.mktemp("gate-bins"))
    out = gate_seeds(built)
    out["gguf"] = gguf_seeds(tmp_path_factory.mktemp("gguf-seeds"))
    return out


@pytest.mark.parametrize("parser", sorted(CASES))
def test_fuzz_parser(seeds: dict[str, list[bytes]], parser: str) -> None:
    result = run_parser(parser, seeds[parser], CASES[parser], seed=1,
                        case_seconds=CASE_SECONDS, memory_cap=MEMORY_CAP)
    print(format_result(result))
    assert result.unexpected == []
    assert result.cases == CASES[parser]
    assert sum(result.errors.values()) > 0  # the mutations do reach the error paths
    assert result.max_case_seconds < CASE_SECONDS and result.max_rss_bytes < MEMORY_CAP


def test_a_case_that_escapes_is_reported(tmp_path: Path) -> None:
    """The worker's verdicts can fail: bytes gguf-py would choke on, with the checker
    bypassed, are reported as unexpected."""
    import harness.fuzz as fz

    result = fz.FuzzResult("x")
    assert fz.format_result(result).startswith("x")
    broken = run_parser("zip", [b"not a zip"], 5, memory_cap=MEMORY_CAP)
    assert broken.unexpected == [] and broken.errors == {"GateError": 5}
    over = run_parser("gguf", [b"GGUF" + bytes(20)], 3, memory_cap=16 << 20)
    assert over.unexpected and "worker exited" in over.unexpected[0]


def test_member_names_with_control_characters_stay_on_one_line() -> None:
    """Found by bench/bench_fuzz.py (klib, seed 0, case 8385): a zip member name holding a
    newline made a two-line error message."""
    import io
    import zipfile

    from harness.gate import profile
    from harness.gate.check import check_bytes

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lib/x\ny.a", b"!<arch>\n" + b"z" * 20)
    rep = check_bytes("n.klib", buf.getvalue(), profile("cortex-a55"))
    assert rep.exit_code == 2
    assert rep.error.startswith("n.klib!/lib/x\\ny.a: member header at offset 8: truncated")
    assert "\n" not in rep.error
