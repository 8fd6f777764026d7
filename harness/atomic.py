"""Write a file so that it is either absent, the old version, or complete: never half-written.

The data goes to a fresh temp name in the destination's directory, which is renamed over the
destination; any failure (Ctrl-C included) removes the temp file and re-raises.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int | None = None
                 ) -> None:
    """`path` = data (str as UTF-8), through a temp file beside it and a rename; `mode`
    sets the permission bits (default: what a plain open() would give under the umask)."""
    dst = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
