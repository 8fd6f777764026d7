"""`skoracle elf-check` on real AArch64 programs, objects, archives, klibs and jars.

Programs are built from fixtures/elf with aarch64-linux-gnu-gcc in a session fixture and
run under qemu-aarch64: the gate's verdict must agree with what the CPU model does. Every
program the gate passes for Cortex-A55 exits 0 on `-cpu cortex-a76` (same table features);
every kernel function the gate flags for I8MM/BF16/SVE/SME dies there with SIGILL, and runs
correctly (exit 0) on `-cpu max`.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from harness.cli import main as skoracle
from harness.gate import check_artifact, profile
from harness.gate.arfile import iter_members
from harness.gate.elfscan import open_elf
from harness.gate.testbins import (
    KERNEL_ARCHIVE,
    KLIB_NATIVE_DIR,
    PROGRAMS,
    SYSROOT,
    Built,
    build_once,
    run_qemu,
)

A55 = profile("cortex-a55")
SIGILL = -signal.SIGILL
GLIBC_RUNTIME_DISPATCHED = ("__memcpy_a64fx", "__memmove_a64fx", "__memset_a64fx",
                            "__memcpy_sve", "__memmove_sve", "execute_stack_op",
                            "uw_update_context", "uw_update_context_1", "_Unwind_GetGR")


@pytest.fixture(scope="session")
def gate_bins(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_once(lambda: tmp_path_factory.mktemp("gate-bins"))


def _fn(finding) -> str | None:
    """The enclosing function's name without offset or gcc clone suffix (.constprop.0)."""
    if not finding.function:
        return None
    return re.sub(r"\.(constprop|isra|part|cold)\.\d+$", "", finding.function.split("+", 1)[0])


def _objdump_count(path: Path, mnemonics: tuple[str, ...]) -> int:
    out = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(path)], check=True,
                         capture_output=True, text=True).stdout
    rx = re.compile(r"^\s*[0-9a-f]+:\s+[0-9a-f]{8}\s+(" + "|".join(mnemonics) + r")\s")
    return sum(1 for line in out.splitlines() if rx.match(line))


@pytest.mark.parametrize("prog", PROGRAMS, ids=[p.name for p in PROGRAMS])
def test_verdict_agrees_with_qemu_cortex_a76(gate_bins: Built, prog) -> None:
    exe = gate_bins.programs[prog.name]
    rep = check_artifact(exe, A55)
    assert rep.error is None
    flagged = {_fn(f) for f in rep.findings}
    assert {f.kind for f in rep.findings} <= {"forbidden-instruction"}
    if prog.forbidden:
        assert rep.exit_code == 1
        assert set(prog.forbidden) <= {feat for f in rep.findings for feat in f.features}
        assert run_qemu(exe, "cortex-a76") == SIGILL
    else:
        assert rep.exit_code == 0 and rep.findings == []
        assert run_qemu(exe, "cortex-a76") == 0
    for kernel in prog.kernels:
        expected = SIGILL if prog.functions_of(kernel) & flagged else 0
        assert run_qemu(exe, "cortex-a76", kernel) == expected, kernel
        assert run_qemu(exe, "max", kernel) == 0, f"{kernel} computes a wrong result"
    # Every flagged function is a kernel or its helper (findings name the right function).
    assert flagged <= set().union(*(prog.functions_of(k) for k in prog.kernels))
    if prog.forbidden:
        assert flagged, "a forbidden program must have findings inside its kernels"


def test_each_forbidden_form_is_named_in_its_kernel(gate_bins: Built) -> None:
    expect = {
        "i8mm": {"k_smmla": "SMMLA (vector)", "k_ummla": "UMMLA (vector)",
                 "k_usmmla": "USMMLA (vector)", "k_usdot": "USDOT (vector)",
                 "k_usdot_lane": "USDOT (by element)", "k_sudot_lane": "SUDOT (by element)"},
        "bf16": {"k_bfdot": "BFDOT (vector)", "k_bfdot_lane": "BFDOT (by element)",
                 "k_bfmmla": "BFMMLA (vector)", "k_bfmlalb": "BFMLALB (vector)",
                 "k_bfmlalt": "BFMLALT (vector)", "k_bfcvtn": "BFCVTN",
                 "k_bfcvt": "BFCVT (scalar)"},
        "sme": {"k_smstart": "SMSTART"},
        "rawword": {"k_rawword": "SMMLA (vector)"},
    }
    for name, per_kernel in expect.items():
        rep = check_artifact(gate_bins.programs[name], A55)
        seen = {(_fn(f), f.instruction) for f in rep.findings}
        for kernel, instruction in per_kernel.items():
            assert (kernel, instruction) in seen, (name, kernel, instruction)
        for f in rep.findings:
            assert f.section == ".text" and f.offset is not None and f.address is not None
    sme = check_artifact(gate_bins.programs["sme"], A55)
    assert {f.instruction for f in sme.findings} == {"SMSTART", "SMSTOP"}
    sve = check_artifact(gate_bins.programs["sve"], A55)
    assert {_fn(f) for f in sve.findings} >= {"k_sve_acle", "saxpy"}
    assert {"WHILELO (SVE)", "LD1W (SVE, scalar+scalar)"} <= {f.instruction for f in sve.findings}


