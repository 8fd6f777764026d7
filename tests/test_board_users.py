"""The board leg as SKaiNET's users run board programs (voicecc-style), end to end on the
board-in-a-box: memory of the whole run and OOM of a child, output formats, end tokens,
deploying with --env/--cwd/--stage, timing, the speed target; nothing outliving a run, bounded
client memory; --json, help, architecture refusal and `board check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.board.build import fixture_program
from harness.board.session import BoardSession
from harness.board.sim import BoardSim

ROOT = Path(__file__).resolve().parent.parent
IDS = [2387, 2387, 17, 106, 44, 45]  # what the stand-in "generates": it stops at 106


@pytest.fixture(scope="module")
def sim():
    with BoardSim() as s:
        yield s
    assert not s.processes(), "the board-in-a-box left processes behind"


@pytest.fixture(scope="module")
def progs():
    return {n: fixture_program(n) for n in ("voicecc", "daemon", "flood", "showenv")}


@pytest.fixture()
def board(sim):
    with BoardSession(sim.profile) as s:
        yield s


def board_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "board", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=kw.pop("timeout", 300),
                          **kw)


def prof(sim: BoardSim) -> list[str]:
    return ["--profile", str(sim.profile_path)]


@pytest.fixture()
def tokfile(tmp_path) -> Path:
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, IDS)))
    return f


# -- 1: memory of the whole run, OOM of a child -----------------------------------------------

def test_peak_memory_counts_every_process(board, progs, tokfile):
    res = board.run(progs["voicecc"], args=["t.txt", "--child-mib", "200", "--child-hold-ms",
                                            "800", "--delay-ms", "150"],
                    inputs={"t.txt": tokfile})
    assert res.ok, res.summary()
    assert len(res.processes) >= 2, res.processes
    child = max(res.processes, key=lambda p: p["peak_rss_kb"])
    main = next(p for p in res.processes if p["pid"] == res.pid)
    assert child["pid"] != res.pid and child["peak_rss_kb"] >= 200 * 1024
    assert main["peak_rss_kb"] < 100 * 1024  # the driver's own VmHWM misses the child
    # the whole run: both at once (the child holds its 200 MiB while the parent decodes)
    assert res.peak_rss_kb >= child["peak_rss_kb"] + main["peak_rss_kb"] * 0.5
    assert "whole run, " in res.summary()


def test_child_out_of_memory_is_the_verdict_though_the_driver_exits_0(sim, progs, tokfile):
    """The child allocates past the board-in-a-box's cap (2500 MiB > 1.9 GB): the driver
    prints "[gen] step N FAILED" and exits 0; the run is "out of memory", exit 1."""
    run = board_cli("run", *prof(sim), "--json", "--input", f"{tokfile}=t.txt",
                    str(progs["voicecc"]), "--", "t.txt", "--child-mib", "2500")
    assert run.returncode == 1, run.stderr
    data = json.loads(run.stdout)
    assert data["exit_status"] == 0 and data["out_of_memory"] and not data["ok"]
    assert data["reason"].startswith("out of memory: a process of the run failed to allocate "
                                     "('out of memory: cannot allocate 2500 MiB' on stderr)")
    # the kernel log was read, or the result says it could not be
    kernel = [n for n in data["notes"] if "kernel log" in n]
    assert kernel == [] or "could not be checked there" in kernel[0]


# -- 2, 3, 6, 7: decode parity on voicecc output -----------------------------------------------

def decode_cli(sim, progs, tokfile, *extra, profile="1", prog_args=("--delay-ms", "60")):
    return board_cli("decode-parity", *prof(sim), "--input", f"{tokfile}=t.txt",
                     "--env", f"VOICECC_PROFILE={profile}", *extra, str(progs["voicecc"]),
                     "--", "t.txt", "--load-ms", "400", *prog_args)


def test_voicecc_format_with_perf_lines(sim, progs, tokfile):
    run = decode_cli(sim, progs, tokfile, "--format", "voicecc", "--expect", "2387,2387,17,106",
                     "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(run.stdout)
    p = data["parity"]
    assert p["ids_match"] and p["got"] == [2387, 2387, 17, 106]  # not the llama-ref list
    t = p["timing"]
    assert t["step_source"] == "[perf] lines" and len(t["step_ms"]) == 4
    assert all(55 <= ms < 2000 for ms in t["step_ms"])
    assert t["speed_source"] == "ms/token line" and t["tok_per_s"] * t["ms_per_token"] == \
        pytest.approx(1000)
    assert t["ttft_s"] >= 0.4 and t["load_s"] >= 0.35  # --load-ms 400 before the first step
    assert p["target_tps"] == 9.7 and p["emulated"] and data["run"]["ok"]
    assert p["target_verdict"] is None  # under emulation the speed is not judged


def test_voicecc_text_report_prints_both_figures_and_the_target(sim, progs, tokfile):
    run = decode_cli(sim, progs, tokfile, "--format", "voicecc", "--expect", "2387,2387,17,106")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "token ids: all 4 match the reference" in out
    assert " tok/s = " in out and " ms/token (from ms/token line)" in out
    assert "9.7 tok/s target (llama.cpp on the SL2610's 2-core Cortex-A55, same GGUF)" in out
    assert "target (llama.cpp on the SL2610's 2-core Cortex-A55, same GGUF): not judged: " \
        "measured under qemu-user emulation" in out
    assert "says nothing about the board's speed" in out and "meets" not in out
    assert "timing: load " in out and "steps from [perf] lines" in out


def test_timing_from_arrival_times_without_profile(sim, progs, tokfile):
    run = decode_cli(sim, progs, tokfile, "--format", "voicecc", "--expect", "2387,2387,17,106",
                     "--json", profile="0", prog_args=("--delay-ms", "300"))
    assert run.returncode == 0, run.stderr
    t = json.loads(run.stdout)["parity"]["timing"]
    assert t["step_source"] == "token-line arrival times" and len(t["step_ms"]) == 3
    assert t["speed_source"].startswith("mean of 3 step times")
    assert 1000 / 9.7 < t["ms_per_token"]  # 300 ms per step under qemu: below the target


def test_explicit_period_pattern(sim, progs, tokfile):
    run = decode_cli(sim, progs, tokfile, "--format", "voicecc", "--expect", "2387,2387,17,106",
                     "--ms-per-token-pattern", r"(\d+(?:\.\d+)?) ms/token", "--json")
    t = json.loads(run.stdout)["parity"]["timing"]
    assert run.returncode == 0 and t["ms_per_token"] > 60 and t["tok_per_s"] < 1000 / 60
    both = decode_cli(sim, progs, tokfile, "--expect", "1", "--tps-pattern", "(1)",
                      "--ms-per-token-pattern", "(1)")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_no_token_lines_names_the_pattern_and_shows_output(sim, progs, tokfile):
    run = decode_cli(sim, progs, tokfile, "--expect", "2387,2387")
    assert run.returncode == 1
    assert "NO token lines found with --token-pattern '\\btoken" in run.stdout
    assert "  | [gen] step=0 next=2387" in run.stdout
    assert "these lines match --format voicecc" in run.stdout


def test_bad_patterns_are_exit_2_before_the_run(sim, progs, tokfile):
    for pattern in (r"next=\d+", r"(a)|(b)", "("):
        run = decode_cli(sim, progs, tokfile, "--token-pattern", pattern, "--expect", "1")
        assert run.returncode == 2 and "--token-pattern" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr and "board: voicecc" not in run.stderr


def test_expect_ids_and_at_file(sim, progs, tokfile, tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("2387\n2387\n17\n106\n")
    for expect in ("2387,2387,17,106", f"@{ref}"):
        run = decode_cli(sim, progs, tokfile, "--format", "voicecc", "--expect", expect)
        assert run.returncode == 0 and "all 4 match" in run.stdout, run.stdout + run.stderr
    missing = decode_cli(sim, progs, tokfile, "--expect", f"@{tmp_path / 'none.txt'}")
    assert missing.returncode == 2 and "none.txt: cannot read" in missing.stderr


# -- 4: end tokens ------------------------------------------------------------------------------

def test_expect_from_stops_at_the_ggufs_end_token(sim, progs, tmp_path, monkeypatch):
    """A correct run that stops at the model's end-of-turn id passes: the reference decode
    stops at the GGUF's first end token (not decoding the rest of --expect-n), and the
    program's output is cut after its own."""
    from harness.golden import tinygemma
    from harness.reference.cli import expected_ids

    plain = tmp_path / "plain.gguf"
    tinygemma.write(plain)
    ref, _ = expected_ids(plain, [2, 105, 300], 6)
    end = ref[0]
    model = tmp_path / "eot.gguf"
    add_eos = tinygemma.SkainetGGUFWriter.add_eos_token_id

    def add_eos_and_eot(self, i):
        add_eos(self, i)
        self.add_eot_token_id(end)

    with monkeypatch.context() as m:
        m.setattr(tinygemma.SkainetGGUFWriter, "add_eos_token_id", add_eos_and_eot)
        tinygemma.write(model)
    toks = tmp_path / "gen.txt"
    toks.write_text(f"{end} 5 5 5")  # the program stops after its end token
    args = ["decode-parity", *prof(sim), "--format", "voicecc", "--tokens", "2,105,300",
            "--expect-n", "6", "--input", f"{toks}=t.txt", "--json"]
    run = board_cli(*args, "--expect-from", str(model), str(progs["voicecc"]), "--", "t.txt",
                    "--end", str(end))
    assert run.returncode == 0, run.stdout + run.stderr
    p = json.loads(run.stdout)["parity"]
    assert p["ids_match"] and p["expected"] == [end] and p["got"] == [end]
    assert p["end_tokens"][str(end)] == "eot_token_id" and p["expected_end"] == 0
    assert f"stops at end token {end} (index 0), 1 of --expect-n 6 steps" in run.stderr
    # the reference itself stopped there: 2 prompt-only passes and the one that chose `end`
    ref = json.loads(run.stdout)["reference"]
    assert ref["tokens"] == [end] and ref["steps"] == 3 and ref["n"] == 6
    assert ref["stop_reason"].startswith(f"end token {end} ") and ref["end_token"]["stopped"]
    # without the end token in the GGUF the same run is a divergence at index 1
    run = board_cli(*args, "--expect-from", str(plain), str(progs["voicecc"]), "--", "t.txt",
                    "--end", str(end))
    assert run.returncode == 1 and json.loads(run.stdout)["parity"]["first_divergence"] == 1


