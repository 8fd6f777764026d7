"""The harness's one error type: a message for the user and the exit code that goes with it."""

from __future__ import annotations


class HarnessError(Exception):
    """A failure the user can act on. `exit_code` 2 = usage/input/setup error, 1 = a finding."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