def test_findings_point_at_the_word_in_the_file(gate_bins: Built) -> None:
    exe = gate_bins.programs["i8mm"]
    data = exe.read_bytes()
    elf = open_elf(data)
    text = elf.get_section_by_name(".text")
    rep = check_artifact(exe, A55)
    for f in rep.findings:
        assert int.from_bytes(data[f.file_offset:f.file_offset + 4], "little") == f.word
        assert f.file_offset == text["sh_offset"] + f.offset
        assert f.address == text["sh_addr"] + f.offset


def test_dotprod_is_allowed_and_counted_exactly(gate_bins: Built) -> None:
    exe = gate_bins.programs["dotprod"]
    rep = check_artifact(exe, A55)
    assert rep.exit_code == 0
    assert rep.counts["DotProd"] == _objdump_count(exe, ("sdot", "udot")) >= 3
    assert {"SDOT (vector)", "UDOT (vector)", "SDOT (by element)"} <= set(rep.instructions)
    # The same binary on a core without DotProd would be wrong: qemu's cortex-a53 agrees.
    assert run_qemu(exe, "cortex-a53", "k_sdot") == SIGILL


def test_neoverse_n2_profile_accepts_i8mm_bf16_sve(gate_bins: Built) -> None:
    n2 = profile("neoverse-n2")
    for name, feat in (("i8mm", "I8MM"), ("bf16", "BF16"), ("sve", "SVE")):
        rep = check_artifact(gate_bins.programs[name], n2)
        assert rep.exit_code == 0, [f.message for f in rep.findings]
        assert rep.counts[feat] > 0
        assert run_qemu(gate_bins.programs[name], "max") == 0
    sme = check_artifact(gate_bins.programs["sme"], n2)
    assert sme.exit_code == 1 and {f.features for f in sme.findings} == {("SME",)}


def test_literal_pool_words_are_data_not_instructions(gate_bins: Built) -> None:
    exe = gate_bins.programs["litpool"]
    data = exe.read_bytes()
    elf = open_elf(data)
    text = elf.get_section_by_name(".text")
    code = text.data()
    for word in (0x4E82A420, 0x45029820, 0xD503477F, 0x6E42EC20, 0x04A0E3E0):
        assert word.to_bytes(4, "little") in code  # the lookalikes sit inside .text
    names = {s.name for s in elf.get_section_by_name(".symtab").iter_symbols()}
    assert {"$d", "$x"} <= {n.split(".")[0] for n in names if n.startswith("$")}
    rep = check_artifact(exe, A55)
    assert rep.exit_code == 0 and rep.findings == []
    assert run_qemu(exe, "cortex-a76") == 0
    # The same SMMLA word as an instruction (.inst, under $x) is flagged and faults.
    raw = check_artifact(gate_bins.programs["rawword"], A55)
    assert [(f.instruction, f.word, _fn(f)) for f in raw.findings] == [
        ("SMMLA (vector)", 0x4E82A420, "k_rawword")]


def test_stripped_binary_is_still_flagged_with_offsets(gate_bins: Built) -> None:
    full = check_artifact(gate_bins.programs["i8mm"], A55)
    stripped = check_artifact(gate_bins.extra["i8mm.stripped"], A55)
    assert open_elf(gate_bins.extra["i8mm.stripped"].read_bytes()).get_section_by_name(
        ".symtab") is None
    assert stripped.exit_code == 1
    key = [(f.instruction, f.section, f.offset, f.address, f.word) for f in full.findings]
    assert [(f.instruction, f.section, f.offset, f.address, f.word)
            for f in stripped.findings] == key
    assert all(f.function is None and f.file_offset is not None for f in stripped.findings)
    assert any("no mapping symbols" in n for n in stripped.notes)
    # Without $d marks, a stripped file's data-in-code reads as code (said in a note).
    pool = check_artifact(gate_bins.extra["litpool.stripped"], A55)
    assert pool.exit_code == 1 and any("no mapping symbols" in n for n in pool.notes)


