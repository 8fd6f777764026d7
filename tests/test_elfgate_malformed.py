"""Malformed input to `skoracle elf-check`: one clear line naming the file, exit code 2.

Each defect is made from a real file (a program, archive or klib built in the session
fixture) by changing the bytes that matter; a hypothesis fuzz test mutates real files at
random and checks that nothing but the project's own error ever comes out.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main as skoracle
from harness.errors import HarnessError
from harness.gate import check_artifact, profile
from harness.gate.arfile import ArchiveError, iter_members
from harness.gate.check import check_bytes
from harness.gate.elfscan import open_elf, scan_elf
from harness.gate.errors import GateError
from harness.gate.testbins import Built, build_once

A55 = profile("cortex-a55")


@pytest.fixture(scope="session")
def gate_bins(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_once(lambda: tmp_path_factory.mktemp("gate-bins"))


def _error_of(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    rep = check_artifact(path, A55)
    assert rep.exit_code == 2 and rep.error is not None, rep.findings
    assert "\n" not in rep.error
    assert rep.error.startswith(str(path))
    return rep.error


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_empty_file_and_unknown_format(tmp_path: Path) -> None:
    assert _error_of(tmp_path, "empty.so", b"").endswith(": empty file")
    err = _error_of(tmp_path, "notes.txt", b"hello\n")
    assert "not an ELF file, ar archive or zip container" in err


def test_truncated_elf(gate_bins: Built, tmp_path: Path) -> None:
    data = gate_bins.programs["i8mm"].read_bytes()
    assert "malformed ELF: unreadable header" in _error_of(tmp_path, "t30", data[:30])
    err = _error_of(tmp_path, "t300", data[:300])
    assert "section header table" in err and "runs past the end of the file (300 bytes)" in err


def test_wrong_class_and_endianness(gate_bins: Built, tmp_path: Path) -> None:
    data = gate_bins.programs["neon"].read_bytes()
    as32 = data[:4] + b"\x01" + data[5:]  # EI_CLASS = ELFCLASS32 on an ELF64 file
    assert "AArch64 with ELF class 32 (EI_CLASS)" in _error_of(tmp_path, "c32", as32)
    bad_class = data[:4] + b"\x07" + data[5:]
    assert "malformed ELF: unreadable header" in _error_of(tmp_path, "c7", bad_class)
    as_be = data[:5] + b"\x02" + data[6:]  # EI_DATA = big-endian
    assert "wrong endianness byte" in _error_of(tmp_path, "be", as_be)
    bad_data = data[:5] + b"\x09" + data[6:]
    assert "malformed ELF" in _error_of(tmp_path, "d9", bad_data)


def test_section_table_and_section_past_the_end(gate_bins: Built, tmp_path: Path) -> None:
    data = gate_bins.programs["dotprod"].read_bytes()
    far = _patch(data, 0x28, "<Q", len(data) - 64)  # e_shoff: the table starts near the end
    assert "section header table" in _error_of(tmp_path, "shoff", far)
    elf = open_elf(data)
    index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".text")
    entry = elf.header["e_shoff"] + index * 64
    huge = _patch(data, entry + 0x20, "<Q", 1 << 40)  # .text sh_size
    assert "section .text" in _error_of(tmp_path, "text", huge)
    assert "extends past the end of the file" in _error_of(tmp_path, "text2", huge)
    wrong_entsize = _patch(data, 0x3A, "<H", 40)  # e_shentsize
    assert "e_shentsize 40" in _error_of(tmp_path, "entsize", wrong_entsize)


def test_x86_elf_is_not_aarch64(gate_bins: Built, tmp_path: Path) -> None:
    rep = check_artifact(gate_bins.extra["host_rt.o"], A55)
    assert rep.exit_code == 2 and "not AArch64 (e_machine EM_X86_64)" in rep.error


def _zip_bytes(entries: dict[str, bytes], method: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_with_bad_member(gate_bins: Built, tmp_path: Path) -> None:
    archive = gate_bins.extra["kernels.a"].read_bytes()
    stored = _zip_bytes({"default/targets/linux_arm64/native/libk.a": archive},
                        zipfile.ZIP_STORED)
    at = stored.index(b"!<arch>") + 200
    flipped = stored[:at] + bytes([stored[at] ^ 0xFF]) + stored[at + 1:]
    err = _error_of(tmp_path, "crc.klib", flipped)
    assert err.startswith(f"{tmp_path / 'crc.klib'}!/default/targets/linux_arm64/native/libk.a")
    assert "unreadable zip member" in err and "CRC" in err
    deflated = _zip_bytes({"m.a": archive}, zipfile.ZIP_DEFLATED)
    at = 30 + len("m.a") + 40
    garbled = deflated[:at] + b"\xff" * 16 + deflated[at + 16:]
    assert "unreadable zip member" in _error_of(tmp_path, "deflate.klib", garbled)
    cut = deflated[: len(deflated) - 30]  # the central directory's end is gone
    assert "corrupt zip container" in _error_of(tmp_path, "cut.klib", cut)


def test_bad_member_inside_archive_and_zip_names_the_path(gate_bins: Built,
                                                          tmp_path: Path) -> None:
    obj = gate_bins.programs["neon"].read_bytes()[:300]
    # A GNU archive by hand: one member whose ELF is truncated.
    member = b"broken.o/".ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) \
        + b"644".ljust(8) + str(len(obj)).encode().ljust(10) + b"`\n" + obj
    arch = b"!<arch>\n" + member
    klib = _zip_bytes({"default/targets/linux_arm64/native/libx.a": arch}, zipfile.ZIP_DEFLATED)
    err = _error_of(tmp_path, "x.klib", klib)
    assert err.startswith(
        f"{tmp_path / 'x.klib'}!/default/targets/linux_arm64/native/libx.a!broken.o: "
        "malformed ELF")


def _ar_header(name: bytes, size: bytes, end: bytes = b"`\n") -> bytes:
    return name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"644".ljust(8) \
        + size.ljust(10) + end


@pytest.mark.parametrize(("blob", "message"), [
    (b"!<thin>\n", "thin archive"),
    (b"!<arch>\n" + b"x" * 20, "truncated (20 of 60 header bytes)"),
    (b"!<arch>\n" + _ar_header(b"a.o/", b"10", b"XX") + b"0123456789", "bad header terminator"),
    (b"!<arch>\n" + _ar_header(b"a.o/", b"1x") + b"0", "size field is not a number"),
    (b"!<arch>\n" + _ar_header(b"a.o/", b"500") + b"0" * 10, "runs past the end"),
    (b"!<arch>\n" + _ar_header(b"/4", b"2") + b"ab", "before the // name table"),
    (b"!<arch>\n" + _ar_header(b"//", b"4") + b"a/\n\n" + _ar_header(b"/99", b"2") + b"ab",
     "outside the 4-byte table"),
    (b"!<arch>\n" + _ar_header(b"#1/40", b"8") + b"abcdefgh", "exceeds member size"),
])
def test_archive_structure_errors(blob: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=re.escape(message)):
        list(iter_members(blob, "lib.a"))
    rep = check_bytes("lib.a", blob, A55)
    assert rep.exit_code == 2 and message.split(" (")[0] in rep.error


def test_cli_prints_one_line_per_bad_file(gate_bins: Built, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.klib"
    empty.write_bytes(b"")
    good = gate_bins.extra["good.klib"]
    assert skoracle(["elf-check", str(good), str(empty)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"skoracle elf-check: error: {empty}: empty file"]
    assert captured.out.splitlines()[0].startswith(f"PASS {good}")
    assert skoracle(["elf-check", str(tmp_path / "missing.so")]) == 2
    assert "cannot read" in capsys.readouterr().err


# --- fuzzing: mutated real files raise nothing but the project's errors -----------------

_BASES = ("i8mm", "litpool", "kernels_i8mm.a", "kernels_bsd.a", "good.klib", "empty_bsd.a")


def _base_blobs(built: Built) -> dict[str, bytes]:
    out = {}
    for name in _BASES:
        path = built.programs.get(name) or built.extra[name]
        out[name] = path.read_bytes()
    return out


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("word"), st.integers(0, 1 << 20), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]], header_bias: bool) -> bytes:
    out = bytearray(data)
    for kind, pos, value in mutations:
        if not out:
            break
        # Half of the edits land in the first 512 bytes, where headers and tables live.
        pos = pos % min(len(out), 512) if header_bias else pos % len(out)
        if kind == "flip":
            out[pos] ^= value
        elif kind == "cut":
            del out[pos:]
        elif kind == "word" and pos + 4 <= len(out):
            out[pos:pos + 4] = value.to_bytes(4, "little")
        elif kind == "insert":
            out[pos:pos] = bytes([value])
    return bytes(out)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(base=st.sampled_from(_BASES), mutations=st.lists(_mutation, min_size=1, max_size=6),
       header_bias=st.booleans(), marker=st.booleans())
def test_fuzz_mutated_files_raise_only_project_errors(gate_bins: Built, base: str,
                                                      mutations: list, header_bias: bool,
                                                      marker: bool) -> None:
    blobs = _FUZZ_CACHE.setdefault("blobs", _base_blobs(gate_bins))
    data = _mutate(blobs[base], mutations, header_bias)
    rep = check_bytes(f"fuzz/{base}", data, A55,
                      marker="skainet-build" if marker else None,
                      symbols=("skainet_q8_0_matmul",))
    assert rep.exit_code in (0, 1, 2)
    if rep.error is not None:
        assert rep.error.startswith("fuzz/") and "\n" not in rep.error
    # The lower layers directly: only their own error types.
    if data[:4] == b"\x7fELF":
        try:
            scan_elf("fuzz.o", data, frozenset({"skainet_q8_0_matmul"}))
        except GateError:
            pass
    if data[:8] == b"!<arch>\n":
        try:
            for m in iter_members(data, "fuzz.a"):
                assert m.offset >= 8 and len(m.data) >= 0
        except ArchiveError:
            pass


_FUZZ_CACHE: dict[str, dict[str, bytes]] = {}


def test_gate_errors_are_harness_errors_with_exit_2() -> None:
    assert issubclass(GateError, HarnessError) and issubclass(ArchiveError, GateError)
    assert GateError("x").exit_code == 2


def test_file_without_section_headers_is_scanned_by_segments(gate_bins: Built) -> None:
    """Like `sstrip` output: no section header table; the executable PT_LOAD is scanned
    (it also holds the ELF header and .rodata, so data there can read as instructions)."""
    data = gate_bins.programs["rawword"].read_bytes()
    text = open_elf(data).get_section_by_name(".text")
    no_sections = _patch(_patch(_patch(data, 0x28, "<Q", 0), 0x3C, "<H", 0), 0x3E, "<H", 0)
    rep = check_bytes("sstripped", no_sections, A55)
    assert rep.exit_code == 1
    in_text = [f for f in rep.findings
               if text["sh_offset"] <= f.file_offset < text["sh_offset"] + text["sh_size"]]
    assert [(f.instruction, f.word) for f in in_text] == [("SMMLA (vector)", 0x4E82A420)]
    assert in_text[0].section.startswith("[PT_LOAD") and in_text[0].function is None
    assert int.from_bytes(data[in_text[0].file_offset:][:4], "little") == 0x4E82A420
    assert any("no section headers" in n and "read-only data" in n for n in rep.notes)
