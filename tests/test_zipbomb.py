"""Zip bombs: a huge member and overlapping entries are refused with bounded memory."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from harness.fuzz import measured_skoracle
from harness.gate.errors import GateError
from harness.gate.ziputil import UnpackBudget, zip_members

MIB = 1 << 20


def zeros_zip(name: str, size: int, declared: int | None = None) -> bytes:
    """A zip with one deflated member of `size` zero bytes, built without compressing
    `size` bytes: after a full flush, every MiB of zeros deflates to the same block."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(MIB)) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(bytes(MIB)) + comp.flush(zlib.Z_FULL_FLUSH)
    assert block == again
    stream = block * (size // MIB) + comp.flush()
    crc = 0
    chunk = bytes(MIB)
    for _ in range(size // MIB):
        crc = zlib.crc32(chunk, crc)
    usize = size if declared is None else declared
    fname = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(stream), usize,
                        len(fname), 0) + fname
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(stream),
                          usize, len(fname), 0, 0, 0, 0, 0, 0) + fname
    body = local + stream
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(body), 0)
    return body + central + end


def overlapping_zip(copies: int = 16, size: int = 16 * MIB) -> bytes:
    """`copies` central-directory entries that all point at one member's bytes."""
    one = zeros_zip("m.bin", size)
    cd_at = one.index(b"PK\x01\x02")
    eocd_at = one.index(b"PK\x05\x06")
    central = one[cd_at:eocd_at]
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, copies, copies,
                      len(central) * copies, cd_at, 0)
    return one[:cd_at] + central * copies + end


def test_crafted_zips_are_what_they_claim() -> None:
    zf = zipfile.ZipFile(io.BytesIO(zeros_zip("z", 3 * MIB)))
    assert zf.read("z") == bytes(3 * MIB)
    assert len(zipfile.ZipFile(io.BytesIO(overlapping_zip(4, MIB))).infolist()) == 4


def test_one_gib_member_in_a_1_mb_zip(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.klib"
    bomb.write_bytes(zeros_zip("default/big.bin", 1 << 30))
    assert bomb.stat().st_size < 1_100_000
    code, out, rss = measured_skoracle("elf-check", str(bomb))
    assert code == 2, out
    assert f"{bomb}!/default/big.bin: decompressed zip members exceed the 536870912-byte " \
           "limit for one artifact" in out and "--max-unpacked" in out
    assert rss < 250 * MIB  # was 2.2 GB


def test_a_member_that_lies_about_its_size_stops_at_the_budget(tmp_path: Path) -> None:
    """Declared 1 MiB, inflates to 96 MiB: streaming stops once 32 MiB are out."""
    liar = tmp_path / "liar.jar"
    liar.write_bytes(zeros_zip("big.bin", 96 * MIB, declared=MIB))
    with pytest.raises(GateError, match=r"(exceed the 33554432-byte limit|unreadable zip)"):
        for _ in zip_members(str(liar), liar.read_bytes(), UnpackBudget(32 * MIB)):
            pass
    code, out, rss = measured_skoracle("elf-check", "--max-unpacked", "32MiB", str(liar))
    assert code == 2 and "Traceback" not in out and rss < 250 * MIB


def test_the_budget_is_shared_by_all_members_and_can_be_raised(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"part{i}.bin", bytes(8 * MIB))
    many = tmp_path / "many.zip"
    many.write_bytes(buf.getvalue())
    code, out, _ = measured_skoracle("elf-check", "--max-unpacked", "30MiB", str(many))
    assert code == 2 and f"{many}!/part3.bin: decompressed zip members exceed" in out
    code, out, _ = measured_skoracle("elf-check", "--max-unpacked", "64MiB", str(many))
    assert "exceed" not in out and "not an ELF" not in out.split("part4")[0]


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "overlap.jar"
    bomb.write_bytes(overlapping_zip(16, 256 * MIB))  # 16 x 256 MiB = 4 GiB from ~256 kB
    assert bomb.stat().st_size < 300_000
    code, out, rss = measured_skoracle("elf-check", "--max-unpacked", "8GiB", str(bomb))
    assert code == 2, out
    assert "entries 'm.bin' (bytes 0-" in out and "overlap" in out and "zip bomb" in out
    assert rss < 250 * MIB


def test_stale_check_marker_search_uses_the_same_limits(tmp_path: Path) -> None:
    m2 = tmp_path / "m2"
    vdir = m2 / "sk" / "ainet" / "core" / "skainet-backend" / "1.0"
    vdir.mkdir(parents=True)
    (vdir / "skainet-backend-1.0.klib").write_bytes(overlapping_zip(16, 4 * MIB))
    (vdir / "skainet-backend-1.0.jar").write_bytes(zeros_zip("x.bin", 64 * MIB))
    args = ["stale-check", "--group", "sk.ainet.core", "--artifact", "skainet-backend",
            "--version", "1.0", "--marker", "fresh", "--m2-root", str(m2),
            "--gradle-root", str(tmp_path / "g"), "--konan-root", str(tmp_path / "k")]
    code, out, rss = measured_skoracle(*args, "--max-unpacked", "16MiB")
    assert code == 1, out
    assert "STALE (unreadable:" in out and "exceed the 16777216-byte limit" in out
    assert rss < 250 * MIB