def test_ar_reader_agrees_with_binutils(gate_bins: Built) -> None:
    for path in (gate_bins.extra["kernels_i8mm.a"], gate_bins.extra["kernels_bsd.a"],
                 Path("/usr/aarch64-linux-gnu/lib/libm.a")):
        data = path.read_bytes()
        ours = [m for m in iter_members(data, str(path)) if not m.special]
        listed = subprocess.run(["aarch64-linux-gnu-ar", "t", str(path)], check=True,
                                capture_output=True, text=True).stdout.splitlines()
        listed = [n for n in listed if not n.startswith("__.SYMDEF")]  # binutils lists it
        assert [m.name for m in ours] == listed
        for m in ours[:40]:
            body = subprocess.run(["aarch64-linux-gnu-ar", "p", str(path), m.name],
                                  check=True, capture_output=True).stdout
            assert bytes(m.data) == body, m.name
    gnu = list(iter_members(gate_bins.extra["kernels_i8mm.a"].read_bytes()))
    assert gnu[0].symbol_table and any(m.name_table for m in gnu)  # "/" and "//" members
    assert "q8_0_matmul_i8mm.c.o" in [m.name for m in gnu]  # a long (> 15 chars) name
    bsd = list(iter_members(gate_bins.extra["kernels_bsd.a"].read_bytes()))
    assert bsd[0].name == "__.SYMDEF SORTED" and bsd[0].symbol_table


def test_archive_findings_name_the_member(gate_bins: Built) -> None:
    path = gate_bins.extra["kernels_i8mm.a"]
    rep = check_artifact(path, A55, symbols=("skainet_q8_0_matmul", "skainet_q4k_matmul"))
    assert rep.elf_files == 4 and rep.archives == 1
    assert [(f.path, _fn(f)) for f in rep.findings] == [
        (f"{path}!q8_0_matmul_i8mm.c.o", "skainet_q8_0_matmul_i8mm")]
    assert rep.symbols == {"skainet_q8_0_matmul": f"{path}!q8_0_matmul.c.o",
                           "skainet_q4k_matmul": f"{path}!q4k_matmul.c.o"}
    assert rep.counts["DotProd"] == 3
    bsd = check_artifact(gate_bins.extra["kernels_bsd.a"], A55, symbols=("skainet_q4k_matmul",))
    assert bsd.exit_code == 0 and bsd.symbols["skainet_q4k_matmul"].endswith("!q4k_matmul.c.o")


def test_empty_archives_are_their_own_finding(gate_bins: Built) -> None:
    bsd = check_artifact(gate_bins.extra["empty_bsd.a"], A55)
    assert [f.kind for f in bsd.findings] == ["empty-archive"]
    assert "only a symbol table" in bsd.findings[0].message
    gnu = check_artifact(gate_bins.extra["empty_gnu.a"], A55)
    assert [f.kind for f in gnu.findings] == ["empty-archive"]
    klib = gate_bins.extra["empty.klib"]
    rep = check_artifact(klib, A55, marker=gate_bins.marker, symbols=("skainet_q4k_matmul",))
    assert rep.exit_code == 1
    assert [(f.kind, f.path) for f in rep.findings] == [
        ("empty-archive", f"{klib}!/{KLIB_NATIVE_DIR}/{KERNEL_ARCHIVE}"),
        ("missing-symbol", str(klib))]
    assert "skainet_q4k_matmul" in rep.findings[1].message


def test_klib_paths_marker_and_symbols(gate_bins: Built) -> None:
    x = gate_bins.extra
    good = check_artifact(x["good.klib"], A55, marker=gate_bins.marker,
                          symbols=("skainet_q8_0_matmul", "skainet_q4k_matmul"))
    assert good.exit_code == 0, [f.message for f in good.findings]
    assert good.marker_found_in == f"{x['good.klib']}!/default/linkdata/module"
    assert good.symbols["skainet_q4k_matmul"] == (
        f"{x['good.klib']}!/{KLIB_NATIVE_DIR}/{KERNEL_ARCHIVE}!q4k_matmul.c.o")
    bad = check_artifact(x["i8mm.klib"], A55)
    assert [f.path for f in bad.findings] == [
        f"{x['i8mm.klib']}!/{KLIB_NATIVE_DIR}/{KERNEL_ARCHIVE}!q8_0_matmul_i8mm.c.o"]
    nested = check_artifact(x["nested.zip"], A55)
    assert [f.path for f in nested.findings] == [
        f"{x['nested.zip']}!/libs/skainet-backend-native-cpu-linuxarm64.klib!/"
        f"{KLIB_NATIVE_DIR}/{KERNEL_ARCHIVE}!q8_0_matmul_i8mm.c.o"]


