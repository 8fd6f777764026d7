"""`board kernel-parity --host`: a host build of the C kernels, each case in a child process
through ctypes, judged by the one judge within the rigorous bound (no order model for an
x86-64 build). The libraries are the project's fixtures (fixtures/host), built here."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from harness.board.hostkernels import (
    HOST_FIXTURE_DIR,
    HOST_FIXTURE_LABEL,
    HOST_NOTE,
    fixture_host_library,
    host_kernel_parity,
    host_library,
)
from harness.parity.verdict import Verdict

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the host kernels are x86-64 builds")

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(64, 256, 1), (37, 640, 2)]
CRASHING = """
#include "host_kernels.h"
KERNEL(skainet_q8_0_matmul) {
    (void) input; (void) input_offset; (void) weight; (void) weight_byte_offset;
    (void) input_dim; (void) output_dim; (void) output; (void) output_offset;
    *(volatile int *) 0 = 1;
}
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness", "board", "kernel-parity",
                           "--host", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)


def test_fixture_library_passes_within_bound_and_says_order_not_modelled() -> None:
    with fixture_host_library() as lib:
        result = host_kernel_parity(lib, shapes=SHAPES, fixture=True)
    assert [k.symbol for k in result.inventory.run] == [
        "skainet_q8_0_matmul", "skainet_q8_0_matmul_rm", "skainet_q4_0_matmul",
        "skainet_q4_0_matmul_rm"]
    assert len(result.cases) == 8 and result.ok
    for case in result.cases:
        assert case.verdict == Verdict.WITHIN_BOUND, case.row()
        assert HOST_NOTE in case.row()
    assert not any("bit-exact" in c.row() for c in result.cases)
    assert result.summary().startswith(f"[{HOST_FIXTURE_LABEL}]")
    assert HOST_NOTE in result.summary()


def test_wrong_kernel_fails_by_name_through_the_cli() -> None:
    res = _cli("--fixture-wrong", "--shape", "64x256")
    assert res.returncode == 1, res.stderr
    assert "FAIL skainet_q8_0_matmul " in res.stdout
    assert "FAILING: skainet_q8_0_matmul" in res.stdout
    assert HOST_FIXTURE_LABEL in res.stdout


def test_static_archive_is_linked_into_a_temporary_library(tmp_path: Path) -> None:
    obj, archive = tmp_path / "k.o", tmp_path / "libk.a"
    subprocess.run(["gcc", "-O3", "-ffast-math", "-fPIC", "-c", "-o", str(obj),
                    str(HOST_FIXTURE_DIR / "host_kernels.c")], check=True)
    subprocess.run(["ar", "rcs", str(archive), str(obj)], check=True)
    with host_library(archive) as lib:
        linked_dir = lib.parent
        result = host_kernel_parity(lib, formats=["Q4_0"], shapes=SHAPES[:1], label=archive)
    assert not linked_dir.exists()
    assert result.ok and result.inventory.archive == archive
    assert [c.symbol for c in result.cases] == ["skainet_q4_0_matmul", "skainet_q4_0_matmul_rm"]


def test_crashing_symbol_is_a_crash_row_not_a_harness_crash(tmp_path: Path) -> None:
    src, lib = tmp_path / "crash.c", tmp_path / "libcrash.so"
    src.write_text(CRASHING)
    subprocess.run(["gcc", "-fPIC", "-shared", "-I", str(HOST_FIXTURE_DIR), "-o", str(lib),
                    str(src)], check=True)
    result = host_kernel_parity(lib, shapes=SHAPES[:1])
    (case,) = result.cases
    assert case.verdict == Verdict.CRASH and not result.ok
    assert "SIGSEGV" in case.row() and "skainet_q8_0_matmul" in case.row()
    assert "FAILING: skainet_q8_0_matmul" in result.summary()


@pytest.mark.parametrize("make", ["text", "aarch64"])
def test_non_elf_or_wrong_arch_is_one_line_exit_2(tmp_path: Path, make: str) -> None:
    lib = tmp_path / "libbad.so"
    if make == "text":
        lib.write_text("not a library\n")
        expect = "not a 64-bit little-endian ELF"
    else:
        src = tmp_path / "k.c"
        src.write_text("void skainet_q8_0_matmul(void) {}\n")
        subprocess.run(["aarch64-linux-gnu-gcc", "-fPIC", "-shared", "-o", str(lib),
                        str(src)], check=True)
        expect = "built for ELF machine 183"
    res = _cli("--kernels-archive", str(lib))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(lib) in lines[0] and expect in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_host_with_a_board_option_is_a_usage_error() -> None:
    res = _cli("--fixture", "--board", "root@192.0.2.1")
    assert res.returncode == 2 and "--host runs on this machine" in res.stderr


def test_native_cpu_jar_is_judged_through_the_library_it_bundles(tmp_path: Path) -> None:
    """SKaiNET's native-cpu JAR as --kernels-archive: the library its JVM would extract and
    load (native/linux-x86_64/libskainet_kernels.so), judged in both block orders."""
    import zipfile

    jar = tmp_path / "skainet-backend-native-cpu-jvm.jar"
    with fixture_host_library() as built, zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        zf.write(built, "native/linux-x86_64/libskainet_kernels.so")
        zf.writestr("native/macos-arm64/libskainet_kernels.dylib", b"not for this host")
    with host_library(jar) as lib:
        extracted = lib.parent
        result = host_kernel_parity(lib, formats=["Q8_0"], shapes=SHAPES[:1], label=jar)
    assert not extracted.exists()
    assert result.ok
    assert [c.symbol for c in result.cases] == ["skainet_q8_0_matmul", "skainet_q8_0_matmul_rm"]


def test_jar_without_this_hosts_library_is_one_line_exit_2(tmp_path: Path) -> None:
    import zipfile

    jar = tmp_path / "skainet-backend-native-cpu-jvm.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("native/macos-arm64/libskainet_kernels.dylib", b"\xcf\xfa\xed\xfe")
    res = _cli("--kernels-archive", str(jar))
    assert res.returncode == 2
    assert res.stderr.strip().endswith(
        f"--kernels-archive {jar}: a zip/JAR without native/linux-x86_64/libskainet_kernels.so "
        "(SKaiNET's skainet-backend-native-cpu JAR bundles it for this machine)")
    assert "Traceback" not in res.stderr
    jar.write_bytes(b"PK\x03\x04" + b"\0" * 40)  # a corrupt zip
    res = _cli("--kernels-archive", str(jar))
    assert res.returncode == 2 and "corrupt zip container" in res.stderr
