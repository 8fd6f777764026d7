"""Layers point one way: the oracle, the kernel references, the reference model and the GGUF
reader below them import nothing from the harness above (issue 20)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWER = ("oracle", "kernels_ref", "refmodel", "ggufio")


def _imported_modules(path: Path) -> list[str]:
    """Every module an `import` or `from ... import` of the file names, at any depth."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", LOWER)
def test_lower_package_sources_never_import_the_harness(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}: no sources found"
    upward = [f"{p.relative_to(ROOT)}: {m}" for p in files for m in _imported_modules(p)
              if m == "harness" or m.startswith("harness.")]
    assert upward == []


def test_importing_every_lower_module_loads_no_harness_module() -> None:
    """Imports (lazy ones included: refmodel's names) run in a fresh interpreter, which the
    pytest plugin of this package has not touched."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for pkg in LOWER for p in (ROOT / pkg).rglob("*.py"))
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "import refmodel; refmodel.Gemma3Reference\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'harness')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True, timeout=120).stdout
    assert len(modules) > len(LOWER) and json.loads(out) == []


def test_the_quantizer_reads_no_proc_file() -> None:
    """The quantizer's memory check uses a portable estimate or the caller's budget (the
    MemAvailable reading lives in harness.procmem)."""
    assert "/proc" not in (ROOT / "oracle" / "quants.py").read_text()
    assert "/proc/meminfo" in (ROOT / "harness" / "procmem.py").read_text()