# -- 5: deploying like the users do -----------------------------------------------------------

def test_env_cwd_and_staged_files_persist_with_hash_skip(sim, progs, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(300_000))
    home = f"{sim.remote_dir}/home-root"
    args = ["run", *prof(sim), "--env", "VOICECC_PROFILE=1",
            "--env", "LD_LIBRARY_PATH=/home/root/voicecc-kt", "--cwd", home,
            "--stage", f"{model}=models/", str(progs["showenv"]), "--",
            "VOICECC_PROFILE", "LD_LIBRARY_PATH", "@../models/model.gguf"]
    Path(home).mkdir()
    first = board_cli(*args[:3], "--json", *args[3:])
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    staged = f"{sim.remote_dir}/models/model.gguf"
    assert data["staged"] == [{"local": str(model), "remote": staged, "skipped": False,
                               "bytes": 300_000}]
    assert Path(staged).read_bytes() == model.read_bytes()
    again = board_cli(*args)  # text output
    assert again.returncode == 0, again.stderr
    assert f"staged {model} -> {staged}: already there (hash matches), skipped" in again.stderr
    out = again.stdout
    assert f"cwd={home}\n" in out and "VOICECC_PROFILE=1\n" in out
    assert "LD_LIBRARY_PATH=/home/root/voicecc-kt\n" in out
    assert "model.gguf 300000 bytes" in out
    assert Path(staged).exists()  # persists across runs, unlike the run directory


