"""One parity path for every target: a case runner per target (`harness.parity.runner`), one
judge (`harness.parity.judge`) and one verdict vocabulary (`harness.parity.verdict`) that the
CLI, `run`, the report and pytest share."""

from harness.parity.verdict import Verdict

__all__ = ["Verdict"]
