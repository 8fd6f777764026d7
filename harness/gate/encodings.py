"""A64 encodings the gate recognises, as data: `(word & mask) == value` per row.

Rows are tried in table order and the first match names the word, so specific rows come
before the two catch-all rows that claim whole encoding groups of the Arm ARM's top-level
A64 decode table (op0 = bit 31, op1 = bits 28:25):

- op1 = 0b0010: the SVE/SVE2 group (every SVE instruction, including the streaming forms);
- op0 = 1, op1 = 0b0000: the SME group (outer products, ZA loads/stores, ...).

Named rows exist for the Advanced SIMD forms of I8MM, BF16 and DotProd (the board question)
and for the SVE/SME instructions a compiler commonly emits, so a finding can name the
instruction; inside the SVE group a name is a courtesy, the verdict comes from the group.
Every row carries an `example` that tests assemble with aarch64-linux-gnu-as and must
decode to this row, and `mnemonics` that objdump must print for words the row matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Every feature name a row can carry; CPU profiles must classify each one.
FEATURES: tuple[str, ...] = ("DotProd", "I8MM", "BF16", "SVE", "SVE2", "SME")

#: Assembler -march that accepts every example in the table.
ASSEMBLER_MARCH = "armv9.2-a+sve2+i8mm+bf16+sme"


@dataclass(frozen=True)
class Encoding:
    """One recognised encoding: words with `word & mask == value` are this instruction."""

    name: str  # what a finding prints, e.g. "SMMLA (vector)"
    features: tuple[str, ...]  # all must be present on the CPU for the word to be legal
    mask: int
    value: int
    example: str  # assembly text that encodes to a word of this row
    mnemonics: tuple[str, ...] = ()  # objdump's spelling(s); empty for a catch-all group
    group: str = "simd"  # "simd" (Advanced SIMD / FP / system), "sve" or "sme" space

    def __post_init__(self) -> None:
        if self.value & ~self.mask & 0xFFFFFFFF:
            raise ValueError(f"{self.name}: value has bits outside the mask")
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"{self.name}: unknown feature(s) {sorted(unknown)}")

    @property
    def catch_all(self) -> bool:
        return not self.mnemonics

    def matches(self, word: int) -> bool:
        return (word & self.mask) == self.value


def _rows() -> tuple[Encoding, ...]:
    E = Encoding
    simd, sve, sme = "simd", "sve", "sme"
    return (
        # --- DotProd (Armv8.2 optional, Armv8.4 mandatory): allowed on Cortex-A55/A76 ---
        E("SDOT (vector)", ("DotProd",), 0xBFE0FC00, 0x0E809400,
          "sdot v0.4s, v1.16b, v2.16b", ("sdot",), simd),
        E("UDOT (vector)", ("DotProd",), 0xBFE0FC00, 0x2E809400,
          "udot v0.4s, v1.16b, v2.16b", ("udot",), simd),
        E("SDOT (by element)", ("DotProd",), 0xBFC0F400, 0x0F80E000,
          "sdot v0.4s, v1.16b, v2.4b[3]", ("sdot",), simd),
        E("UDOT (by element)", ("DotProd",), 0xBFC0F400, 0x2F80E000,
          "udot v0.4s, v1.16b, v2.4b[3]", ("udot",), simd),
        # --- I8MM (Advanced SIMD) ---
        E("SMMLA (vector)", ("I8MM",), 0xFFE0FC00, 0x4E80A400,
          "smmla v0.4s, v1.16b, v2.16b", ("smmla",), simd),
        E("UMMLA (vector)", ("I8MM",), 0xFFE0FC00, 0x6E80A400,
          "ummla v0.4s, v1.16b, v2.16b", ("ummla",), simd),
        E("USMMLA (vector)", ("I8MM",), 0xFFE0FC00, 0x4E80AC00,
          "usmmla v0.4s, v1.16b, v2.16b", ("usmmla",), simd),
        E("USDOT (vector)", ("I8MM",), 0xBFE0FC00, 0x0E809C00,
          "usdot v0.2s, v1.8b, v2.8b", ("usdot",), simd),
        E("USDOT (by element)", ("I8MM",), 0xBFC0F400, 0x0F80F000,
          "usdot v0.4s, v1.16b, v2.4b[3]", ("usdot",), simd),
        E("SUDOT (by element)", ("I8MM",), 0xBFC0F400, 0x0F00F000,
          "sudot v0.4s, v1.16b, v2.4b[3]", ("sudot",), simd),
        # --- BF16 (Advanced SIMD and scalar FP) ---
        E("BFMMLA (vector)", ("BF16",), 0xFFE0FC00, 0x6E40EC00,
          "bfmmla v0.4s, v1.8h, v2.8h", ("bfmmla",), simd),
        E("BFDOT (vector)", ("BF16",), 0xBFE0FC00, 0x2E40FC00,
          "bfdot v0.4s, v1.8h, v2.8h", ("bfdot",), simd),
        E("BFDOT (by element)", ("BF16",), 0xBFC0F400, 0x0F40F000,
          "bfdot v0.2s, v1.4h, v2.2h[1]", ("bfdot",), simd),
        E("BFMLALB (vector)", ("BF16",), 0xFFE0FC00, 0x2EC0FC00,
          "bfmlalb v0.4s, v1.8h, v2.8h", ("bfmlalb",), simd),
        E("BFMLALT (vector)", ("BF16",), 0xFFE0FC00, 0x6EC0FC00,
          "bfmlalt v0.4s, v1.8h, v2.8h", ("bfmlalt",), simd),
        E("BFMLALB (by element)", ("BF16",), 0xFFC0F400, 0x0FC0F000,
          "bfmlalb v0.4s, v1.8h, v2.h[7]", ("bfmlalb",), simd),
        E("BFMLALT (by element)", ("BF16",), 0xFFC0F400, 0x4FC0F000,
          "bfmlalt v0.4s, v1.8h, v2.h[7]", ("bfmlalt",), simd),
        E("BFCVTN", ("BF16",), 0xFFFFFC00, 0x0EA16800,
          "bfcvtn v0.4h, v1.4s", ("bfcvtn",), simd),
        E("BFCVTN2", ("BF16",), 0xFFFFFC00, 0x4EA16800,
          "bfcvtn2 v0.8h, v1.4s", ("bfcvtn2",), simd),
        E("BFCVT (scalar)", ("BF16",), 0xFFFFFC00, 0x1E634000,
          "bfcvt h0, s1", ("bfcvt",), simd),
        # --- SME, outside the SME group: SMSTART/SMSTOP are MSR SVCR* immediates ---
        E("SMSTART", ("SME",), 0xFFFFFFFF, 0xD503477F, "smstart", ("smstart",), simd),
        E("SMSTART SM", ("SME",), 0xFFFFFFFF, 0xD503437F, "smstart sm", ("smstart",), simd),
        E("SMSTART ZA", ("SME",), 0xFFFFFFFF, 0xD503457F, "smstart za", ("smstart",), simd),
        E("SMSTOP", ("SME",), 0xFFFFFFFF, 0xD503467F, "smstop", ("smstop",), simd),
        E("SMSTOP SM", ("SME",), 0xFFFFFFFF, 0xD503427F, "smstop sm", ("smstop",), simd),
        E("SMSTOP ZA", ("SME",), 0xFFFFFFFF, 0xD503447F, "smstop za", ("smstop",), simd),
        # --- SME instructions that live in the SVE group ---
        E("RDSVL", ("SME",), 0xFFFFF800, 0x04BF5800, "rdsvl x0, #1", ("rdsvl",), sve),
        E("ADDSVL", ("SME",), 0xFFE0F800, 0x04205800, "addsvl sp, sp, #1", ("addsvl",), sve),
        E("ADDSPL", ("SME",), 0xFFE0F800, 0x04605800, "addspl x0, x1, #-1", ("addspl",), sve),
        # --- SVE with I8MM / BF16 ---
        E("SMMLA (SVE)", ("SVE", "I8MM"), 0xFFE0FC00, 0x45009800,
          "smmla z0.s, z1.b, z2.b", ("smmla",), sve),
        E("UMMLA (SVE)", ("SVE", "I8MM"), 0xFFE0FC00, 0x45C09800,
          "ummla z0.s, z1.b, z2.b", ("ummla",), sve),
        E("USMMLA (SVE)", ("SVE", "I8MM"), 0xFFE0FC00, 0x45809800,
          "usmmla z0.s, z1.b, z2.b", ("usmmla",), sve),
        E("USDOT (SVE vectors)", ("SVE", "I8MM"), 0xFFE0FC00, 0x44807800,
          "usdot z0.s, z1.b, z2.b", ("usdot",), sve),
        E("USDOT (SVE indexed)", ("SVE", "I8MM"), 0xFFE0FC00, 0x44A01800,
          "usdot z0.s, z1.b, z2.b[3]", ("usdot",), sve),
        E("SUDOT (SVE indexed)", ("SVE", "I8MM"), 0xFFE0FC00, 0x44A01C00,
          "sudot z0.s, z1.b, z2.b[3]", ("sudot",), sve),
        E("BFDOT (SVE vectors)", ("SVE", "BF16"), 0xFFE0FC00, 0x64608000,
          "bfdot z0.s, z1.h, z2.h", ("bfdot",), sve),
        E("BFMMLA (SVE)", ("SVE", "BF16"), 0xFFE0FC00, 0x6460E400,
          "bfmmla z0.s, z1.h, z2.h", ("bfmmla",), sve),
        E("BFMLALB (SVE vectors)", ("SVE", "BF16"), 0xFFE0FC00, 0x64E08000,
          "bfmlalb z0.s, z1.h, z2.h", ("bfmlalb",), sve),
        E("BFMLALT (SVE vectors)", ("SVE", "BF16"), 0xFFE0FC00, 0x64E08400,
          "bfmlalt z0.s, z1.h, z2.h", ("bfmlalt",), sve),
        E("BFCVT (SVE)", ("SVE", "BF16"), 0xFFFFE000, 0x658AA000,
          "bfcvt z0.h, p0/m, z1.s", ("bfcvt",), sve),
        # --- SVE2 ---
        E("TBL (SVE2, two registers)", ("SVE2",), 0xFF20FC00, 0x05202800,
          "tbl z0.b, {z1.b, z2.b}, z3.b", ("tbl",), sve),
        E("SQRDMLAH (SVE2 vectors)", ("SVE2",), 0xFF20FC00, 0x44007000,
          "sqrdmlah z0.s, z1.s, z2.s", ("sqrdmlah",), sve),
        # --- SVE instructions gcc emits for -march=armv8.2-a+sve loops ---
        E("SDOT (SVE vectors)", ("SVE",), 0xFFA0FC00, 0x44800000,
          "sdot z0.s, z1.b, z2.b", ("sdot",), sve),
        E("UDOT (SVE vectors)", ("SVE",), 0xFFA0FC00, 0x44800400,
          "udot z0.s, z1.b, z2.b", ("udot",), sve),
        E("WHILELO (SVE)", ("SVE",), 0xFF20EC10, 0x25200C00,
          "whilelo p0.s, x0, x1", ("whilelo",), sve),
        E("PTRUE (SVE)", ("SVE",), 0xFF3FFC10, 0x2518E000, "ptrue p0.s", ("ptrue",), sve),
        E("LD1B (SVE, scalar+scalar)", ("SVE",), 0xFF80E000, 0xA4004000,
          "ld1b {z0.b}, p0/z, [x0, x1]", ("ld1b",), sve),
        E("LD1W (SVE, scalar+scalar)", ("SVE",), 0xFFC0E000, 0xA5404000,
          "ld1w {z0.s}, p0/z, [x0, x1, lsl #2]", ("ld1w",), sve),
        E("LD1D (SVE, scalar+scalar)", ("SVE",), 0xFFE0E000, 0xA5E04000,
          "ld1d {z0.d}, p0/z, [x0, x1, lsl #3]", ("ld1d",), sve),
        E("ST1B (SVE, scalar+scalar)", ("SVE",), 0xFF80E000, 0xE4004000,
          "st1b {z0.b}, p0, [x0, x1]", ("st1b",), sve),
        E("ST1W (SVE, scalar+scalar)", ("SVE",), 0xFFC0E000, 0xE5404000,
          "st1w {z0.s}, p0, [x0, x1, lsl #2]", ("st1w",), sve),
        E("ST1D (SVE, scalar+scalar)", ("SVE",), 0xFFE0E000, 0xE5E04000,
          "st1d {z0.d}, p0, [x0, x1, lsl #3]", ("st1d",), sve),
        E("FMLA (SVE vectors, predicated)", ("SVE",), 0xFF20E000, 0x65200000,
          "fmla z0.s, p0/m, z1.s, z2.s", ("fmla",), sve),
        E("ADDVL (SVE)", ("SVE",), 0xFFE0F800, 0x04205000, "addvl x0, x1, #1", ("addvl",), sve),
        E("CNTB/CNTH/CNTW/CNTD (SVE)", ("SVE",), 0xFF30FC00, 0x0420E000,
          "cntw x0", ("cntb", "cnth", "cntw", "cntd"), sve),
        E("INCB/INCH/INCW/INCD (SVE, scalar)", ("SVE",), 0xFF30FC00, 0x0430E000,
          "incw x0", ("incb", "inch", "incw", "incd"), sve),
        # --- whole encoding groups (Arm ARM A64 top-level decode) ---
        E("SME instruction (SME encoding group)", ("SME",), 0x9E000000, 0x80000000,
          "fmopa za0.s, p0/m, p1/m, z0.s, z1.s", (), sme),
        E("SVE instruction (SVE encoding group)", ("SVE",), 0x1E000000, 0x04000000,
          "mad z0.b, p1/m, z1.b, z2.b", (), sve),
    )


#: The table, in priority order (first match wins).
ENCODINGS: tuple[Encoding, ...] = _rows()

_MASKS = np.array([e.mask for e in ENCODINGS], dtype=np.uint32)
_VALUES = np.array([e.value for e in ENCODINGS], dtype=np.uint32)

def _top_half_filter() -> np.ndarray:
    """A 65536-entry table: can a word whose top 16 bits are t match any row?"""
    t = np.arange(1 << 16, dtype=np.uint32)
    table = np.zeros(1 << 16, dtype=bool)
    for mask, value in zip(_MASKS >> 16, _VALUES >> 16, strict=True):
        table |= (t & mask) == value
    return table


#: Pre-filter on the top half-word: most real code words are rejected with one table lookup.
_TOP_HALF = _top_half_filter()


def classify(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word indices that match some row and, for each, the index of the first matching row.

    `words` is a uint32 array (decoded little-endian). Each word is first looked up by its
    top 16 bits in a 64 Ki-entry table that says whether any row can match; the few
    candidates are then tested against every row at once (a candidates x rows mask/compare),
    and the first matching row in table order wins.
    """
    if words.dtype != np.uint32:
        raise TypeError("classify() needs a uint32 array")
    cand = np.flatnonzero(_TOP_HALF[words >> 16])
    if cand.size == 0:
        return cand.astype(np.int64), np.empty(0, dtype=np.int32)
    idx_parts, row_parts = [], []
    step = 1 << 14
    for lo in range(0, cand.size, step):
        sub = cand[lo : lo + step]
        match = (words[sub, None] & _MASKS) == _VALUES
        has = match.any(axis=1)
        idx_parts.append(sub[has])
        row_parts.append(match[has].argmax(axis=1).astype(np.int32))  # first True = priority
    return np.concatenate(idx_parts).astype(np.int64), np.concatenate(row_parts)


def classify_word(word: int) -> Encoding | None:
    """The first row matching one word (scalar path, for messages and tests)."""
    for enc in ENCODINGS:
        if enc.matches(word):
            return enc
    return None
