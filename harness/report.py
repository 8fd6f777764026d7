"""The run report: one schema, three renderings (report.json, report.md, report.html).

A report is a list of legs; a leg is a list of rows (case -> verdict, max ulp, time). The
HTML is self-contained (inline CSS, plots as base64 PNG) so it reads offline. The JSON
schema is documented in README.md and versioned by `SCHEMA`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.parity.verdict import CASE_VERDICTS, REPORT_FAILING, REPORT_VERDICTS
from harness.parity.verdict import Verdict as V

SCHEMA = "skoracle-report/1"

#: Row verdicts, best first. A leg's status is derived from its rows' verdicts.
#: "not-judged": the comparison ran but carries no verdict (its detail says where the case is
#: judged instead), e.g. an error bound too wide to tell a sign flip from a pass.
#: "error": the input could not be checked (e.g. nothing to check inside an artifact): the
#: leg's status is "error" and `run` exits 2, the rule `elf-check` follows.
VERDICTS = REPORT_VERDICTS
FAILING = REPORT_FAILING
#: The heat maps' cell colour per verdict (green = held to a model, grey = no verdict).
VERDICT_COLOURS = {V.BIT_EXACT: "#1a7f37", V.PASS: "#4caf50", V.WITHIN_BOUND: "#b5e08c",
                   V.NOT_JUDGED: "#d0d0d0", V.KNOWN_FAILURE: "#ffe08a",
                   V.UNAVAILABLE: "#fdbf6f", V.FAIL: "#d73027", V.ERROR: "#7f0000",
                   # the JVM matrix's own verdicts
                   V.SKIPPED: "#d0d0d0", V.NOT_RUNNABLE: "#fdbf6f", V.CRASH: "#7f0000",
                   V.TIMEOUT: "#a50026"}


def plural(n: int, word: str) -> str:
    """"1 output", "3 outputs": a count with its noun in the right number."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class Row:
    """One case of one leg."""

    case: str
    verdict: str
    max_ulp: int | None = None
    seconds: float | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")


@dataclass
class Leg:
    """One leg of the run: what it checks, its rows, and data for plots."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    status: str = "pending"  # pass | fail | error | unavailable | interrupted
    summary: str = ""
    elapsed_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, case: str, verdict: str, max_ulp: int | None = None,
            seconds: float | None = None, detail: str = "") -> Row:
        row = Row(case, verdict, max_ulp, seconds, detail)
        self.rows.append(row)
        return row

    def settle(self) -> str:
        """Derive the leg status from its rows (unless an error was already recorded)."""
        if self.status in ("error", "interrupted", "unavailable"):
            return self.status
        verdicts = {r.verdict for r in self.rows}
        if "error" in verdicts:  # an input that could not be checked: exit 2, as elf-check
            self.status = "error"
        elif verdicts & set(FAILING):
            self.status = "fail"
        elif not self.rows or verdicts == {"unavailable"}:
            self.status = "unavailable"
        else:
            self.status = "pass"
        return self.status


@dataclass
class Report:
    legs: list[Leg] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    elapsed_s: float = 0.0
    partial: bool = False
    exit_code: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "generator": _project_version(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "elapsed_s": round(self.elapsed_s, 3),
            "partial": self.partial,
            "exit_code": self.exit_code,
            "host": {"python": platform.python_version(), "machine": platform.machine(),
                     "system": platform.system()},
            "settings": self.settings,
            "legs": [
                {**{k: v for k, v in asdict(leg).items() if k != "rows"},
                 "rows": [asdict(r) for r in leg.rows]}
                for leg in self.legs
            ],
        }


def _project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"skainet-oracle {version('skainet-oracle')}"
    except PackageNotFoundError:
        return "skainet-oracle (not installed)"


# ---------------------------------------------------------------------------------------
# rendering

#: what a not-judged row shows for max ulp: a number there would read as a verdict
NOT_JUDGED_ULP = "—"


def ulp_text(r: Row) -> str:
    """The max ulp cell: '—' on a not-judged row (its detail says why), else the number."""
    if r.verdict == "not-judged":
        return NOT_JUDGED_ULP
    return "" if r.max_ulp is None else str(r.max_ulp)


def detail_text(r: Row) -> str:
    """The detail cell; a not-judged row's starts by saying so."""
    if r.verdict == "not-judged" and not r.detail.startswith("not judged"):
        return f"not judged: {r.detail}" if r.detail else "not judged"
    return r.detail


