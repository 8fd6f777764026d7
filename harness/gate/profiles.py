"""CPU profiles as data: which table features each core has.

Every profile classifies every feature in `encodings.FEATURES` as present or absent, so a
feature added to the table cannot slip through a profile unclassified. `counted` names the
present features whose instruction count the report prints (proof that a fast path exists).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.gate.encodings import ENCODINGS, FEATURES, Encoding


@dataclass(frozen=True)
class CpuProfile:
    """One core: the table features it implements and the ones it lacks."""

    name: str
    arch: str
    present: frozenset[str]
    absent: frozenset[str]
    counted: tuple[str, ...] = ("DotProd",)
    note: str = ""

    def __post_init__(self) -> None:
        both = self.present & self.absent
        if both:
            raise ValueError(f"{self.name}: {sorted(both)} both present and absent")
        missing = set(FEATURES) - self.present - self.absent
        if missing:
            raise ValueError(f"{self.name}: features not classified: {sorted(missing)}")
        # The SVE encoding group is one catch-all row labelled SVE; it cannot tell SVE2
        # instructions from SVE ones, so a core with SVE but without SVE2 is not expressible.
        if "SVE" in self.present and "SVE2" in self.absent:
            raise ValueError(f"{self.name}: SVE without SVE2 cannot be checked by this table")

    def forbids(self, enc: Encoding) -> bool:
        """True if the core lacks any feature the encoding needs (executing it: SIGILL)."""
        return any(f in self.absent for f in enc.features)


_A55_LIKE_PRESENT = frozenset({"DotProd"})
_A55_LIKE_ABSENT = frozenset({"I8MM", "BF16", "SVE", "SVE2", "SME"})

PROFILES: dict[str, CpuProfile] = {
    p.name: p
    for p in (
        CpuProfile(
            "cortex-a55", "Armv8.2-A", _A55_LIKE_PRESENT, _A55_LIKE_ABSENT,
            note="the Astra Machina SL2610 cores: NEON, fp16, dotprod; no i8mm/bf16/SVE/SME",
        ),
        CpuProfile(
            "cortex-a76", "Armv8.2-A", _A55_LIKE_PRESENT, _A55_LIKE_ABSENT,
            note="same table features as cortex-a55; `qemu-aarch64 -cpu cortex-a76` models it",
        ),
        CpuProfile(
            "neoverse-n2", "Armv9.0-A",
            frozenset({"DotProd", "I8MM", "BF16", "SVE", "SVE2"}), frozenset({"SME"}),
            counted=("DotProd", "I8MM", "BF16", "SVE"),
            note="Armv9.0-A server core: i8mm, bf16, SVE2; no SME (an Armv9.2 option)",
        ),
    )
}

DEFAULT_PROFILE = "cortex-a55"


def profile(name: str) -> CpuProfile:
    """The profile called `name`; KeyError lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown CPU profile {name!r}; known: {', '.join(PROFILES)}") from None


def forbidden_rows(p: CpuProfile) -> tuple[Encoding, ...]:
    """The table rows the profile rejects."""
    return tuple(e for e in ENCODINGS if p.forbids(e))


#: Functions of a STATIC glibc/libgcc link that hold SVE code but only run after a runtime
#: CPU check (glibc's ifunc memcpy/memmove/memset variants for SVE machines, libgcc's
#: unwinder reading the SVE vector length while unwinding SVE frames). A program linked
#: with `-static` always carries them; they never execute on a Cortex-A55. Pass these as
#: `--allow-function` globs to gate such a program; a SKaiNET .kexe links glibc dynamically
#: and needs none of them.
STATIC_GLIBC_DISPATCHED: tuple[str, ...] = (
    "__memcpy_a64fx", "__memmove_a64fx", "__memset_a64fx",
    "__memcpy_sve", "__memmove_sve",
    "_Unwind_GetGR", "execute_stack_op", "uw_update_context", "uw_update_context_1",
)
