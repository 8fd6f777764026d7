"""The suite's interrupt tests work when the suite itself runs with SIGINT ignored (a
background job, nohup, many CI runners): each child they interrupt gets SIGINT's default
back (tests/childsignals.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from childsignals import default_sigint

TESTS = Path(__file__).resolve().parent
PROBE = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"


def _child_has_python_sigint_handler(**popen: object) -> bool:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60, **popen)
    return out.stdout.strip() == "True"


def test_a_child_of_a_process_ignoring_sigint_gets_the_default_back() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `nohup pytest &`
    try:
        assert not _child_has_python_sigint_handler()  # the inherited disposition: ignored
        assert _child_has_python_sigint_handler(preexec_fn=default_sigint)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_every_test_that_sends_sigint_starts_its_child_with_the_default() -> None:
    senders = [p for p in TESTS.glob("test_*.py")
               if re.search(r"send_signal\((signal\.SIGINT|sig)\)", p.read_text())]
    assert {p.name for p in senders} >= {"test_board.py", "test_run.py", "test_run_outdir.py"}
    for path in senders:
        text = path.read_text()
        popens = len(re.findall(r"subprocess\.Popen\(", text))
        assert text.count("preexec_fn=default_sigint") >= popens, \
            f"{path.name}: a Popen without preexec_fn=default_sigint"
