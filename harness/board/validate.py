"""Checks of `skoracle board` arguments, made before anything is sent to the board: a bad
value is one clear line and exit 2 (argparse type errors, HarnessError), never a run that
fails after it has acted."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import HarnessError


def positive_seconds(text: str) -> float:
    """--timeout: a number of seconds above zero (0 or less would kill the program at once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a number of seconds above 0")
    return value


def file_mode(text: str) -> int:
    """--mode: octal permission bits, 0 to 7777."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode (e.g. 644, 755)") \
            from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text}: octal mode out of range (0 to 7777)")
    return mode


def check_outdir(outdir: Path) -> None:
    """--outdir must be a directory or creatable as one; checked before the run."""
    if outdir.exists() and not outdir.is_dir():
        raise HarnessError(f"--outdir {outdir}: exists and is not a directory")
    parent = next((a for a in (outdir, *outdir.parents) if a.exists()), Path("."))
    if not parent.is_dir():
        raise HarnessError(f"--outdir {outdir}: {parent} is not a directory")


def fetch_destination(remote: str, local: str) -> Path:
    """Where `board fetch` writes: LOCAL, or LOCAL/<remote name> when LOCAL is a directory."""
    dst = Path(local)
    if dst.is_dir():
        name = remote.rstrip("/").rpartition("/")[2]
        if not name or name in (".", ".."):
            raise HarnessError(f"fetch: {remote!r} names no file to write into {dst}/")
        dst = dst / name
        if dst.is_dir():
            raise HarnessError(f"fetch: {dst} is a directory")
    if not dst.parent.is_dir():
        raise HarnessError(f"fetch: {dst.parent}: no such directory")
    return dst