def test_bad_env_and_stage_are_exit_2(sim, progs, tmp_path):
    for opt, value, want in (("--env", "1X=2", "variable name"), ("--env", "NOEQUALS", "NAME="),
                             ("--stage", f"{tmp_path}/nope=models/", "no such file")):
        run = board_cli("run", *prof(sim), opt, value, str(progs["showenv"]))
        assert run.returncode == 2 and want in run.stderr, run.stderr


# -- issue 18 items 9 and 10 -------------------------------------------------------------------

def test_double_forked_daemon_does_not_survive_the_run(sim, board, progs):
    res = board.run(progs["daemon"], args=["300"], timeout=60)
    assert res.ok, res.summary()
    m = [ln for ln in res.stdout.decode().splitlines() if ln.startswith("daemon ")]
    assert m, res.stdout
    daemon_pid = int(m[0].split()[1])
    assert [p["pid"] for p in res.killed_after] == [daemon_pid]
    assert any(f"outlived the run (left its process group/session) and were killed: "
               f"{daemon_pid}" in n for n in res.notes)
    deadline = time.monotonic() + 3
    while Path(f"/proc/{daemon_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{daemon_pid}").exists()


def test_daemon_is_ended_when_the_client_dies(sim, progs):
    """Client killed while the program runs after its daemon is up: the lock's keeper ends
    the daemon too (by the run tag), not just the program's group."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "board", "run", *prof(sim), str(progs["daemon"]),
         "--", "300", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 60
    line = b""
    while b"holding" not in line:
        assert time.monotonic() < deadline and proc.poll() is None
        line += proc.stdout.readline()
    daemon_pid = int(line.split(b"daemon ")[1].split()[0])
    assert Path(f"/proc/{daemon_pid}").exists()
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{daemon_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{daemon_pid}").exists()


def test_one_gib_of_output_streams_in_bounded_client_memory(sim, progs, tmp_path):
    """`board run` of a program printing 1 GiB: the client's peak RSS stays far below it;
    past 64 MiB the stream goes whole to a file in --outdir, and the result says so."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "board", "run", *prof(sim), "--outdir",
         str(tmp_path), str(progs["flood"]), "--", "1024"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err
    assert usage.ru_maxrss < 400 * 1024, f"client peak RSS {usage.ru_maxrss} kB"
    spilled = list(tmp_path.glob("skoracle-flood-stdout-*.log"))
    assert len(spilled) == 1 and spilled[0].stat().st_size == 1 << 30
    assert f"flood-stdout was {1 << 30} bytes, over the 64 MiB kept in memory: all of it is " \
           f"in {spilled[0]}" in err