def test_marker_is_searched_decompressed_never_in_compressed_bytes(gate_bins: Built) -> None:
    x, marker = gate_bins.extra, gate_bins.marker
    raw = x["good.klib"].read_bytes()
    assert marker.encode() not in raw and marker.encode("utf-16-le") not in raw
    with zipfile.ZipFile(x["good.klib"]) as zf:
        assert zf.getinfo("default/linkdata/module").compress_type == zipfile.ZIP_DEFLATED
    assert check_artifact(x["good.klib"], A55, marker=marker).marker_found_in
    stale = check_artifact(x["stale.klib"], A55, marker=marker)
    assert [f.kind for f in stale.findings] == ["stale"]
    assert stale.findings[0].message.startswith(f"STALE {x['stale.klib']}")
    # In ELF data (.rodata of a program) the marker is found as UTF-8.
    prog = check_artifact(gate_bins.programs["neon"], A55, marker=marker)
    assert prog.exit_code == 0 and prog.marker_found_in == str(gate_bins.programs["neon"])
    dyn = check_artifact(x["neon.dynamic"], A55, marker=marker)
    assert [f.kind for f in dyn.findings] == ["stale"]


def test_jar_with_per_arch_shared_objects(gate_bins: Built) -> None:
    jar = gate_bins.extra["jvm.jar"]
    rep = check_artifact(jar, A55, symbols=("skainet_q8_0_matmul",))
    assert rep.exit_code == 0
    assert rep.elf_files == 1 and rep.counts["DotProd"] == 3
    assert rep.symbols["skainet_q8_0_matmul"] == f"{jar}!/native/linux-arm64/libskainet_kernels.so"
    assert any("linux-x86_64/libskainet_kernels.so: skipped EM_X86_64" in n for n in rep.notes)


def test_wrong_machine(gate_bins: Built) -> None:
    x = gate_bins.extra
    klib = check_artifact(x["x86.klib"], A55)
    assert [f.kind for f in klib.findings] == ["wrong-machine"]
    assert "EM_X86_64, not AArch64" in klib.findings[0].message
    top = check_artifact(x["host.so"], A55)
    assert top.exit_code == 2 and "not AArch64 (e_machine EM_X86_64)" in top.error
    arch = check_artifact(x["kernels_x86.a"], A55)
    assert [f.kind for f in arch.findings] == ["no-aarch64-code"]


def test_glibc_static_runtime_dispatch_and_allow_function(gate_bins: Built) -> None:
    """A static glibc program carries glibc's SVE ifunc variants and libgcc's SVE-aware
    unwinder: the bytes are there, but they run only after a CPU check, so the program runs
    on the Cortex-A76 model. By default they are one note and the program passes; --strict
    makes them findings, which --allow-function then accepts exactly."""
    exe = gate_bins.extra["neon.glibc-static"]
    rep = check_artifact(exe, A55)
    assert rep.exit_code == 0 and not rep.findings
    n = sum(rep.dispatched.values())
    note = [x for x in rep.notes if "ifunc-dispatched glibc variants" in x]
    assert n > 0 and len(note) == 1
    assert f"{n} words in ifunc-dispatched glibc variants, unreachable on cortex-a55" in note[0]
    strict = check_artifact(exe, A55, strict=True)
    assert strict.exit_code == 1 and len(strict.findings) == n
    assert {f.features for f in strict.findings} == {("SVE",)}
    assert {_fn(f) for f in strict.findings} <= set(GLIBC_RUNTIME_DISPATCHED)
    assert run_qemu(exe, "cortex-a76") == 0
    allowed = check_artifact(exe, A55, allow=GLIBC_RUNTIME_DISPATCHED, strict=True)
    assert allowed.exit_code == 0 and sum(allowed.allowed.values()) == n
    dyn = check_artifact(gate_bins.extra["neon.dynamic"], A55)
    assert dyn.exit_code == 0 and not dyn.dispatched
    assert run_qemu(gate_bins.extra["neon.dynamic"], "cortex-a76", sysroot=SYSROOT) == 0
    assert skoracle(["elf-check", str(exe)]) == 0
    assert skoracle(["elf-check", "--strict", str(exe)]) == 1


