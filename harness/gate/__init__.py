"""Binary gate: no instruction the board lacks, no stale build.

- `encodings`: the A64 encoding table (mask/value rows) and the vectorised word classifier;
- `profiles`: CPU profiles as data (which table features a core has);
- `arfile`: a reader for `ar` static archives (GNU and BSD);
- `elfscan`: pyelftools-based scan of one AArch64 ELF file's code;
- `check`: walks ELF / ar / zip (klib, jar) / directories and produces the verdict.
"""

from harness.gate.check import ArtifactReport, Finding, check_artifact
from harness.gate.errors import GateError, NotAArch64
from harness.gate.profiles import DEFAULT_PROFILE, PROFILES, CpuProfile, profile

__all__ = [
    "ArtifactReport", "CpuProfile", "DEFAULT_PROFILE", "Finding", "GateError", "NotAArch64",
    "PROFILES", "check_artifact", "profile",
]