def leg_columns(leg: Leg, seconds: Callable[[float], str]) -> list[tuple[str, Callable[[Row],
                                                                                     str]]]:
    """The columns of a leg's table (header, cell of a row): case and verdict always; max
    ulp, time and detail only when some row of this leg has something to show there."""
    cols: list[tuple[str, Callable[[Row], str]]] = [("case", lambda r: r.case),
                                                    ("verdict", lambda r: r.verdict)]
    optional: list[tuple[str, Callable[[Row], str]]] = [
        ("max ulp", ulp_text),
        ("time", lambda r: "" if r.seconds is None else seconds(r.seconds)),
        ("detail", detail_text)]
    return cols + [(h, cell) for h, cell in optional if any(cell(r) for r in leg.rows)]


def render_markdown(rep: Report) -> str:
    d = rep.to_dict()
    out = [f"# skoracle run report{' (PARTIAL)' if rep.partial else ''}", "",
           f"Started {d['started_utc']}, {d['elapsed_s']:.1f} s, exit code {rep.exit_code}.", ""]
    out += ["| leg | status | summary | time |", "|---|---|---|---|"]
    for leg in rep.legs:
        out.append(f"| {leg.name} | {leg.status} | {leg.summary} | {leg.elapsed_s:.1f} s |")
    for leg in rep.legs:
        out += ["", f"## {leg.title}", "", f"Status: **{leg.status}**. {leg.summary}", ""]
        if leg.rows:
            cols = leg_columns(leg, lambda t: f"{t:.3f} s")
            out += ["| " + " | ".join(h for h, _ in cols) + " |", "|---" * len(cols) + "|"]
            for r in leg.rows:
                out.append("| " + " | ".join(cell(r) for _, cell in cols) + " |")
    return "\n".join(out) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(rep: Report) -> dict[str, str]:
    """Base64 PNGs for the pictures that say more than a table (only where there is data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out: dict[str, str] = {}
    ulps = {leg.name: leg.data["ulp_samples"] for leg in rep.legs if leg.data.get("ulp_samples")}
    if ulps:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for name, samples in ulps.items():
            for label, vals in samples.items():
                v = np.asarray(vals, dtype=float)
                ax.hist(np.log2(v + 1), bins=40, histtype="step", label=f"{name}: {label}")
        ax.set_xlabel("log2(ulp distance + 1) to the exact result")
        ax.set_ylabel("outputs")
        ax.set_title("Per-output error in ulp")
        ax.legend(fontsize=6, ncol=2)
        out["ulp_histogram"] = _png(fig)
    fp = next((leg.data["footprint"] for leg in rep.legs if "footprint" in leg.data), None)
    if fp:
        pols = list(fp["groups"])
        groups = list(dict.fromkeys(g for pol in pols for g in fp["groups"][pol]))
        fig, ax = plt.subplots(figsize=(7, 3.8))
        bottoms = np.zeros(len(pols))
        for g in [*groups, "transient copy"]:
            vals = np.array([(fp["transient"][pol] if g == "transient copy"
                              else fp["groups"][pol].get(g, 0)) / 1e9 for pol in pols])
            ax.bar(pols, vals, 0.5, bottom=bottoms, label=g,
                   hatch="//" if g == "transient copy" else None)
            bottoms += vals
        ax.axhline(fp["budget"] / 1e9, color="red", linestyle="--",
                   label=f"budget {fp['budget'] / 1e9:.2f} GB")
        for i, total in enumerate(bottoms):
            ax.text(i, total, f"{total:.2f} GB", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("GB resident at peak")
        ax.set_title("FunctionGemma weights per tensor group, both policies, vs the board")
        ax.legend(fontsize=7, loc="upper right")
        out["footprint_bars"] = _png(fig)
    matrix = next((leg.data["matrix"] for leg in rep.legs if "matrix" in leg.data), None)
    if matrix:
        out["verdict_heatmap"] = _heatmap(matrix, VERDICTS, "unavailable", "verdict matrix")
    out.update(jvm_plot(rep))
    out.update(decode_steps_plot(rep))
    return out


def decode_steps_plot(rep: Report) -> dict[str, str]:
    """Per-step decode time of the board leg's decode run (only where it recorded some)."""
    steps = next((leg.data["decode_steps"] for leg in rep.legs if "decode_steps" in leg.data),
                 None)
    if not steps or not steps.get("step_ms"):
        return {}
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.0))
    ms = steps["step_ms"]
    ax.plot(range(len(ms)), ms, marker="o", markersize=3)
    ax.set_xlabel("decode step")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Per-step time ({steps.get('source', '')}): {steps.get('title', '')}",
                 fontsize=9)
    return {"decode_step_times": _png(fig)}


