"""`skoracle run --out DIR` never deletes or overwrites what the tool did not write, checks
its inputs before any leg runs, keeps its scratch in the system temp dir, and writes files
anyone can read."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from childsignals import default_sigint

from harness.cli import main
from harness.reportdir import REPORT_FILES, is_report_dir

ROOT = Path(__file__).resolve().parent.parent
FAST = ["run", "--only", "footprint"]  # one quick leg is enough to exercise --out


@pytest.fixture()
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private system temp dir, so the test can see what the run leaves in it."""
    d = tmp_path / "system-tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _legs_ran(out: str) -> bool:
    return "footprint:" in out


def test_new_directory_gets_the_report_and_no_scratch_is_left(tmp_path: Path, system_tmp: Path,
                                                              capsys) -> None:
    out = tmp_path / "site" / "report"
    assert main([*FAST, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    assert is_report_dir(out)
    assert os.listdir(out.parent) == ["report"]  # no .report.work, no temp name left beside it
    assert os.listdir(system_tmp) == []  # the scratch dir was removed
    capsys.readouterr()


def test_non_empty_directory_that_is_no_report_is_refused_before_any_leg(
        tmp_path: Path, system_tmp: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    assert main([*FAST, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "not empty" in captured.err and "--force" in captured.err
    assert "Traceback" not in captured.err and not _legs_ran(captured.out)
    assert os.listdir(out) == ["thesis.tex"] and os.listdir(system_tmp) == []
    # a report.json of someone else's schema is not a previous report either
    (out / "report.json").write_text(json.dumps({"schema": "other/1"}))
    assert main([*FAST, "--out", str(out)]) == 2
    assert json.loads((out / "report.json").read_text()) == {"schema": "other/1"}
    capsys.readouterr()


def test_force_writes_only_the_report_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    (out / "notes").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work\n")
    (out / "notes" / "a.txt").write_text("a\n")
    assert main([*FAST, "--out", str(out), "--force"]) == 0
    assert sorted(os.listdir(out)) == sorted(["notes", "thesis.tex", *REPORT_FILES])
    assert (out / "thesis.tex").read_text() == "years of work\n"
    assert (out / "notes" / "a.txt").read_text() == "a\n"
    capsys.readouterr()


def test_previous_report_is_replaced_file_by_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main([*FAST, "--out", str(out)]) == 0
    first = json.loads((out / "report.json").read_text())
    (out / "my-annotations.txt").write_text("keep me\n")
    assert main(["run", "--only", "footprint", "--seed", "7", "--out", str(out)]) == 0
    second = json.loads((out / "report.json").read_text())
    assert first["settings"]["seed"] == 0 and second["settings"]["seed"] == 7
    assert (out / "my-annotations.txt").read_text() == "keep me\n"
    assert sorted(os.listdir(out)) == sorted(["my-annotations.txt", *REPORT_FILES])
    assert os.listdir(tmp_path) == ["report"]
    capsys.readouterr()


def test_out_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "README.md").write_text("mine\n")
    monkeypatch.chdir(work)
    assert main([*FAST, "--out", "."]) == 2  # a source tree: refused before any leg
    captured = capsys.readouterr()
    assert "--out .: directory is not empty" in captured.err and not _legs_ran(captured.out)
    assert os.listdir(work) == ["README.md"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main([*FAST, "--out", "."]) == 0  # an empty directory: the report goes into it
    assert sorted(os.listdir(empty)) == sorted(REPORT_FILES)
    assert main([*FAST, "--out", "."]) == 0  # and now it is a previous report
    capsys.readouterr()


def test_report_is_world_readable_whatever_the_umask(tmp_path: Path, capsys) -> None:
    old = os.umask(0o077)
    try:
        assert main([*FAST, "--out", str(tmp_path / "r")]) == 0
        assert main([*FAST, "--out", str(tmp_path / "r")]) == 0  # replaced files too
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o755
    for name in REPORT_FILES:
        assert stat.S_IMODE((tmp_path / "r" / name).stat().st_mode) == 0o644, name
    capsys.readouterr()


@pytest.mark.parametrize("option, value, message", [
    ("--klib", "/nonexistent", "--klib /nonexistent: no such file or directory"),
    ("--klib", "/dev/zero", "--klib /dev/zero: not a regular file or directory"),
    ("--model", "/nonexistent.gguf", "--model /nonexistent.gguf: no such file"),
    ("--kernels-archive", "/nonexistent.a", "--kernels-archive /nonexistent.a: no such file"),
    ("--profile", "/nonexistent.toml", "--profile /nonexistent.toml: no such file"),
    ("--board-profile", "/nonexistent.toml", "--profile /nonexistent.toml: no such file"),
    ("--classpath", "/nonexistent.jar", "--classpath: /nonexistent.jar: no such file"),
    ("--budget", "1MB", "leaves less than nothing"),  # with the --reserve below
])
def test_bad_inputs_exit_2_before_any_leg_runs(tmp_path: Path, capsys, option: str,
                                               value: str, message: str) -> None:
    out = tmp_path / "report"
    assert main(["run", "--only", "footprint,gate", "--out", str(out), option, value,
                 "--reserve", "2GB" if option == "--budget" else "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("skoracle run: error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and not _legs_ran(captured.out)
    assert not out.exists()


@pytest.mark.parametrize("target", ["file", "under-file"])
def test_out_that_cannot_be_a_directory(tmp_path: Path, capsys, target: str) -> None:
    f = tmp_path / "f"
    f.write_text("x\n")
    out = f if target == "file" else f / "report"
    assert main([*FAST, "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert f.read_text() == "x\n"


def test_ctrl_c_removes_the_scratch_dir(tmp_path: Path) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(system_tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--only",
                             "oracle,fixtures,footprint", "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:  # then the fixtures leg writes its set into the scratch
        line = proc.stdout.readline()
        seen += line
        if line.startswith("oracle:") or not line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + rest  # interrupted in the fixtures leg
    assert os.listdir(system_tmp) == [], seen + rest
    assert is_report_dir(out) and sorted(os.listdir(tmp_path)) == ["report", "system-tmp"]


def test_json_prints_the_report_document_to_stdout(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main([*FAST, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == json.loads((out / "report.json").read_text())
    assert "footprint:" in captured.err  # progress and tables on stderr
