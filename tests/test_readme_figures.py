"""README figures that are counts of a benchmark are the benchmark's own output: the fuzz
table between the bench_fuzz markers is exactly what bench/bench_fuzz.py renders from the
figures file it wrote (bench/results/fuzz.json), never a hand edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.fuzz import README_BEGIN, README_END, readme_block, readme_table, replace_readme_block

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fuzz.json"


def test_readme_fuzz_table_is_the_benchmarks_rendering_of_its_figures() -> None:
    doc = json.loads(RESULTS.read_text())
    assert [r["parser"] for r in doc["results"]] == ["gguf", "elf", "ar", "zip", "klib"]
    assert all(r["cases"] == doc["cases_per_parser"] for r in doc["results"])
    assert readme_block((ROOT / "README.md").read_text()) == readme_table(doc)


def test_the_block_is_replaced_and_nothing_else() -> None:
    doc = {"measured": "2026-01-01", "machine": "m", "seed": 0, "results": [
        {"parser": "gguf", "cases": 10, "accepted": 4, "errors": {"HarnessError": 6},
         "unexpected": [], "max_case_seconds": 0.0125, "max_rss_bytes": 38 << 20,
         "seconds": 1.0}]}
    text = f"before\n{README_BEGIN}\nold hand-made figures\n{README_END}\nafter\n"
    new = replace_readme_block(text, readme_table(doc))
    assert new.startswith("before\n") and new.endswith(f"{README_END}\nafter\n")
    assert "| gguf | 10 | 4 | 6 HarnessError | 0 | 12 ms | 38 MiB |" in readme_block(new)
    assert "old hand-made" not in new
    with pytest.raises(HarnessError, match="no .* block"):
        replace_readme_block("no markers here", "x")
