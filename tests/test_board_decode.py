"""Decode parity's reading of a program's output, without a board: the named formats, the
pattern rules, rate vs period, timing, end tokens, the `--expect` grammar; and the board
runner's pure pieces: the run script (parsed by BusyBox sh itself), its report, the verdicts
drawn from it, the spill buffer, the architecture check and connection failures in words."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from harness.board import decode
from harness.board.decode import (
    FORMATS,
    compare_decode,
    cut_at_end,
    end_token_ids,
    parse_expect,
    scanners,
)
from harness.board.runscript import RunSpec, read_report, run_script
from harness.board.session import BoardSession
from harness.board.streams import SpillBuffer
from harness.board.target import RunResult
from harness.board.validate import check_program_arch, connect_failure, elf_arch
from harness.errors import HarnessError

VOICECC = """\
[gen] step=0 next=2387
[perf] gemma step 0: 812.50 ms
[gen] step=1 next=2387
[perf] gemma step 1: 250.00 ms
[gen] step=2 next=106
[perf] gemma step 2: 260.00 ms
[gen] generated=[2387, 2387, 106]
[gen] llama-ref=[2387, 2387, 106, 5, 6]
[perf] gemma total: 1322.50 ms, 3 tokens, 440.83 ms/token
"""


def voicecc_parity(expected, **kw):
    f = FORMATS["voicecc"]
    return compare_decode(VOICECC, expected, f.token_pattern, f.tps_pattern,
                          ms_per_token_pattern=f.ms_per_token_pattern, **kw)


# -- formats and patterns -------------------------------------------------------------------

def test_voicecc_format_reads_step_lines_only():
    p = voicecc_parity([2387, 2387, 106])
    assert p.got == [2387, 2387, 106] and p.ids_match  # not the generated/llama-ref lists
    assert p.timing.ms_per_token == pytest.approx(440.83)
    assert p.timing.tok_per_s == pytest.approx(1000 / 440.83)
    assert p.timing.step_ms == [812.5, 250.0, 260.0] and p.timing.step_source == "[perf] lines"
    line = p.report()
    assert "2.27 tok/s = 440.8 ms/token (from ms/token line)" in line
    assert "the 9.7 tok/s target (llama.cpp on the SL2610's 2-core Cortex-A55, same GGUF)" \
        in line and ": below" in line


def test_bare_group_pattern_swallows_lists_so_presets_exist():
    """What the issue saw: `(\\d+)` reads the printed llama-ref list too."""
    p = compare_decode(VOICECC, [2387, 2387, 106], token_pattern=r"next=(\d+)")
    assert p.ids_match
    loose = compare_decode(VOICECC, [2387, 2387, 106], token_pattern=r"(\d+)")
    assert not loose.ids_match and len(loose.got) > 10


def test_default_default_format_keeps_token_lines():
    p = compare_decode("token[0] = 5\ntoken[1] = 7\n1.5 tok/s\n", [5, 7])
    assert p.ids_match and p.timing.tok_per_s == 1.5
    assert p.timing.ms_per_token == pytest.approx(1000 / 1.5)  # both figures
    assert "1.50 tok/s = 666.7 ms/token (from tok/s line)" in p.report()


def test_ms_per_token_is_a_period_not_a_rate():
    """`6000 ms/token` read as a rate said '6000 tok/s ... meets'; as a period it is
    0.17 tok/s, below the target."""
    text = "token: 1\ntoken: 2\ndecode: 6000 ms/token\n"
    p = compare_decode(text, [1, 2], tps_pattern=None,
                       ms_per_token_pattern=r"(\d+(?:\.\d+)?) ms/token")
    assert p.timing.ms_per_token == 6000 and p.timing.tok_per_s == pytest.approx(1 / 6)
    assert "0.17 tok/s = 6000.0 ms/token" in p.report() and "below" in p.report()


@pytest.mark.parametrize("pattern, groups", [(r"\d+", 0), (r"(a)|(b)", 2), (r"(\d)(\d)", 2)])
def test_pattern_needs_exactly_one_group(pattern, groups):
    with pytest.raises(HarnessError, match=f"exactly one capture group.*it has {groups}"):
        scanners(pattern)
    with pytest.raises(HarnessError, match="--ms-per-token-pattern"):
        scanners(r"(\d+)", ms_per_token_pattern=pattern)


def test_empty_group_lines_are_skipped_not_a_traceback():
    p = compare_decode("id=5\nid=\nnext: 7\n", [5, 7], token_pattern=r"(?:id=|next: )(\d*)")
    assert p.got == [5, 7] and p.ids_match and p.skipped_empty == 1
    assert "1 matching lines had an empty group" in p.report()
    alt = compare_decode("a 5\nb x\n", [5], token_pattern=r"a (\d+)|b x")
    assert alt.got == [5] and alt.skipped_empty == 1


def test_nothing_matched_names_the_pattern_and_shows_first_lines():
    p = compare_decode(VOICECC, [2387])
    rep = p.report()
    assert not p.ids_match and "NO token lines found with --token-pattern '\\btoken" in rep
    assert "  | [gen] step=0 next=2387" in rep and "these lines match --format voicecc" in rep
    assert p.to_dict()["first_lines"][0] == "[gen] step=0 next=2387"
    assert len(p.first_lines) == decode.FIRST_LINES


def test_scanner_streams_in_any_chunks_and_bounds_long_lines():
    out, err = scanners(FORMATS["voicecc"].token_pattern)
    data = VOICECC.encode() + b"x" * (decode.MAX_LINE * 3)
    for i in range(0, len(data), 7):
        out.feed(data[i:i + 7], float(i))
    p = decode.judge_decode(out, err, [2387, 2387, 106])
    assert p.ids_match and len(out._buf) <= decode.MAX_LINE


# -- timing -------------------------------------------------------------------------------

def test_timing_from_arrival_times_without_perf_lines():
    out, err = scanners(FORMATS["voicecc"].token_pattern)
    out.feed(b"loading\n", 10.2)
    for k, t in enumerate((11.0, 11.5, 12.1, 12.6)):
        out.feed(b"[gen] step=%d next=%d\n" % (k, 40 + k), t)
    p = decode.judge_decode(out, err, [40, 41, 42, 43], started=10.0)
    t = p.timing
    assert t.step_source == "token-line arrival times"
    assert t.step_ms == pytest.approx([500.0, 600.0, 500.0])
    assert t.ttft_s == pytest.approx(1.0) and t.load_s == pytest.approx(1.0)
    assert t.ms_per_token == pytest.approx(1600 / 3) and "mean of 3" in t.speed_source


def test_timing_load_is_ttft_less_the_first_perf_step():
    out, err = scanners(FORMATS["voicecc"].token_pattern, None,
                        FORMATS["voicecc"].ms_per_token_pattern)
    for line in VOICECC.splitlines():
        out.feed(line.encode() + b"\n", 15.0)
    p = decode.judge_decode(out, err, [2387, 2387, 106], started=12.0)
    assert p.timing.ttft_s == pytest.approx(3.0)
    assert p.timing.load_s == pytest.approx(3.0 - 0.8125)
    assert "load 2.188 s; first token 3.000 s after start; 3 steps from [perf] lines" in \
        p.report()


def test_speed_from_step_times_skips_the_prompt_step():
    text = "\n".join(f"[gen] step={k} next=1\n[perf] gemma step {k}: {ms} ms"
                     for k, ms in enumerate((900, 100, 300)))
    p = compare_decode(text, [1, 1, 1], FORMATS["voicecc"].token_pattern, None)
    assert p.timing.ms_per_token == 200 and "mean of 2 step times" in p.timing.speed_source


# -- end tokens -----------------------------------------------------------------------------

def test_cut_at_end_and_compare_up_to_the_first_end_token():
    assert cut_at_end([5, 106, 7], {106, 1}) == ([5, 106], 1)
    assert cut_at_end([5, 7], {106}) == ([5, 7], None)
    # reference decoded a fixed n past its end token; the program stopped at 106: a match
    p = voicecc_parity([2387, 2387, 106, 9, 9, 9], end_ids={106: "eot", 1: "eos"})
    assert p.ids_match and p.expected == [2387, 2387, 106]
    assert p.expected_end == 2 and p.got_end == 2
    assert "reference stops at index 2; program stops at index 2" in p.report()
    # stopping early is still a divergence
    early = voicecc_parity([2387, 2387, 5, 106], end_ids={106: "eot"})
    assert early.first_divergence == 2
    # ids printed after the program's own end token are not compared
    more = compare_decode("1\n106\n4\n", [1, 106], FORMATS["ids"].token_pattern, None,
                          end_ids={106: "eot"})
    assert more.ids_match and more.got_after_end == 1


def test_end_token_ids_from_the_gguf(tmp_path):
    from harness.golden import tinygemma

    model = tmp_path / "tiny.gguf"
    tinygemma.write(model)
    assert end_token_ids(model) == {1: "eos_token_id", 6: "<end_of_turn>"}


# -- --expect -------------------------------------------------------------------------------

def test_expect_takes_ids_or_at_file(tmp_path):
    assert parse_expect("2387,2387") == [2387, 2387]
    assert parse_expect("[1, 2]") == [1, 2] and parse_expect("3 4") == [3, 4]
    f = tmp_path / "ids.txt"
    f.write_text("7, 8 # comment\n9\n")
    assert parse_expect(f"@{f}") == [7, 8, 9] and parse_expect(str(f)) == [7, 8, 9]
    with pytest.raises(HarnessError, match="give token ids"):
        parse_expect("tokens.txt")
    with pytest.raises(HarnessError, match="cannot read"):
        parse_expect(f"@{tmp_path / 'missing'}")
    (tmp_path / "bad.txt").write_text("1 -2\n")
    with pytest.raises(HarnessError, match=r"bad.txt:1: '-2' is not a token id"):
        parse_expect(f"@{tmp_path / 'bad.txt'}")


# -- the run script and its report ----------------------------------------------------------

SPEC = RunSpec(tag="@@skoracle-0a1b2c3d-", run_token="00112233aabbccdd",
               run_dir="/tmp/skoracle/runs/x", argv=("qemu-aarch64", "/tmp/b/prog", "a b"),
               lock_dir="/tmp/skoracle/lock", env=(("VOICECC_PROFILE", "1"),
                                                   ("LD_LIBRARY_PATH", "/home/root/x y")),
               cwd="/home/root", timeout=5.0)


@pytest.mark.parametrize("spec", [SPEC, RunSpec(**{**SPEC.__dict__, "timeout": None,
                                                   "has_setsid": False, "cwd": None})],
                         ids=["timeout-setsid", "plain"])
def test_run_script_is_valid_busybox_sh(spec, tmp_path):
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is part of the set-up"
    script = run_script(spec)
    proc = subprocess.run([busybox, "sh", "-n", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "export VOICECC_PROFILE=1\n" in script
    assert "export LD_LIBRARY_PATH='/home/root/x y'\n" in script
    assert ("cd /tmp/skoracle/runs/x && cd /home/root" in script) == (spec.cwd is not None)
    assert "SKORACLE_RUN=00112233aabbccdd setsid sh -c" in script or not spec.has_setsid
    assert "timeout" not in script.replace("timeout $r", "").replace("{tag}timeout", "") \
        .replace("@@skoracle-0a1b2c3d-timeout", "")  # the board has no `timeout` command


def test_read_report_folds_peaks_strays_and_kernel_log():
    rep = read_report([("pid", "100"), ("hwm", "100 5000 app.kexe"), ("hwm", "101 9000 app"),
                       ("hwm", "100 7000 app.kexe"), ("total", "12000"), ("total", "15000"),
                       ("stray", "300 daemon name"), ("leftover", "killed"),
                       ("oomlog", "[ 9.1] Out of memory: Killed process 101 (app) total-vm"),
                       ("timeout", "KILL")])
    assert rep.pid == 100 and rep.peaks == {100: (7000, "app.kexe"), 101: (9000, "app")}
    assert rep.total_kb == 15000 and rep.peak_kb == 15000
    assert rep.strays == [(300, "daemon name")] and rep.leftover and rep.timeout == "KILL"
    assert rep.oom_victims() == [(101, "app")]
    assert read_report([("hwm", "5 800 a")]).peak_kb == 800  # never below one process


def judged(status: int, lines, stderr: bytes = b"") -> RunResult:
    res = RunResult("app.kexe", exit_status=status, reason="", pid=100, stderr=stderr)
    BoardSession._judge_run(res, read_report(lines))
    return res


def test_oom_kill_of_a_child_is_out_of_memory_though_the_program_exited_0():
    res = judged(0, [("hwm", "100 5000 app.kexe"), ("hwm", "101 1900000 worker"),
                     ("oomlog", "oom-kill:constraint=CONSTRAINT_NONE,task=worker,pid=101,"
                                "uid=0")])
    assert not res.ok and res.out_of_memory
    assert res.reason == ("out of memory: the kernel OOM killer killed pid 101 (worker) of the "
                          "run (the program exited 0)")
    assert res.processes == [{"pid": 100, "comm": "app.kexe", "peak_rss_kb": 5000},
                             {"pid": 101, "comm": "worker", "peak_rss_kb": 1900000}]
    main = judged(137, [("oomlog", "Out of memory: Killed process 100 (app.kexe)")])
    assert main.reason == "out of memory: killed by the kernel OOM killer (SIGKILL)"


def test_allocation_failure_on_stderr_with_exit_0_and_unreadable_kernel_log():
    res = judged(0, [("nodmesg", "dmesg: klogctl: Operation not permitted")],
                 stderr=b"step 3 FAILED\nout of memory: cannot allocate 2500 MiB\n")
    assert res.out_of_memory and not res.ok
    assert res.reason.startswith("out of memory: a process of the run failed to allocate "
                                 "('out of memory: cannot allocate 2500 MiB' on stderr)")
    assert any("kernel log not readable (dmesg: klogctl: Operation not permitted): an OOM "
               "kill of the run's processes could not be checked there" in n for n in res.notes)
    plain = judged(0, [])
    assert plain.ok and plain.reason == "ok" and not plain.notes
    killed = judged(137, [("nodmesg", "not permitted")])
    assert killed.reason == "killed (SIGKILL; the kernel log could not be read for an OOM trace)"


def test_strays_are_named():
    res = judged(0, [("stray", "4242 daemon")])
    assert res.ok and res.killed_after == [{"pid": 4242, "comm": "daemon"}]
    assert "1 process(es) outlived the run (left its process group/session) and were killed: " \
        "4242 (daemon)" in res.notes


def test_spill_buffer_keeps_a_bounded_head(tmp_path):
    sb = SpillBuffer("prog-stdout", cap=10, spill_dir=tmp_path)
    sb.write(b"0123")
    assert not sb.spilled and sb.head == b"0123"
    sb.write(b"456789abcdef")
    sb.write(b"ghij")
    sb.close()
    assert sb.head == b"0123456789" and sb.total == 20
    assert sb.path.read_bytes() == b"0123456789abcdefghij" and sb.path.parent == tmp_path
    assert "20 bytes" in sb.note() and str(sb.path) in sb.note()
    sb.discard()
    assert list(tmp_path.iterdir()) == []


# -- architecture and connection ------------------------------------------------------------

def test_program_for_another_architecture_is_refused():
    assert elf_arch(Path("/bin/true")) == ("x86_64", "EM_X86_64")
    with pytest.raises(HarnessError, match=r"/bin/true is built for x86_64 \(ELF EM_X86_64\); "
                                           r"the board runs aarch64 \(EM_AARCH64\)"):
        check_program_arch(Path("/bin/true"))
    check_program_arch(Path("/bin/true"), "x86_64")  # same architecture: fine


def test_aarch64_program_and_scripts_pass(tmp_path):
    from harness.board.build import fixture_program

    check_program_arch(fixture_program("tokens"))
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    check_program_arch(script)  # not ELF: nothing to check


@pytest.mark.parametrize("exc, words", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
    (TimeoutError("timed out"), "timeout"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to host"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
    (socket.gaierror(-2, "Name or service not known"), "cannot resolve the host name"),
    (EOFError(), "the peer closed the connection before the SSH handshake"),
])
def test_connection_failures_say_why(exc, words):
    assert connect_failure(exc).startswith(words)


def test_refused_port_says_refused():
    from harness.board.profile import BoardProfile

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(HarnessError, match=r"cannot connect: connection refused"):
        BoardSession(BoardProfile(host="127.0.0.1", port=port, known_hosts=None,
                                  connect_timeout=2.0)).connect()


def run_script_locally(tmp_path: Path, dmesg_body: str, argv: tuple[str, ...] = ()):
    """The run script executed by BusyBox sh on this machine (no SSH), its kernel log read
    from a script whose output is `dmesg_body` (it sees the run's PID as $P from the lock's
    procs file and its call count as $N)."""
    argv = argv or ("/bin/sh", "-c", f"echo $$ > {tmp_path}/pid; echo hi")
    busybox = shutil.which("busybox")
    assert busybox
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "setsid", "grep", "awk", "tail", "head", "usleep", "sleep", "cat",
                 "rm", "mkdir", "tr", "wc", "kill"):
        (bin_dir / tool).symlink_to(busybox)
    dmesg = bin_dir / "dmesg"
    dmesg.write_text(f"#!{busybox} sh\nN=$(cat {tmp_path}/n 2>/dev/null || echo 0); "
                     f"N=$((N + 1)); echo $N > {tmp_path}/n\nP=; read -r P < "
                     f"{tmp_path}/pid 2>/dev/null\n{dmesg_body}\n")
    dmesg.chmod(0o755)
    (tmp_path / "lock").mkdir()
    spec = RunSpec(tag="@@t-", run_token="feedbeef", run_dir=str(tmp_path / "run"),
                   argv=argv, lock_dir=str(tmp_path / "lock"), sample_interval=0.02,
                   kernel_log_cmd=str(dmesg))
    proc = subprocess.run([busybox, "sh", "-c", run_script(spec)], capture_output=True,
                          env={"PATH": str(bin_dir)}, timeout=60)
    lines = [ln[4:].split(" ", 1) for ln in proc.stderr.decode().splitlines()
             if ln.startswith("@@t-")]
    return proc, read_report([(k, v) for k, v in lines])


def test_run_script_reads_only_kernel_log_lines_written_during_the_run(tmp_path):
    old = 'echo "[1.0] Out of memory: Killed process $P (old)"; echo "[2.0] before"'
    body = f'{old}\n[ "$N" -gt 1 ] && echo "[3.0] Out of memory: Killed process $P (app)"'
    proc, rep = run_script_locally(tmp_path, body)
    assert proc.returncode == 0 and proc.stdout == b"hi\n"
    assert rep.kernel_log == [f"[3.0] Out of memory: Killed process {rep.pid} (app)"]
    assert rep.oom_victims() == [(rep.pid, rep.peaks.get(rep.pid, (0, "?"))[1])]
    assert rep.kernel_log_error is None


def test_run_script_reads_the_whole_log_when_the_last_line_rotated_out(tmp_path):
    body = ('if [ "$N" = 1 ]; then echo "[1.0] gone later"; else '
            'echo "[5.0] oom-kill:constraint=CONSTRAINT_NONE,task=app,pid=$P,uid=0"; fi')
    _, rep = run_script_locally(tmp_path, body)
    assert len(rep.kernel_log) == 1 and rep.oom_victims()


def test_run_script_says_when_the_kernel_log_cannot_be_read(tmp_path):
    _, rep = run_script_locally(tmp_path, 'echo "dmesg: klogctl: Operation not permitted" >&2;'
                                          ' exit 1')
    assert rep.kernel_log == [] and rep.kernel_log_error == \
        "dmesg: klogctl: Operation not permitted"


def test_run_script_kills_and_names_a_double_forked_daemon(tmp_path):
    """A shell daemon in its own session, ignoring HUP and TERM: found by the run tag in its
    environment once the program has exited, SIGKILLed and named."""
    daemon = ("trap '' HUP TERM; setsid sh -c \"trap '' HUP TERM; echo up; "
              "exec sleep 300\" </dev/null >/dev/null 2>&1 & sleep 0.3; echo started")
    proc, rep = run_script_locally(tmp_path, "true", argv=("/bin/sh", "-c", daemon))
    assert proc.stdout == b"started\n"
    assert [comm for _, comm in rep.strays] == ["sleep"]
    pid = rep.strays[0][0]
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