# -- issue 19 items 9, 10, 12 ------------------------------------------------------------------

def test_check_reports_what_the_program_sees(sim):
    run = board_cli("check", *prof(sim), "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["arch"] == "aarch64" and data["emulated"]
    assert data["memory_mib"] == sim.memory_mb
    assert "ulimit -v" in data["memory_note"]
    text = board_cli("check", *prof(sim)).stdout
    assert "  arch      aarch64 (emulated by `" in text
    assert f"  memory    {sim.memory_mb} MiB for the program (address-space cap" in text


def test_foreign_architecture_is_refused_before_pushing(sim):
    bin_dir = Path(sim.remote_dir) / "bin"
    before = sorted(p.name for p in bin_dir.iterdir()) if bin_dir.exists() else []
    run = board_cli("run", *prof(sim), "/bin/true")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "built for x86_64 (ELF EM_X86_64); the board runs aarch64 (EM_AARCH64)" in run.stderr
    after = sorted(p.name for p in bin_dir.iterdir()) if bin_dir.exists() else []
    assert after == before and "true" not in after


def test_kernel_parity_json():
    run = subprocess.run([sys.executable, "-m", "harness", "board", "kernel-parity",
                          "--fixture", "--shape", "32x256,8x256", "--formats", "Q5_1", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["ok"] and data["fixture"]
    assert {(c["symbol"], tuple(c["shape"])) for c in data["cases"]} == {
        (s, (o, 256, 1)) for s in ("skainet_q5_1_matmul", "skainet_q5_1_matmul_rm")
        for o in (32, 8)}
    assert all(c["verdict"] == "bit-exact" for c in data["cases"])


@pytest.mark.parametrize("action", ["check", "run", "push", "fetch", "unlock",
                                    "decode-parity", "kernel-parity"])
def test_every_board_action_has_a_description_exit_codes_and_word_metavars(action):
    import re

    run = board_cli(action, "--help")
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "Exit codes: 0 " in text and " 2 usage" in text
    description = text.split("positional arguments:")[0].split("options:")[0]
    assert len(description.split("]")[-1]) > 40  # a sentence after the usage line
    for metavar in re.findall(r"--[\w-]+ ([A-Z][A-Z_]*)\b", text):
        assert len(metavar) > 1, f"single-letter metavar {metavar} in `board {action}`"
    if action in ("run", "decode-parity"):
        assert "--timeout SECONDS" in text and "--env NAME=VALUE" in text
    if action == "run":
        assert "--outdir DIR" in text


def test_run_report_plots_per_step_time(tmp_path):
    from harness.cli import main

    out = tmp_path / "report"
    assert main(["run", "--only", "board", "--out", str(out)]) == 0
    leg = json.loads((out / "report.json").read_text())["legs"][0]
    steps = leg["data"]["decode_steps"]
    assert steps["source"] == "[perf] lines" and len(steps["step_ms"]) == 8
    assert all(ms > 0 for ms in steps["step_ms"])
    assert "id='decode_step_times'" in (out / "report.html").read_text()
    row = next(r for r in leg["rows"] if r["case"].startswith("decode parity"))
    assert row["verdict"] == "pass" and "not judged: measured under qemu-user" in row["detail"]


def test_push_fetch_unlock_json(sim, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"abc" * 1000)
    remote = f"{sim.remote_dir}/json/f.bin"
    first = json.loads(board_cli("push", *prof(sim), "--json", str(src), remote).stdout)
    again = json.loads(board_cli("push", *prof(sim), "--json", str(src), remote).stdout)
    assert (first["skipped"], first["bytes"], again["skipped"]) == (False, 3000, True)
    got = json.loads(board_cli("fetch", *prof(sim), "--json", remote, str(tmp_path)).stdout)
    assert got == {"remote": remote, "local": str(tmp_path / "f.bin"), "bytes": 3000}
    free = json.loads(board_cli("unlock", *prof(sim), "--json").stdout)
    assert free == {"held_by": None, "process_groups_ended": 0}
