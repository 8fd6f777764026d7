"""One output policy for every subcommand's console and tables.

- In a terminal, rich uses the terminal's width; a table's name columns (kernel, class,
  case ...) never wrap, so a name is never split; free-text columns fold.
- Piped or redirected (a CI log, `| grep`), nothing is folded: each row is one line, so
  `grep PanamaVectorQ8_0MatmulKernel` finds every row of that kernel.
- Text that comes from the code under test (exception messages, file names) is shown with
  its control characters escaped and never read as rich markup.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Width given to rich when the output is not a terminal: wide enough that no line folds.
UNFOLDED_WIDTH = 100_000
#: C0/C1 controls, DEL and the bidirectional overrides/isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, else never folded."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=UNFOLDED_WIDTH)
    return console


def escape_control(text: str) -> str:
    """`text` with control characters shown as escapes (\\n, \\x1b, \\u202e), so a message
    from the code under test cannot break a line, a table or a terminal."""
    def one(m: re.Match[str]) -> str:
        c = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
            f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROL.sub(one, text)


class ResultTable:
    """A table printed by the policy above: a rich table in a terminal (columns in `names`
    never wrap, the others fold), plain column-aligned lines otherwise (no box, no trailing
    blanks, one line per row). Cells are plain text, never markup, control characters
    escaped; a rich Text cell (e.g. a coloured verdict) keeps its style in a terminal."""

    def __init__(self, title: str, columns: Sequence[str], names: Sequence[str] = ()) -> None:
        self.title, self.columns, self.names = title, list(columns), set(names)
        self.rows: list[list[Text]] = []

    def add_row(self, *values: object) -> None:
        self.rows.append([cell(v) for v in values])

    def rich(self) -> Table:
        t = Table(title=self.title, title_justify="left")
        for col in self.columns:
            if col in self.names:
                t.add_column(col, no_wrap=True)
            else:
                t.add_column(col, overflow="fold")
        for row in self.rows:
            t.add_row(*row)
        return t

    def lines(self) -> list[str]:
        """The plain rendering: title, header, one line per row."""
        table = [self.columns] + [[c.plain for c in row] for row in self.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(self.columns))]
        out = [self.title] if self.title else []
        for r in table:
            out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        return out

    def print(self, console: Console) -> None:
        if console.is_terminal:
            console.print(self.rich())
        else:
            for line in self.lines():
                console.print(line, markup=False, highlight=False, soft_wrap=True)


def cell(value: object) -> Text:
    """A table cell: plain text (never markup), control characters escaped; a rich Text
    passes through."""
    if isinstance(value, Text):
        return value
    return Text(escape_control("" if value is None else str(value)))
