"""The harness's one error type: a message for the user and the exit code that goes with it.

The packages below the harness (oracle, ggufio, refmodel) import nothing from it and raise
their own types. A bad GGUF file (ggufio) or model input (refmodel) is an input error like
any of the harness's own: `INPUT_ERRORS` names the three for the places that turn one into a
line and an exit code, and `as_harness_error` re-raises the two as a HarnessError. The
oracle's OracleError (a ValueError for the Python API) is caught by name where it is meant."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ggufio.errors import GGUFError
from refmodel.errors import RefmodelError


class HarnessError(Exception):
    """A failure the user can act on. `exit_code` 2 = usage/input/setup error, 1 = a finding."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: The input errors of the layers below (exit 2 unless they say otherwise).
BELOW_ERRORS: tuple[type[Exception], ...] = (GGUFError, RefmodelError)
INPUT_ERRORS: tuple[type[Exception], ...] = (HarnessError, *BELOW_ERRORS)


def exit_code_of(exc: BaseException) -> int:
    """The exit code an error of INPUT_ERRORS asks for (2 when it names none)."""
    return int(getattr(exc, "exit_code", 2))


@contextmanager
def as_harness_error() -> Iterator[None]:
    """Re-raise an error of the layers below as a HarnessError with the same message and
    exit code, so that a harness caller (and the fuzzer counting error types) sees one type."""
    try:
        yield
    except BELOW_ERRORS as exc:
        raise HarnessError(str(exc), exit_code_of(exc)) from None
