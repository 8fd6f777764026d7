"""Golden fixtures: deterministic GGUF case files a Kotlin (or any) test reads and compares
against exactly, and the verifier that recomputes them.

    skoracle fixtures --out DIR [--seed N] [--set small|full]
    skoracle fixtures --verify DIR [--verbose] [--json FILE]

The file format is documented in fixtures/README.md; the CLI is `harness.golden.cli`.
"""

from harness.golden.generate import generate_set
from harness.golden.spec import GENERATOR_VERSION
from harness.golden.verify import verify_set

__all__ = ["GENERATOR_VERSION", "generate_set", "verify_set"]
