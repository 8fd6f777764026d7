"""The pytest plugin's fixtures, used the way a SKaiNET developer's tests would use them."""

from __future__ import annotations

import numpy as np
import pytest

from harness.board.build import fixture_program
from harness.board.target import ILLEGAL_INSTRUCTION

pytestmark = pytest.mark.board


def test_board_fixture_runs_an_aarch64_program_and_fetches_its_output(board):
    data = np.arange(4096, dtype=np.uint8).tobytes()
    res = board.run(fixture_program("roundtrip"), args=["in.bin", "out.bin"],
                    inputs={"in.bin": data}, outputs=["out.bin"], timeout=60)
    assert res.ok, res.summary()
    assert res.outputs["out.bin"] == bytes(b ^ 0x5A for b in data)
    assert res.peak_rss_kb and res.timings["total"] > 0


def test_board_fixture_reports_sigill_for_an_i8mm_build(board):
    res = board.run(fixture_program("i8mm", march="armv8.2-a+i8mm"), timeout=60)
    assert res.exit_status == 132 and res.reason == ILLEGAL_INSTRUCTION


def test_plugin_options_are_registered(pytestconfig):
    assert pytestconfig.getoption("--board") is None
    assert pytestconfig.getoption("--board-profile") is None
