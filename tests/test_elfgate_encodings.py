"""The encoding table against the real assembler and disassembler (GNU binutils for aarch64).

- every row's example assembles (aarch64-linux-gnu-as) to a word that the table classifies
  as exactly that row;
- ~108 000 words (each row's value with random free bits, single-bit flips, and uniform
  random words) are disassembled by aarch64-linux-gnu-objdump and must agree with the table:
  a word of a named row disassembles to that row's mnemonic (or to nothing), every word
  objdump names with a tracked Advanced SIMD/system mnemonic is classified to that mnemonic,
  and every word with SVE/SME register operands falls in an SVE/SME row;
- in glibc's real libc.a, the SVE instructions objdump shows are exactly the gate's findings.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.gate import check_artifact, profile
from harness.gate.elfscan import open_elf
from harness.gate.encodings import ASSEMBLER_MARCH, ENCODINGS, FEATURES, classify, classify_word
from harness.gate.profiles import PROFILES, CpuProfile

OBJDUMP = "aarch64-linux-gnu-objdump"
LIBC_A = Path("/usr/aarch64-linux-gnu/lib/libc.a")
_LINE = re.compile(r"^\s*([0-9a-f]+):\s+([0-9a-f]{8})\s+(\S+)\s*(.*)$")
_SVE_OPERAND = re.compile(
    r"(?<![\w])(z\d{1,2}\.[bhsdq]|\{z\d|p\d{1,2}(?:/[zm]|\.[bhsd])|pn\d{1,2}|za)")


def _assemble(tmp_path: Path, lines: list[str]) -> np.ndarray:
    src = tmp_path / "rows.s"
    src.write_text(".text\n" + "\n".join(lines) + "\n")
    obj = tmp_path / "rows.o"
    subprocess.run(["aarch64-linux-gnu-as", f"-march={ASSEMBLER_MARCH}", str(src), "-o",
                    str(obj)], check=True, capture_output=True)
    text = open_elf(obj.read_bytes()).get_section_by_name(".text").data()
    return np.frombuffer(text, dtype="<u4").astype(np.uint32)


def _objdump_words(tmp_path: Path, words: np.ndarray) -> dict[int, tuple[str, str]]:
    blob = tmp_path / "words.bin"
    blob.write_bytes(words.astype("<u4").tobytes())
    out = subprocess.run([OBJDUMP, "-D", "-b", "binary", "-m", "aarch64", str(blob)],
                         check=True, capture_output=True, text=True).stdout
    decoded = {}
    for line in out.splitlines():
        m = _LINE.match(line)
        if m:
            decoded[int(m.group(1), 16) // 4] = (m.group(3), m.group(4))
    return decoded


def test_every_row_example_assembles_to_its_own_row(tmp_path: Path) -> None:
    words = _assemble(tmp_path, [e.example for e in ENCODINGS])
    assert len(words) == len(ENCODINGS)
    for enc, word in zip(ENCODINGS, words.tolist(), strict=True):
        assert enc.matches(word), f"{enc.example!r} -> {word:#010x} misses {enc.name}"
        assert classify_word(word) is enc, f"{enc.example!r} -> {classify_word(word)}"
    idx, rows = classify(words)
    assert idx.tolist() == list(range(len(ENCODINGS)))
    assert rows.tolist() == list(range(len(ENCODINGS)))


def test_reference_table_rows_are_in_the_table() -> None:
    """The rows of REFERENCE.md section 5, mask and value as written there."""
    reference = {
        (0xFFE0FC00, 0x4E80A400), (0xFFE0FC00, 0x6E80A400), (0xFFE0FC00, 0x4E80AC00),
        (0xBFE0FC00, 0x0E809C00), (0xBFC0F400, 0x0F80F000), (0xBFC0F400, 0x0F00F000),
        (0xFFE0FC00, 0x6E40EC00), (0xBFE0FC00, 0x2E40FC00), (0xBFC0F400, 0x0F40F000),
        (0xBFFFFC00, 0x0EA16800), (0xFFFFFC00, 0x1E634000),
        (0xFFE0FC00, 0x45009800), (0xFFE0FC00, 0x45C09800), (0xFFE0FC00, 0x45809800),
        (0xBFE0FC00, 0x0E809400), (0xBFE0FC00, 0x2E809400), (0xBFC0F400, 0x0F80E000),
        (0xBFC0F400, 0x2F80E000),
    }
    # The reference merges B/T and N/N2 forms behind a Q-bit-free mask; the table splits
    # them so each row has one mnemonic. Every reference row must be covered by table rows.
    for mask, value in reference:
        q_free = mask & 0x40000000 == 0
        for v in ([value, value | 0x40000000] if q_free else [value]):
            enc = classify_word(v)
            assert enc is not None and enc.matches(v), f"{mask:#x}/{value:#x}"
    # BFMLALB/T (vector / element), merged in the reference with mask 0xbfe0fc00 / 0xbfc0f400.
    for v in (0x2EC0FC00, 0x6EC0FC00, 0x0FC0F000, 0x4FC0F000):
        assert classify_word(v).features == ("BF16",)


def test_table_agrees_with_objdump(tmp_path: Path) -> None:
    rng = np.random.default_rng(2026)
    words: list[int] = []
    for enc in ENCODINGS:
        if enc.catch_all:
            continue
        free = ~enc.mask & 0xFFFFFFFF
        words.append(enc.value)
        words += [enc.value | (int(r) & free) for r in rng.integers(0, 1 << 32, 48)]
        words += [enc.value ^ (1 << b) for b in range(32)]  # every fixed bit matters
        words += [(enc.value | (int(r) & free)) ^ (1 << int(b))
                  for r, b in zip(rng.integers(0, 1 << 32, 64), rng.integers(0, 32, 64),
                                  strict=True)]
    words += [int(x) for x in rng.integers(0, 1 << 32, 100_000)]
    w = np.array(words, dtype=np.uint32)
    decoded = _objdump_words(tmp_path, w)
    assert len(decoded) == len(w)
    idx, rows = classify(w)
    row_of = dict(zip(idx.tolist(), rows.tolist(), strict=True))
    tracked = {m for e in ENCODINGS if e.group == "simd" for m in e.mnemonics}
    wrong_name, missed, sve_outside = [], [], []
    for i, (mnemonic, operands) in decoded.items():
        enc = ENCODINGS[row_of[i]] if i in row_of else None
        undefined = mnemonic.startswith(".inst") or "undefined" in operands
        if enc is not None and not enc.catch_all and not undefined:
            if mnemonic not in enc.mnemonics:
                wrong_name.append((hex(int(w[i])), mnemonic, operands, enc.name))
        if mnemonic in tracked and not (enc is not None and mnemonic in enc.mnemonics):
            if enc is None or enc.group == "simd":
                missed.append((hex(int(w[i])), mnemonic, operands))
        if not undefined and _SVE_OPERAND.search(operands):
            if enc is None or not {"SVE", "SVE2", "SME"} & set(enc.features):
                sve_outside.append((hex(int(w[i])), mnemonic, operands))
    assert wrong_name == []
    assert missed == []
    assert sve_outside == []
    # The random words did exercise the two encoding groups.
    groups = {ENCODINGS[r].name for r in rows.tolist()}
    assert any("SVE encoding group" in g for g in groups)
    assert any("SME encoding group" in g for g in groups)


def test_vectorised_classifier_equals_scalar_rule() -> None:
    rng = np.random.default_rng(5)
    w = rng.integers(0, 1 << 32, 300_000, dtype=np.uint64).astype(np.uint32)
    w[::7] = [e.value for e in ENCODINGS] * (len(w[::7]) // len(ENCODINGS)) + [
        e.value for e in ENCODINGS][: len(w[::7]) % len(ENCODINGS)]
    idx, rows = classify(w)
    got = dict(zip(idx.tolist(), rows.tolist(), strict=True))
    for i in range(0, len(w), 3):
        enc = classify_word(int(w[i]))
        assert (ENCODINGS[got[i]] if i in got else None) is enc
    with pytest.raises(TypeError):
        classify(w.astype(np.int64))


def test_profiles_classify_every_feature() -> None:
    for p in PROFILES.values():
        assert p.present | p.absent == set(FEATURES)
    a55 = profile("cortex-a55")
    assert a55.present == {"DotProd"}
    assert a55.absent == {"I8MM", "BF16", "SVE", "SVE2", "SME"}
    assert profile("cortex-a76").absent == a55.absent
    n2 = profile("neoverse-n2")
    assert {"I8MM", "BF16", "SVE", "SVE2"} <= n2.present and "SME" in n2.absent
    with pytest.raises(ValueError, match="not classified"):
        CpuProfile("bad", "x", frozenset({"DotProd"}), frozenset({"I8MM"}))
    with pytest.raises(ValueError, match="SVE without SVE2"):
        CpuProfile("v1", "x", frozenset({"DotProd", "I8MM", "BF16", "SVE"}),
                   frozenset({"SVE2", "SME"}))
    with pytest.raises(KeyError, match="known"):
        profile("cortex-a53")


def test_libc_archive_sve_findings_equal_objdump() -> None:
    """glibc's libc.a: no I8MM/BF16 anywhere; its SVE (A64FX / SVE memcpy, memset ifunc
    variants) is found at exactly the offsets where objdump shows SVE register operands."""
    rep = check_artifact(LIBC_A, profile("cortex-a55"), strict=True)  # every raw finding
    assert rep.error is None and rep.elf_files > 1500
    feats = {f for x in rep.findings for f in x.features}
    assert feats == {"SVE"}
    assert not any({"I8MM", "BF16"} & set(x.features) for x in rep.findings)
    ours = {(x.path.split("!")[-1], x.section, x.offset) for x in rep.findings}
    out = subprocess.run([OBJDUMP, "-d", str(LIBC_A)], check=True, capture_output=True,
                         text=True).stdout
    theirs, member, section = set(), None, None
    for line in out.splitlines():
        if line.endswith("file format elf64-littleaarch64"):
            member = line.split(":")[0]
        elif line.startswith("Disassembly of section "):
            section = line[len("Disassembly of section "):].rstrip(":")
        else:
            m = _LINE.match(line)
            if m and _SVE_OPERAND.search(m.group(4)):
                theirs.add((member, section, int(m.group(1), 16)))
    assert theirs, "objdump shows SVE in libc.a"
    assert theirs <= ours
    # The rest are SVE instructions without vector/predicate operands (CNTB, INCB, RDVL...).
    for extra in ours - theirs:
        f = next(x for x in rep.findings
                 if (x.path.split("!")[-1], x.section, x.offset) == extra)
        assert f.instruction.startswith(("CNT", "INC", "ADDVL", "SVE instruction")), f.message
    assert {p.split("!")[-1] for p, _, _ in ours} == {
        "memcpy_a64fx.o", "memset_a64fx.o", "memcpy_sve.o"}
    assert rep.counts == {}  # glibc has no DotProd code
