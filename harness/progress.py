"""Live progress of a long decode on stderr: a rich bar in a terminal, a plain line every
`every` steps when stderr is a pipe or a file (a CI log shows it is alive, a terminal is not
flooded). Speeds are counted as `reference` and `llama-ref` report them: generated tokens
over the wall time of the passes that chose them; prompt steps are counted apart.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

#: steps between two progress lines when stderr is not a terminal
EVERY_STEPS = 8


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s"


def progress_text(done: int, total: int, generated: int, gen_seconds: float,
                  elapsed: float) -> str:
    """'step 16/50, 12 tokens generated, 0.52 tok/s, ETA 1m05s'."""
    rate = f"{generated / gen_seconds:.3g} tok/s" if generated and gen_seconds > 0 else \
        "tok/s after the prompt"
    eta = _clock(elapsed / done * (total - done)) if done else "?"
    return (f"step {done}/{total}, {generated} token{'s' if generated != 1 else ''} "
            f"generated, {rate}, ETA {eta}")


class DecodeProgress:
    """A refmodel ProgressFn that draws itself: `with DecodeProgress("reference") as p:
    m.decode(ids, n, progress=p)`."""

    def __init__(self, label: str, stream: TextIO | None = None,
                 every: int = EVERY_STEPS) -> None:
        self.label, self.every = label, every
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream)
        self.live: Progress | None = None
        self.task = 0
        self.shown = 0  # steps done at the last line printed

    def __enter__(self) -> DecodeProgress:
        if self.console.is_terminal:
            self.live = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
            self.live.start()
            self.task = self.live.add_task(self.label, total=None, detail="starting")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live is not None:
            self.live.stop()

    def __call__(self, done: int, total: int, generated: int, gen_seconds: float,
                 elapsed: float) -> None:
        text = progress_text(done, total, generated, gen_seconds, elapsed)
        if self.live is not None:
            self.live.update(self.task, completed=done, total=total, detail=text)
        elif done // self.every > self.shown // self.every and done < total:
            self.shown = done  # (a caller polling a worker may skip the exact step)
            print(f"{self.label}: {text}", file=self.stream, flush=True)
