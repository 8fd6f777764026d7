"""pytest plugin (entry point `pytest11: skainet`): session fixtures over the harness targets.

Any project's tests can use them once skainet-oracle is installed:
- `cref`: ggml's C reference library (built on first use, cached).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cref: needs ggml's C reference library (built on demand)")


@pytest.fixture(scope="session")
def cref():
    """ggml's C reference library through ctypes (`harness.cref.CRef`)."""
    from harness.cref import CRef

    return CRef.load()
