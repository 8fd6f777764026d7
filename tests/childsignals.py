"""Children a test means to interrupt get SIGINT's default disposition back.

A shell starts a background job (`cmd &`, nohup, many CI runners) with SIGINT ignored, and
an ignored signal stays ignored across fork and exec, so Python in the child never installs
its KeyboardInterrupt handler and a test's `send_signal(SIGINT)` does nothing. Every test
that interrupts a child starts it with `preexec_fn=default_sigint`.
"""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """preexec_fn: SIGINT back to SIG_DFL in the child before it execs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
