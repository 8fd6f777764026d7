"""Board runner pieces that need no SSH server: profiles, exit reasons, host key
fingerprints, decode-parity parsing, ulp distances, the kernel-archive checks."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import paramiko
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.board.build import BOARD_MARCH, CROSS_CC, FIXTURE_DIR, archive_symbols
from harness.board.hostkeys import fingerprint, known_hosts_name
from harness.board.parity import (
    KERNEL_SYMBOLS,
    KernelCase,
    KernelInventory,
    KernelParity,
    build_kernel_driver,
    compare_decode,
    judge,
    kernel_verdict,
    read_token_list,
    reference_outputs,
)
from harness.board.profile import (
    BoardProfile,
    load_profile,
    parse_board_spec,
    resolve_profile,
    write_profile,
)
from harness.board.runscript import oom_victim
from harness.board.session import MarkerFilter
from harness.board.target import ILLEGAL_INSTRUCTION, exit_reason
from harness.errors import HarnessError
from kernels_ref import ulp_distance

ROOT = Path(__file__).resolve().parent.parent


# -- profiles -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, want", [
    ("root@10.0.0.7:2222", {"user": "root", "host": "10.0.0.7", "port": 2222}),
    ("sl2610", {"host": "sl2610"}),
    ("me@board.local", {"user": "me", "host": "board.local"}),
    ("root@[fe80::1]:22", {"user": "root", "host": "fe80::1", "port": 22}),
])
def test_board_spec_parses(spec, want):
    assert parse_board_spec(spec) == want


@pytest.mark.parametrize("spec", ["a@b@c", "root@host:99999", "root@host:x", "", "ro ot@h"])
def test_board_spec_rejects(spec):
    with pytest.raises(HarnessError, match="--board"):
        parse_board_spec(spec)


def test_profile_toml_roundtrip(tmp_path):
    prof = BoardProfile(host="10.0.0.7", port=2222, user="root", exec_prefix="qemu -cpu x",
                        lib_dirs=("/lib", "/opt/lib"), lock_wait=5.0, keepalive=0)
    path = tmp_path / "b.toml"
    write_profile(path, prof)
    assert load_profile(path) == prof


def test_profile_board_table_and_flag_override(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('[board]\nhost = "sl2610"\nport = 22\nuser = "root"\nlock_wait = 3\n')
    prof = resolve_profile(str(path), "dev@10.1.1.1:2200", identity_file="/k")
    assert (prof.host, prof.port, prof.user, prof.lock_wait, prof.identity_file) == \
        ("10.1.1.1", 2200, "dev", 3.0, "/k")


@pytest.mark.parametrize("text, match", [
    ('host = "a"\nprot = 22\n', "unknown key.*prot"),
    ('port = 22\n', "'host' is required"),
    ('host = "a"\nport = "22"\n', "port must be an integer"),
    ('host = "a"\nport = 0\n', "port 0 out of range"),
    ('host = "a"\nlib_dirs = "/lib"\n', "lib_dirs must be a list"),
    ('host = "a"\nremote_dir = "tmp"\n', "remote_dir must be an absolute"),
    ('host = "a\n', "not valid TOML"),
])
def test_profile_errors_name_file_and_field(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(HarnessError, match=match) as exc:
        load_profile(path)
    assert str(path) in str(exc.value)


def test_profile_missing_and_no_board():
    with pytest.raises(HarnessError, match="no-such.toml"):
        load_profile("/nonexistent/no-such.toml")
    with pytest.raises(HarnessError, match="no board given"):
        resolve_profile(None, None)


# -- exit reasons ---------------------------------------------------------------------------

@pytest.mark.parametrize("status, stderr, oom, want", [
    (0, b"", False, "ok"),
    (128 + signal.SIGILL, b"", False, ILLEGAL_INSTRUCTION),
    (128 + signal.SIGKILL, b"", True, "out of memory: killed by the kernel OOM killer"),
    (128 + signal.SIGKILL, b"", False, "killed (SIGKILL, no OOM trace"),
    (128 + signal.SIGABRT, b"Out of memory trying to allocate 1 bytes", False,
     "out of memory: allocation failed (SIGABRT)"),
    (1, b"malloc: Cannot allocate memory\n", False, "out of memory: allocation failed (exit"),
    (128 + signal.SIGSEGV, b"", False, "segmentation fault"),
    (128 + signal.SIGABRT, b"", False, "aborted"),
    (127, b"", False, "command not found"),
    (3, b"", False, "exited with status 3"),
    (None, b"", False, "no exit status"),
])
def test_exit_reasons(status, stderr, oom, want):
    assert exit_reason(status, stderr, kernel_oom=oom).startswith(want)


def test_timeout_reason_wins():
    r = exit_reason(143, timed_out=True, timeout=0.5, kill_signal="SIGTERM")
    assert r == "timed out after 0.5s, process group killed with SIGTERM"


# -- host keys ------------------------------------------------------------------------------

def test_fingerprint_matches_ssh_keygen(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pk = paramiko.PKey.from_path(key)
    out = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert fingerprint(pk) == out[1]
    assert known_hosts_name("h", 22) == "h"
    assert known_hosts_name("h", 2222) == "[h]:2222"


# -- decode parity ------------------------------------------------------------------------

OUT = "token[0] = 5\ntoken[1] = 17\ntoken[2] = 9\ndecode: 3 tokens in 0.300 s, 10.00 tok/s\n"


def test_decode_parity_match_and_speed():
    p = compare_decode(OUT, [5, 17, 9], target_tps=9.7)
    assert p.ids_match and p.got == [5, 17, 9] and p.tok_per_s == 10.0
    assert "all 3 match" in p.report() and "1.03x" in p.report()


@pytest.mark.parametrize("expected, first", [([5, 18, 9], 1), ([5, 17, 9, 4], 3), ([5, 17], 2)])
def test_decode_parity_first_divergence(expected, first):
    p = compare_decode(OUT, expected)
    assert p.first_divergence == first and not p.ids_match
    assert f"FIRST DIVERGENCE at index {first}" in p.report()


def test_decode_parity_custom_patterns():
    text = "ids: 3 4 5\nspeed=2.5\n"
    p = compare_decode(text, [3, 4, 5], token_pattern=r"(?<=\s)(\d+)(?=\s|$)",
                       tps_pattern=r"speed=(\d+\.\d+)", target_tps=5)
    assert p.got == [3, 4, 5] and p.tok_per_s == 2.5 and "below" in p.report()
    with pytest.raises(HarnessError, match="capture group"):
        compare_decode(text, [1], token_pattern=r"\d+")
    with pytest.raises(HarnessError, match="bad regular expression"):
        compare_decode(text, [1], tps_pattern=r"(")


def test_decode_parity_speed_from_stderr():
    p = compare_decode("token: 1\ntoken: 2\n", [1, 2],
                       stderr="eval time = 224.7 ms / 2 runs (112.33 ms per token, "
                       "8.50 tokens per second)\n")
    assert p.ids_match and p.tok_per_s == 8.5 and "below" in p.report()


def test_token_list_formats(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2, 3]")
    (tmp_path / "b.txt").write_text("1 2, 3  # first three\n4\n")
    (tmp_path / "c.txt").write_text("1 2\n3 x\n")
    assert read_token_list(tmp_path / "a.json") == [1, 2, 3]
    assert read_token_list(tmp_path / "b.txt") == [1, 2, 3, 4]
    with pytest.raises(HarnessError, match=r"c.txt:2: 'x'"):
        read_token_list(tmp_path / "c.txt")


# -- kernel parity pieces -----------------------------------------------------------------

def test_ulp_distance():
    one = np.float32(1.0)
    nxt = np.nextafter(one, np.float32(2))
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    a = np.array([one, 0.0, tiny, np.nan, np.nan, 2.0], np.float32)
    b = np.array([nxt, -0.0, -tiny, np.nan, 1.0, 2.0], np.float32)
    assert ulp_distance(a, b).tolist() == [1, 0, 2, 0, np.iinfo(np.int32).max, 0]


def test_kernel_symbol_table_covers_every_packed_format():
    from oracle.formats import PACKED_TYPES

    assert {k.qtype for k in KERNEL_SYMBOLS} == set(PACKED_TYPES)


def test_kernel_archive_missing_or_not_ar(tmp_path):
    with pytest.raises(HarnessError, match="no such file.*libskainet_kernels.a"):
        build_kernel_driver(tmp_path / "nope.a")
    bad = tmp_path / "bad.a"
    bad.write_bytes(b"PK\x03\x04 a zip, not an archive")
    with pytest.raises(HarnessError, match="not an `ar` static archive"):
        archive_symbols(bad)


def test_kernel_archive_without_kernels_is_refused(tmp_path):
    src = tmp_path / "other.c"
    src.write_text("int unrelated(int x) { return x + 1; }\n")
    obj = tmp_path / "other.o"
    subprocess.run([CROSS_CC, "-c", str(src), "-o", str(obj)], check=True)
    archive = tmp_path / "libskainet_kernels.a"
    subprocess.run(["aarch64-linux-gnu-ar", "rc", str(archive), str(obj)], check=True)
    assert "unrelated" in archive_symbols(archive)
    with pytest.raises(HarnessError, match="defines none of the SKaiNET kernels"):
        build_kernel_driver(archive)


def test_kernel_driver_source_compiles_for_the_board(tmp_path):
    """Every kernel declaration and table entry compiles for armv8.2-a+fp16+dotprod."""
    flags = [f"-DHAVE_{k.symbol}" for k in KERNEL_SYMBOLS]
    obj = tmp_path / "driver.o"
    proc = subprocess.run([CROSS_CC, "-O2", f"-march={BOARD_MARCH}", "-Wall", "-Werror", *flags,
                           "-c", str(FIXTURE_DIR / "skainet_kernel_driver.c"), "-o", str(obj)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    nm = subprocess.run(["aarch64-linux-gnu-nm", "-u", str(obj)], capture_output=True,
                        text=True, check=True).stdout
    for k in KERNEL_SYMBOLS:
        assert k.symbol in nm


def test_cli_kernel_parity_without_archive_is_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "board", "kernel-parity", "--board", "root@127.0.0.1",
         "--kernels-archive", str(tmp_path / "libskainet_kernels.a")],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 2
    assert "libskainet_kernels.a: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_run_without_board_is_exit_2(tmp_path):
    prog = tmp_path / "p"
    prog.write_bytes(b"\x7fELF")
    proc = subprocess.run([sys.executable, "-m", "harness", "board", "run", str(prog)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "no board given" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("k", KERNEL_SYMBOLS, ids=lambda k: k.symbol)
def test_kernel_parity_reference_side_for_every_kernel(k):
    """The comparison the runner makes on the driver's output: the reference itself passes,
    and one output moved by one ulp is caught and counted."""
    from oracle.layout import to_input_block_major
    from oracle.quants import quantize

    rng = np.random.default_rng(7)
    out_dim, in_dim, batch = 8, 256, 2
    raw = quantize(k.qtype, rng.standard_normal((out_dim, in_dim)).astype(np.float32))
    packed = raw if k.order == "row_major" else to_input_block_major(raw, k.qtype)
    packed = np.ascontiguousarray(packed, np.uint8).reshape(-1)
    x = rng.standard_normal((batch, in_dim)).astype(np.float32)
    ref = reference_outputs(x, packed, k, out_dim, in_dim)
    y = ref["fused"] if "fused" in ref else ref["exact"]
    case = judge(KernelCase(k.symbol, k.qtype, (out_dim, in_dim, batch)), y.copy(), ref)
    assert case.passed and case.max_ulp == 0 and case.verdict == "bit-exact"
    assert case.reference == "skainet_neon"  # every packed format has an order model now
    bumped = y.copy()
    bumped[1, 3] = np.nextafter(bumped[1, 3], np.float32(np.inf))
    case = judge(KernelCase(k.symbol, k.qtype, (out_dim, in_dim, batch)), bumped, ref)
    assert case.max_ulp == 1 and case.mismatches == 1
    assert not case.passed and case.verdict == "FAIL"
    assert "1 of 16 outputs differ" in case.row() and "ulp at max|y|" in case.row()


def test_verdict_rule_modelled_kernels_pass_only_bit_exact():
    """One rule: an order model means bit-exact or FAIL, however small the error; without a
    model "within-bound" is its own verdict, and a build matching fused_final=False says so."""
    close = KernelCase("skainet_q8_0_matmul", "Q8_0", (4, 32, 1), bit_exact=False,
                       within_bound=True, mismatches=1, max_ulp=1)
    assert kernel_verdict(close) == "FAIL" and not close.passed
    unmodelled = KernelCase("skainet_q8_0_matmul", "Q8_0", (4, 32, 1), reference="bound",
                            within_bound=True, bound_used=0.01, tightness=0.001)
    assert kernel_verdict(unmodelled) == "within-bound" and unmodelled.passed
    unfused = KernelCase("skainet_q8_0_matmul", "Q8_0", (4, 32, 1),
                         fused_final_matches={True: False, False: True})
    inv = KernelInventory(Path("lib.a"), absent=["skainet_q5k_matmul_rm"])
    line = KernelParity(inv, [unfused]).summary()
    assert "0 of 1 case pass" in line and "FAILING: skainet_q8_0_matmul" in line
    assert "built without -ffast-math?" in line and "passes only bit-exact" in line
    assert "1 known kernel absent" in line


@given(st.lists(st.integers(min_value=0, max_value=120), max_size=8))
def test_marker_filter_splits_anywhere(cuts):
    """The runner's report lines are taken out of stderr whatever the chunking, and the
    program's own bytes (even a partial tag or a line without newline) pass unchanged."""
    tag = b"@@skoracle-1a2b3c4d-"
    program = b"warn: @@skoracle-other x\nno newline at end"
    stream = tag + b"pid 4242\n" + program + tag + b"leftover killed\n" + tag + \
        b"peak_rss_kb 1234\n"
    f = MarkerFilter(tag)
    out, start = b"", 0
    for c in sorted(cuts) + [len(stream)]:
        out += f.feed(stream[start:c])
        start = max(start, c)
    out += f.finish()
    assert out == program
    assert f.found == {"pid": "4242", "leftover": "killed", "peak_rss_kb": "1234"}


