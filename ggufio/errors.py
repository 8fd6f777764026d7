"""The one error type of the checked GGUF reader (kept apart so that it imports nothing)."""

from __future__ import annotations


class GGUFError(Exception):
    """A GGUF file that cannot be read as it claims: one line naming the file and the field.
    `exit_code` is 2 (an input error) for a command-line front end to use."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
