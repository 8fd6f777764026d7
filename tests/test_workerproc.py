"""harness.workerproc: a worker, and everything the code it runs starts (a child, a
`setsid` double-forked daemon), ends with the client however the client ends (its own
stop(), or kill -9), and the worker's temp files go with it. The process tree is read from
/proc (tests/proctree.py), never trusted to the module under test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proctree import cmdline, descendants

ROOT = Path(__file__).resolve().parents[1]
#: the worker runs `sh -c SCRIPT` (target subprocess:call): a child, a setsid daemon that
#: double-forks away from the shell, then waits on a third sleep; unique durations name them
SCRIPT = "sleep 2801 & setsid sh -c 'sleep 2802 &' ; exec sleep 2803"
SLEEPS = ("sleep 2801", "sleep 2802", "sleep 2803")


def _ours(pids: set[int]) -> dict[int, str]:
    return {p: c for p in pids if (c := cmdline(p))}


def _wait_for(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_the_worker_and_what_it_started_and_says_what(tmp_path):
    from harness.workerproc import WorkerProcess

    scratch = tmp_path / "worker.log"
    scratch.write_text("temp")
    wp = WorkerProcess("subprocess:call", ["sh", "-c", SCRIPT], cleanup=[scratch])
    assert _wait_for(lambda: sum(any(s in c for s in SLEEPS)
                                 for c in _ours(descendants(wp.pid)).values()) == 3)
    started = descendants(wp.pid)
    killed = wp.stop(grace=0.2)
    assert sorted(s for s in SLEEPS if any(s in k for k in killed)) == sorted(SLEEPS), killed
    assert all(k.startswith("pid ") for k in killed)
    assert not _ours(started | {wp.pid}), "a process outlived stop()"
    assert scratch.exists()  # the client's to remove (it may still read it): only a dead
    #                          client's worker removes it


def test_kill_9_of_the_client_ends_the_worker_its_daemons_and_its_temp_files(tmp_path):
    scratch = tmp_path / "scratch-dir"
    scratch.mkdir()
    (scratch / "f").write_text("x")
    client = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from harness.workerproc import WorkerProcess\n"
         f"w = WorkerProcess('subprocess:call', ['sh', '-c', {SCRIPT!r}], "
         f"cleanup=[{str(scratch)!r}])\n"
         "print(w.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        worker = int(client.stdout.readline())
        assert _wait_for(lambda: sum(any(s in c for s in SLEEPS)
                                     for c in _ours(descendants(worker)).values()) == 3)
        tree = descendants(client.pid)
        assert worker in tree
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        assert _wait_for(lambda: not _ours(tree), 5), f"left running: {_ours(tree)}"
        assert _wait_for(lambda: not scratch.exists(), 5)  # removed within seconds
    finally:
        if client.poll() is None:
            client.kill()


@pytest.mark.llamacpp
def test_kill_9_of_llama_ref_leaves_no_worker_and_no_temp_dir(tmp_path):
    from harness.ggml import llamacpp
    from harness.golden import tinygemma as tg

    llamacpp.build(log=lambda m: None)
    model = tg.cached_model(tg.FUNCTIONGEMMA, "functiongemma-shaped")  # ~8 tok/s: slow
    client = subprocess.Popen(
        [sys.executable, "-m", "harness", "llama-ref", str(model), "--tokens", "2,105",
         "--n", "2000"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path)))
    try:
        def worker() -> int | None:
            return next((p for p in descendants(client.pid)
                         if "harness.ggml.llamaref:_worker_main" in cmdline(p)), None)

        assert _wait_for(lambda: worker() is not None, 60)
        time.sleep(3)  # decoding now
        scratch = list(tmp_path.glob(".llama-ref-*"))
        assert len(scratch) == 1
        tree = descendants(client.pid)
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        assert _wait_for(lambda: not _ours(tree), 10), f"left running: {_ours(tree)}"
        assert _wait_for(lambda: not scratch[0].exists(), 10)  # its cleaner runs after it
    finally:
        if client.poll() is None:
            client.kill()