def test_oom_trace_names_the_pid():
    log = (b"[ 812.1] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=app.kexe,"
           b"pid=1234,uid=0\n[ 812.2] Out of memory: Killed process 1234 (app.kexe) "
           b"total-vm:2100000kB, anon-rss:1800000kB\n")
    assert oom_victim(log, 1234)
    assert not oom_victim(log, 123) and not oom_victim(log, 12345)
    assert not oom_victim(b"[ 1.0] Killed process 1234 by hand\n", 1234)


# -- input checked before anything is done ----------------------------------------------------

def board_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "board", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_cli_timeout_must_be_above_zero(tmp_path, value):
    prog = tmp_path / "p"
    prog.write_bytes(b"\x7fELF")
    proc = board_cli("run", "--board", "root@127.0.0.1:9", f"--timeout={value}", str(prog))
    assert proc.returncode == 2 and "--timeout" in proc.stderr
    assert "seconds" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["999", "8", "17777", "rw"])
def test_cli_push_mode_must_be_octal(tmp_path, mode):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    proc = board_cli("push", "--board", "root@127.0.0.1:9", "--mode", mode, str(src), "/tmp/f")
    assert proc.returncode == 2 and "--mode" in proc.stderr and "octal" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_checks_local_paths_before_connecting(tmp_path):
    """Port 9 has no SSH server: a message about connecting would mean it acted first."""
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    prog = tmp_path / "p"
    prog.write_bytes(b"\x7fELF")
    cases = [
        (("run", "--outdir", str(a_file), str(prog)), f"--outdir {a_file}: exists and is not"),
        (("run", "--outdir", str(a_file / "sub"), str(prog)), f"{a_file} is not a directory"),
        (("fetch", "/tmp/x", str(tmp_path / "missing" / "x")), "no such directory"),
        (("run", str(tmp_path / "nope")), "program not found"),
        (("run", "--input", str(tmp_path / "in.bin"), str(prog)), "in.bin: no such file"),
        (("push", str(tmp_path / "nope"), "/tmp/x"), "nope: no such file"),
    ]
    for args, want in cases:
        proc = board_cli(args[0], "--board", "root@127.0.0.1:9", *args[1:])
        assert proc.returncode == 2 and want in proc.stderr, proc.stderr
        assert "connect" not in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "p"]


def test_silent_peer_is_a_handshake_timeout():
    """A TCP server that accepts and never speaks: a clear message, no hang, no traceback."""
    import socket
    import threading
    import time

    from harness.board.session import BoardSession

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(srv.accept()[0]) for _ in range(2)],
                     daemon=True).start()
    port = srv.getsockname()[1]
    try:
        prof = BoardProfile(host="127.0.0.1", port=port, connect_timeout=1.0, known_hosts=None)
        t0 = time.monotonic()
        with pytest.raises(HarnessError, match=r"SSH handshake timed out: .* within 1s"):
            BoardSession(prof).connect()
        assert time.monotonic() - t0 < 5
        proc = board_cli("check", "--board", f"root@127.0.0.1:{port}")
        assert proc.returncode == 2 and "SSH handshake timed out" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        srv.close()
        for c in held:
            c.close()
