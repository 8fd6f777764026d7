"""The reference model's one error type (kept apart so that it imports nothing)."""

from __future__ import annotations


class RefmodelError(Exception):
    """Input the reference cannot run: a model file, option or token list it refuses, in one
    line naming the culprit. `exit_code` 2 = an input error, 1 = a finding (for a front end)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
