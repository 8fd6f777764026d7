"""`run`'s legs as objects: the driver alone applies "a leg whose input is missing is
unavailable, unless the user asked for it (then exit 2)", to every leg alike, and never
runs a leg that lacks its input. The legs themselves are stubbed here (their own tests are
test_run*.py); what is checked is the driver's rule and the typed options it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import build_parser, main
from harness.legs import LEGS, LegContext, Missing, RunOptions
from harness.run import build_options, drive_leg


def _stub_legs(monkeypatch: pytest.MonkeyPatch, missing_leg: str) -> list[str]:
    """Every leg's run adds one passing row (and is recorded); `missing_leg` lacks its
    input. Returns the names of the legs that ran."""
    ran: list[str] = []
    for name, leg in LEGS.items():
        def run(ctx: LegContext, out, name: str = name) -> None:
            ran.append(name)
            out.add("stub", "pass")

        monkeypatch.setattr(leg, "run", run)
        monkeypatch.setattr(leg, "missing", (lambda options: Missing(
            "the input", "no input given: pass --input")) if name == missing_leg
            else (lambda options: None))
    return ran


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("name", list(LEGS))
def test_a_missing_input_is_unavailable_unless_asked_then_exit_2(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _stub_legs(monkeypatch, name)
    # not asked for: reported unavailable, the run passes, the leg never runs
    assert main(["run", "--out", str(tmp_path / "all")]) == 0
    legs = {lg["name"]: lg for lg in _report(tmp_path / "all")["legs"]}
    assert legs[name]["status"] == "unavailable"
    assert legs[name]["summary"] == "no input given: pass --input"
    assert legs[name]["rows"] == [{"case": "the input", "verdict": "unavailable",
                                   "max_ulp": None, "seconds": None,
                                   "detail": "no input given: pass --input"}]
    assert name not in ran and set(ran) == set(LEGS) - {name}
    assert all(lg["status"] == "pass" for n, lg in legs.items() if n != name)
    # asked for by name: the same section, and a setup error
    ran.clear()
    assert main(["run", "--only", name, "--out", str(tmp_path / "asked")]) == 2
    doc = _report(tmp_path / "asked")
    assert doc["exit_code"] == 2 and [lg["name"] for lg in doc["legs"]] == [name]
    assert doc["legs"][0]["status"] == "unavailable" and ran == []


def test_a_flag_of_the_leg_asks_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--classpath asks for the jvm leg without --only: missing input is then exit 2."""
    ran = _stub_legs(monkeypatch, "jvm")
    args = ["run", "--only", "footprint,jvm", "--classpath", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    assert main(["run", "--only", "footprint", "--classpath", str(tmp_path),
                 "--out", str(tmp_path / "r2")]) == 0  # the jvm leg not selected at all
    assert "jvm" not in ran


def _options(tmp_path: Path, *extra: str) -> RunOptions:
    return build_options(build_parser().parse_args(
        ["run", "--out", str(tmp_path / "report"), *extra]))


def test_the_jvm_leg_needs_a_classpath_and_its_flag_asks_for_it(tmp_path: Path) -> None:
    jvm = LEGS["jvm"]
    bare = _options(tmp_path)
    assert jvm.missing(bare) is not None and not jvm.asked_by_flag(bare)
    given = _options(tmp_path, "--classpath", str(tmp_path), "--lanes", "4")
    assert jvm.missing(given) is None and jvm.asked_by_flag(given)
    assert given.jvm.classpath == str(tmp_path) and given.jvm.lanes == ("4",)
    # every other leg needs nothing from the user and no flag asks for it
    for name, leg in LEGS.items():
        if name != "jvm":
            assert leg.missing(bare) is None and not leg.asked_by_flag(given), name


def test_options_are_typed_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.gguf").write_bytes(b"")
    (tmp_path / "lib.a").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    opts = _options(tmp_path, "--only", "gate,footprint", "--model", "m.gguf", "--klib",
                    "lib.a", "--kernels-archive", "lib.a", "--budget", "1GB", "--seed", "3")
    assert opts.legs == ("footprint", "gate") and opts.named == {"gate", "footprint"}
    assert opts.seed == 3 and opts.footprint.model == tmp_path / "m.gguf"
    assert opts.footprint.budget.available == 10**9 and not opts.footprint.board_budget
    assert opts.gate.klibs == (tmp_path / "lib.a",)
    assert opts.board.kernels_archive == tmp_path / "lib.a" and not opts.board.spec.real
    with pytest.raises(AttributeError):
        opts.seed = 4  # frozen: built once, read by every leg


def test_drive_leg_turns_an_input_error_into_an_error_section(tmp_path: Path) -> None:
    from harness.errors import HarnessError

    class Broken:
        name, title = "broken", "a leg whose input is bad"

        def asked_by_flag(self, options: RunOptions) -> bool:
            return False

        def missing(self, options: RunOptions) -> Missing | None:
            return None

        def run(self, ctx: LegContext, out) -> None:
            out.add("half", "pass")
            raise HarnessError("--thing x: not a thing")

    ctx = LegContext(_options(tmp_path), tmp_path, lambda text: None)
    outcome = drive_leg(Broken(), ctx, asked=False)
    assert outcome.setup_error and not outcome.interrupted
    assert outcome.section.status == "error"
    assert outcome.section.summary == "--thing x: not a thing"
