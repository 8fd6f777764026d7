"""A program's stdout or stderr held in bounded client memory: up to a cap in memory, past it
the whole stream goes to a file (and the run's notes say where)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Bytes of one stream kept in memory before it spills to a file.
DEFAULT_MEMORY_CAP = 64 << 20


class SpillBuffer:
    """Collects one stream. `head` is what is kept in memory (the whole stream while it fits
    the cap, its first `cap` bytes after that); past the cap every byte also goes to
    `path`, a new file in `spill_dir` named after the stream."""

    def __init__(self, name: str, cap: int = DEFAULT_MEMORY_CAP,
                 spill_dir: Path | str | None = None) -> None:
        self.name = name
        self.cap = cap
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.total = 0
        self.path: Path | None = None
        self._chunks: list[bytes] = []
        self._held = 0
        self._fh = None

    def write(self, data: bytes) -> None:
        self.total += len(data)
        if self._fh is None and self._held + len(data) <= self.cap:
            self._chunks.append(data)
            self._held += len(data)
            return
        if self._fh is None:
            if self.spill_dir is not None:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"skoracle-{self.name}-", suffix=".log",
                                        dir=self.spill_dir)
            self._fh = os.fdopen(fd, "wb")
            self.path = Path(name)
            for chunk in self._chunks:
                self._fh.write(chunk)
            room = self.cap - self._held
            if room > 0:
                self._chunks.append(data[:room])
                self._held += room
        self._fh.write(data)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def discard(self) -> None:
        """Remove the spill file (the run was interrupted: never leave a partial file)."""
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    @property
    def head(self) -> bytes:
        return b"".join(self._chunks)

    @property
    def spilled(self) -> bool:
        return self.path is not None

    def note(self) -> str | None:
        """What happened to the stream, when it did not fit in memory."""
        if self.path is None:
            return None
        return (f"{self.name} was {self.total} bytes, over the {self.cap >> 20} MiB kept in "
                f"memory: all of it is in {self.path} (the result holds its first "
                f"{self.cap >> 20} MiB)")
