"""Session fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from harness.cref import CRef


@pytest.fixture(scope="session")
def cref() -> CRef:
    """ggml's C reference library (built and cached by `python3 -m harness.cref build`)."""
    return CRef.load()
