"""skainet-oracle harness: drives real SKaiNET targets (JVM, board, local C) against the oracle."""

from harness.errors import HarnessError

__all__ = ["HarnessError"]
