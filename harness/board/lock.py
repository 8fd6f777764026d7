"""The board lock and its keeper: one run at a time shares the board's memory, and nothing of
a run outlives its client.

A lock directory created with `mkdir` (atomic) is held for as long as one exec channel,
the keeper, stays open; when its stdin ends (the client closes it, or the connection drops
because the client was killed) the keeper ends the run's processes, removes the run
directories registered with it and frees the lock. Layout under the lock directory:
`owner` = token, holder, keeper PID + start time + its `cat` PID; `procs` = the running
program's and watchdog's process groups; `cleanup` = run directories to remove.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import paramiko

from harness.board.profile import BoardProfile
from harness.board.runscript import tagged_sh
from harness.board.transport import (
    CHANNEL_ERRORS,
    close_quietly,
    drain_stderr,
    lost,
    read_line,
)
from harness.errors import HarnessError

q = shlex.quote


class LockShell(Protocol):
    """What the lock needs of a connected board."""

    where: str
    name: str
    profile: BoardProfile
    log: Callable[[str], None]

    def open_channel(self, cmd: str) -> paramiko.Channel: ...


def lock_sh(remote_dir: str, lock_dir: str) -> str:
    """Shell functions the lock scripts share (BusyBox sh).

    `pst PID`: the process's start time (field 22 of /proc/PID/stat, after the command
    name, which may hold spaces), empty when it is gone; a PID with another start time
    is a reused one. `endrun`: SIGKILL every process group recorded in the lock's `procs`
    (`PID START g|p` lines, written by the run wrapper), unless the PID now names a newer
    process: a group's number is not reused while any member lives, so a group whose
    leader is gone is still ours. `droplock`: remove the run directories the holder
    registered (only under runs/), then the lock. Their variables start with `_` so
    they do not clobber the caller's.
    """
    runs = q(f"{remote_dir}/runs/")
    return (
        'pst() { l=; { read -r l < /proc/$1/stat; } 2>/dev/null; '
        'set -- ${l##*") "}; echo "${20}"; }\n'
        'endrun() { [ -f "$L/procs" ] || return 0; while read -r _i _t _k; do '
        '[ -n "$_i" ] || continue; if [ "$_k" = e ]; then '
        f'for _x in $({tagged_sh("$_i")}); do kill -KILL $_x 2>/dev/null; done; continue; '
        'fi; _c=$(pst $_i); '
        'if [ -z "$_c" ] || [ "$_c" = "$_t" ]; then '
        'if [ "$_k" = g ]; then kill -KILL -$_i; else kill -KILL $_i; fi 2>/dev/null '
        '&& echo "ENDED $_i"; fi; done < "$L/procs"; }\n'
        'droplock() { endrun; [ -f "$L/cleanup" ] && while read -r _d; do case $_d in '
        f'{runs}?*) rm -rf "$_d";; esac; done < "$L/cleanup"; rm -rf "$L"; }}\n'
        f"L={q(lock_dir)}\n"
    )


def keeper_script(remote_dir: str, lock_dir: str, token: str, info: str) -> str:
    """The board side of a held lock: one channel that lives as long as the lock.

    Takes the lock (`mkdir`, atomic) or, when the holder's keeper process is gone (its
    client died and nothing cleaned up), takes it over under a second `mkdir` mutex and
    ends that run's processes first. Then it records itself in `owner` (token, who,
    keeper PID + start time) and copies its stdin into `cleanup` (run directories the
    client registers) until the stdin ends: the client closing it, or the connection
    dropping when the client is killed. Either way (or on HUP/TERM) it then ends the run's
    recorded processes, removes the registered run directories and frees the lock. Its
    output goes to /dev/null once it has answered, so a write cannot kill it (SIGPIPE)
    halfway through that cleanup.
    """
    return (
        lock_sh(remote_dir, lock_dir)
        + 'rel() { t=; { read -r t < "$L/owner"; } 2>/dev/null; '
        f'[ "$t" = {token} ] && droplock; }}\n'
        "took=\n"
        'if ! mkdir "$L" 2>/dev/null; then\n'
        ' if mkdir "$L.takeover" 2>/dev/null; then\n'
        '  t=; h=; k=; ks=; { read -r t; read -r h; read -r k ks c; } < "$L/owner" '
        "2>/dev/null\n"
        '  if [ -n "$k" ] && [ "$(pst $k)" != "$ks" ]; then\n'
        '   n=$(droplock | wc -l); took="$h|$n"; mkdir "$L" 2>/dev/null || took=\n'
        "  fi\n"
        '  rmdir "$L.takeover"\n'
        " fi\n"
        ' [ -n "$took" ] || { echo BUSY; sed -n 2p "$L/owner" 2>/dev/null; exit 0; }\n'
        "fi\n"
        "exec 3<&0\n"
        'cat <&3 >> "$L/cleanup" & c=$!\n'
        "exec 3<&-\n"
        f'printf \'%s\\n\' {token} {q(info)} "$$ $(pst $$) $c" > "$L/owner"\n'
        "trap 'kill $c 2>/dev/null; rel; exit 0' HUP INT TERM\n"
        'echo "GOT $took"\n'
        "exec >/dev/null 2>&1\n"  # the client may be gone when it cleans up: no SIGPIPE
        "wait $c\n"
        "rel\n"
    )


def unlock_script(remote_dir: str, lock_dir: str) -> str:
    """Remove the lock whoever holds it: HELD <holder>, then ENDED <pgid> per group."""
    return (
        lock_sh(remote_dir, lock_dir)
        + '[ -d "$L" ] || exit 0\n'
        't=; h=; k=; ks=; c=; { read -r t; read -r h; read -r k ks c; } < "$L/owner" '
        "2>/dev/null\n"
        'echo "HELD ${h:-an unknown holder}"\n'
        "droplock\n"
        '[ -n "$k" ] && [ "$(pst $k)" = "$ks" ] && kill -TERM $k $c 2>/dev/null\n'
        "true\n"
    )


def holder_info(what: str) -> str:
    """Who holds the lock, as recorded in its `owner` file."""
    return (f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}" + (f" running {what}" if what else ""))


def _try_once(sh: LockShell, script: str) -> tuple[paramiko.Channel | None, str, str]:
    """One attempt: (the keeper channel, its GOT line, "") or (None, first line, holder)."""
    chan = sh.open_channel(script)
    first = ""
    try:
        first = read_line(chan, sh.where, "taking the board lock")
        if first.startswith("GOT"):
            return chan, first, ""
        holder = read_line(chan, sh.where, "reading the lock holder") or "an unknown holder"
        chan.status_event.wait(10.0)
    finally:
        if not first.startswith("GOT"):
            close_quietly(chan)
    if first != "BUSY":
        raise HarnessError(f"{sh.where}: taking the board lock failed: "
                           f"{drain_stderr(chan) or first or 'no answer'}")
    return None, first, holder


def _take(sh: LockShell, script: str, lock_dir: str, wait: float) -> paramiko.Channel:
    """The keeper channel, once the lock is ours (waiting up to `wait` s while busy)."""
    t0 = time.monotonic()
    announced = False
    while True:
        chan, first, holder = _try_once(sh, script)
        if chan is not None:
            break
        if time.monotonic() - t0 >= wait:
            raise HarnessError(
                f"{sh.name}: board is busy: {lock_dir} held by {holder} for over "
                f"{wait:g}s (lock_wait). If that run is gone, free it with "
                f"`skoracle board unlock`"
            )
        if not announced:
            sh.log(f"board busy (held by {holder}); waiting up to {wait:g}s")
            announced = True
        time.sleep(0.25)
    took = first[3:].strip()
    if took:
        holder, _, ended = took.rpartition("|")
        sh.log(f"took over a stale lock held by {holder or 'an unknown holder'} (its "
               f"client is gone and left it behind); ended {ended} of its process "
               "groups still running")
    return chan


def _release(chan: paramiko.Channel) -> None:
    try:  # end of stdin: the keeper ends the run's processes and frees the lock
        chan.shutdown_write()
        chan.status_event.wait(30.0)
    except CHANNEL_ERRORS:
        pass  # connection gone: the board-side keeper sees it and cleans up
    finally:
        close_quietly(chan)


@contextmanager
def hold(sh: LockShell, lock_dir: str, what: str, wait: float) -> Iterator[paramiko.Channel]:
    """Hold the board lock for the block; yields the keeper channel."""
    token = secrets.token_hex(8)
    script = keeper_script(sh.profile.remote_dir, lock_dir, token, holder_info(what))
    chan = _take(sh, script, lock_dir, wait)
    try:
        yield chan
    finally:
        _release(chan)


def register_cleanup(keeper: paramiko.Channel | None, run_dir: str, at: str) -> None:
    """Have the lock's keeper remove `run_dir` when the lock ends, however it ends."""
    if keeper is None:
        raise HarnessError("internal: a run directory registered outside the lock")
    try:
        keeper.sendall(f"{run_dir}\n".encode())
    except CHANNEL_ERRORS as exc:
        raise lost(at, "registering the run directory", exc) from None