#: JVM matrix verdicts, best to worst (the colour scale of the JVM heat map).
JVM_VERDICTS = CASE_VERDICTS


def jvm_plot(rep: Report) -> dict[str, str]:
    """The JVM leg's kernel x lanes/JIT-mode heat map (only where JVM data exists)."""
    matrix = next((leg.data["jvm_matrix"] for leg in rep.legs if "jvm_matrix" in leg.data),
                  None)
    if not matrix or not matrix["rows"]:
        return {}
    return {"jvm_heatmap": _heatmap(matrix, JVM_VERDICTS, "skipped", "JVM kernel x lanes/mode")}


def _heatmap(matrix: dict, verdicts: tuple[str, ...], missing: str, title: str) -> str:
    """A rows x cols verdict grid as a PNG: one fixed colour per verdict, the verdict written
    in each cell at 9 pt (11.25 px at _png's 90 dpi) in black or white, whichever contrasts."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap, to_rgb

    rows, cols, cells = matrix["rows"], matrix["cols"], matrix["cells"]
    colours = [to_rgb(VERDICT_COLOURS[v]) for v in verdicts]
    index = {v: i for i, v in enumerate(verdicts)}
    grid = np.array([[index.get(cells.get(f"{r}|{c}", missing), index[missing]) for c in cols]
                     for r in rows])
    fig, ax = plt.subplots(figsize=(2.5 + 1.4 * len(cols), 1.0 + 0.42 * len(rows)))
    ax.imshow(grid, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(verdicts) - 0.5,
              aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            red, green, blue = colours[grid[i, j]]
            light = 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.45
            ax.text(j, i, cells.get(f"{r}|{c}", "-"), ha="center", va="center", fontsize=9,
                    color="black" if light else "white")
    ax.set_title(matrix.get("title", title))
    return _png(fig)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px}th{background:#f3f3f3}.pass,.bit-exact{color:#14732c}.FAIL,.fail,.error{color:#b00}
.unavailable,.known-failure,.within-bound{color:#8a6100}.not-judged{color:#555}
img{max-width:100%}"""


def render_html(rep: Report) -> str:
    e = html.escape
    d = rep.to_dict()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>skoracle report</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>skoracle run report{' (PARTIAL)' if rep.partial else ''}</h1>",
             f"<p>Started {e(d['started_utc'])}, {d['elapsed_s']:.1f} s, exit code "
             f"{rep.exit_code}.</p>",
             "<table id='legs'><tr><th>leg</th><th>status</th><th>summary</th><th>time</th></tr>"]
    for leg in rep.legs:
        parts.append(f"<tr><td>{e(leg.name)}</td><td class='{e(leg.status)}'>{e(leg.status)}</td>"
                     f"<td>{e(leg.summary)}</td><td>{leg.elapsed_s:.1f} s</td></tr>")
    parts.append("</table>")
    for key, b64 in plots(rep).items():
        parts.append(f"<h2>{e(key.replace('_', ' '))}</h2>"
                     f"<img class='plot' id='{e(key)}' alt='{e(key)}' "
                     f"src='data:image/png;base64,{b64}'>")
    for leg in rep.legs:
        parts.append(f"<h2>{e(leg.title)}</h2><p class='{e(leg.status)}'>{e(leg.status)}: "
                     f"{e(leg.summary)}</p>")
        if leg.rows:
            cols = leg_columns(leg, lambda t: f"{t:.3f} s")
            parts.append(f"<table class='leg' id='leg-{e(leg.name)}'><tr>"
                         + "".join(f"<th>{e(h)}</th>" for h, _ in cols) + "</tr>")
            for r in leg.rows:
                parts.append("<tr>" + "".join(
                    f"<td class='{e(r.verdict)}'>{e(cell(r))}</td>" if h == "verdict" else
                    f"<td>{e(cell(r))}</td>" for h, cell in cols) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(rep: Report, out_dir: Path) -> Path:
    """Write report.json/.md/.html into `out_dir` (harness.reportdir: temp names, then
    renames; only these three files are ever replaced)."""
    from harness.reportdir import write_report_files

    return write_report_files(out_dir, {
        "report.json": json.dumps(rep.to_dict(), indent=2) + "\n",
        "report.md": render_markdown(rep),
        "report.html": render_html(rep),
    })
