"""Bad input to the CLI is one clear line and exit 2, never a hang, a traceback or a
half-done action: a device or FIFO handed to elf-check, a manifest refusal without 'case'."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden"


def _special(kind: str, tmp_path: Path) -> str:
    if kind == "fifo":
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        return str(fifo)
    return "/dev/zero"


@pytest.mark.parametrize("kind", ["char-device", "fifo"])
def test_elf_check_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = _special(kind, tmp_path)
    # a subprocess with a timeout: a regression would read /dev/zero forever
    proc = subprocess.run([sys.executable, "-m", "harness", "elf-check", path], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"skoracle elf-check: error: {path}: not a regular file or directory\n"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("missing", ["case", "format", "message"])
def test_fixtures_verify_refusal_without_a_key(tmp_path: Path, missing: str, capsys) -> None:
    copy = tmp_path / "set"
    shutil.copytree(GOLDEN, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["refusals"], "the golden set records refusals"
    del manifest["refusals"][1][missing]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["fixtures", "--verify", str(copy)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before verifying anything
    name = manifest["refusals"][1].get("case", "no case name")
    assert captured.err.strip() == (f"skoracle fixtures: error: {copy / 'manifest.json'}: "
                                    f"refusals[1] ({name}) lacks '{missing}'")


def test_fixtures_verify_json_to_stdout_and_json_out_to_a_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "checks.json"
    assert main(["fixtures", "--verify", str(GOLDEN), "--json", "--json-out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed[0]["check"] == "sha256"
    assert os.listdir(tmp_path) == ["checks.json"]
    assert main(["fixtures", "--out", str(tmp_path / "s"), "--json"]) == 2
    assert "--json and --json-out go with --verify" in capsys.readouterr().err