def test_nothing_to_check_is_an_input_error(tmp_path: Path, capsys) -> None:
    """An empty directory, an empty jar, a klib with no ELF inside: never PASS, exit 2."""
    (tmp_path / "empty").mkdir()
    jar = tmp_path / "empty.jar"
    with zipfile.ZipFile(jar, "w"):
        pass
    klib = tmp_path / "noelf.klib"
    with zipfile.ZipFile(klib, "w") as zf:
        zf.writestr("default/manifest", "unique_name=x\n")
    for path in (tmp_path / "empty", jar, klib):
        rep = check_artifact(path, A55)
        assert rep.exit_code == 2 and "nothing to check" in (rep.error or ""), path
        assert skoracle(["elf-check", str(path)]) == 2
    assert "nothing to check: no AArch64 ELF code inside" in capsys.readouterr().err


def test_directory_input_is_an_unpacked_klib(gate_bins: Built, tmp_path: Path) -> None:
    with zipfile.ZipFile(gate_bins.extra["i8mm.klib"]) as zf:
        zf.extractall(tmp_path / "klib")
    rep = check_artifact(tmp_path / "klib", A55, marker=gate_bins.marker)
    assert [f.path for f in rep.findings] == [
        f"{tmp_path / 'klib'}/{KLIB_NATIVE_DIR}/{KERNEL_ARCHIVE}!q8_0_matmul_i8mm.c.o"]
    assert rep.marker_found_in.endswith("/default/linkdata/module")


def test_cli_exit_codes_and_json(gate_bins: Built, capsys: pytest.CaptureFixture) -> None:
    x = gate_bins.extra
    assert skoracle(["elf-check", str(x["good.klib"]), "--expect-marker", gate_bins.marker,
                     "--expect-symbol", "skainet_q8_0_matmul",
                     "--expect-symbol", "skainet_q4k_matmul"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"PASS {x['good.klib']} [cortex-a55]") and "3 DotProd" in out
    assert skoracle(["elf-check", "--json", str(x["good.klib"]), str(x["i8mm.klib"])]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 1 and [a["verdict"] for a in doc["artifacts"]] == ["PASS", "FAIL"]
    f = doc["artifacts"][1]["findings"][0]
    assert f["instruction"] == "SMMLA (vector)" and f["features"] == ["I8MM"]
    assert f["section"] == ".text" and f["function"].startswith("skainet_q8_0_matmul_i8mm")
    assert f["path"].endswith("libskainet_kernels.a!q8_0_matmul_i8mm.c.o")
    assert f["word"].startswith("0x4e8")
    assert skoracle(["elf-check", str(x["good.klib"]), "--cpu", "neoverse-n2"]) == 0
    capsys.readouterr()
    assert skoracle(["elf-check", str(x["good.klib"]), str(x["host.so"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"skoracle elf-check: error: {x['host.so']}: not AArch64 (e_machine "
                   "EM_X86_64); the CPU profiles describe Arm cores and check AArch64 code only"]


def test_cli_subprocess_has_no_traceback(gate_bins: Built, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.kexe"
    bad.write_bytes(gate_bins.programs["neon"].read_bytes()[:200])
    proc = subprocess.run([sys.executable, "-m", "harness", "elf-check", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"skoracle elf-check: error: {bad}: malformed ELF: section header table (offset "
        f"{_shoff(gate_bins.programs['neon'])}, {_shnum(gate_bins.programs['neon'])} entries) "
        "runs past the end of the file (200 bytes)"]


def _shoff(path: Path) -> int:
    return open_elf(path.read_bytes()).header["e_shoff"]


def _shnum(path: Path) -> int:
    return open_elf(path.read_bytes()).num_sections()


def test_shared_structs_reader_equals_pyelftools(gate_bins: Built) -> None:
    """open_elf shares pyelftools' struct definitions between files; it must read exactly
    what a plain ELFFile reads (header, sections, symbols)."""
    paths = [gate_bins.programs["i8mm"], gate_bins.extra["kernels.so"],
             gate_bins.extra["host_rt.o"], Path("/usr/aarch64-linux-gnu/lib/libm.so.6")]
    for path in paths * 2:  # the second round reads with cached structs
        data = path.read_bytes()
        ours, plain = open_elf(data), ELFFile(io.BytesIO(data))
        assert dict(ours.header) == dict(plain.header)
        assert [(s.name, s["sh_type"], s["sh_offset"], s["sh_size"]) for s in ours.iter_sections()
                ] == [(s.name, s["sh_type"], s["sh_offset"], s["sh_size"])
                      for s in plain.iter_sections()]
        for name in (".symtab", ".dynsym"):
            a, b = ours.get_section_by_name(name), plain.get_section_by_name(name)
            assert (a is None) == (b is None)
            if a is not None:
                assert [(s.name, s["st_value"], s["st_info"]["type"]) for s in a.iter_symbols()
                        ] == [(s.name, s["st_value"], s["st_info"]["type"])
                              for s in b.iter_symbols()]
