"""Board sources (harness.board.source): one factory for `run`, `board ...` and pytest."""

from __future__ import annotations

import pytest

from harness.board.profile import BoardProfile, write_profile
from harness.board.source import IN_A_BOX, BoardSpec, open_board
from harness.errors import HarnessError


def test_spec_overrides_profile_file_and_options_override_both(tmp_path):
    path = tmp_path / "b.toml"
    write_profile(path, BoardProfile(host="10.0.0.1", user="pi", port=22, lock_wait=5.0))
    spec = BoardSpec(str(path), "dev@10.1.1.1:2200", {"lock_wait": 9.0})
    with open_board(spec, on_start=lambda: pytest.fail("no board-in-a-box for a real board")) \
            as prof:
        assert (prof.user, prof.host, prof.port, prof.lock_wait) == \
            ("dev", "10.1.1.1", 2200, 9.0)
    assert spec.real
    assert spec.where(prof) == "board 10.1.1.1"


def test_no_board_is_a_usage_error_unless_the_box_is_allowed():
    spec = BoardSpec(in_a_box_when_unset=False)
    assert not spec.real
    with pytest.raises(HarnessError, match="no board given"), open_board(spec):
        pass


def test_user_at_host_alone_is_a_source():
    with open_board(BoardSpec(board="root@192.168.7.2")) as prof:
        assert (prof.user, prof.host, prof.source) == ("root", "192.168.7.2", "--board")


def test_where_names_the_board_in_a_box():
    assert BoardSpec().where(BoardProfile(host="127.0.0.1")) == IN_A_BOX
