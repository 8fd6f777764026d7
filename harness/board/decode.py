"""Decode parity: reading a decode program's console output (token ids, speed, step times)
and comparing the ids with a reference list.

Output is read line by line as it streams (`DecodeScanner.feed`), so a program that prints
gigabytes is parsed in bounded memory, and each token line's arrival time is known. What the
lines look like is a named `OutputFormat` (`--format voicecc`, `ids`, `tokens`), or the user's
own patterns, each with exactly one capture group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.board.target import RunResult, Target
    from harness.parity.verdict import Verdict

#: llama.cpp's decode speed for FunctionGemma 270M (same GGUF) on the SL2610's 2 x Cortex-A55.
DEFAULT_TARGET_TPS = 9.7
DEFAULT_TARGET_LABEL = "llama.cpp on the SL2610's 2-core Cortex-A55, same GGUF"
#: How many of the program's first lines a "nothing matched" message shows.
FIRST_LINES = 8
#: Longest line kept whole; longer ones are cut (a program printing one endless line must not
#: make the parser hold it).
MAX_LINE = 1 << 16
#: `[perf]`-style per-step lines (`[perf] gemma step 3: 512.4 ms`), read whatever the format.
PERF_STEP = re.compile(r"^\[perf\][^\n]*?\bstep\s+(\d+)\s*:\s*(\d+(?:\.\d+)?)\s*ms\b")


@dataclass(frozen=True)
class OutputFormat:
    """How one kind of decode program prints: group 1 of each pattern is the figure."""

    name: str
    description: str
    token_pattern: str
    tps_pattern: str | None = None
    ms_per_token_pattern: str | None = None


FORMATS: dict[str, OutputFormat] = {f.name: f for f in (
    OutputFormat(
        "tokens", "`token[i] = ID` (or `token: ID`) lines and a `... N tok/s` line "
        "(the project's fixtures/board/tokens.c)",
        r"\btoken(?:\[\d+\]|\s+\d+)?\s*[=:]\s*(\d+)",
        tps_pattern=r"(\d+(?:\.\d+)?)\s*(?:tok(?:ens)?/s|tokens per second)"),
    OutputFormat(
        "voicecc", "SKaiNET's voicecc `gen`: `[gen] step=N next=ID` per token (its "
        "`[gen] generated=[...]` and `[gen] llama-ref=[...]` lists are not read); with "
        "VOICECC_PROFILE=1 `[perf] gemma step N: MS ms` and `[perf] gemma total: MS ms, "
        "N tokens, MS ms/token`",
        r"^\[gen\] step=\d+ next=(\d+)\s*$",
        ms_per_token_pattern=r"^\[perf\][^\n]*\btotal:[^\n]*?(\d+(?:\.\d+)?)\s*ms/token"),
    OutputFormat("ids", "one integer token id per line and nothing else on it",
                 r"^\s*(\d+)\s*$"),
)}
DEFAULT_FORMAT = "tokens"
DEFAULT_TOKEN_PATTERN = FORMATS[DEFAULT_FORMAT].token_pattern
DEFAULT_TPS_PATTERN = FORMATS[DEFAULT_FORMAT].tps_pattern or ""


def formats_help() -> str:
    """The presets in words, for --help and the README."""
    return "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())


def compile_pattern(pattern: str, option: str) -> re.Pattern[str]:
    """A user's pattern with exactly one capture group (HarnessError, exit 2, otherwise)."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise HarnessError(f"{option} {pattern!r}: bad regular expression: {exc}") from None
    if rx.groups != 1:
        raise HarnessError(f"{option} {pattern!r}: needs exactly one capture group (around "
                           f"the number), it has {rx.groups}")
    return rx


def parse_expect(spec: str, option: str = "--expect") -> list[int]:
    """`--expect` (or `option`): ids (`2387,2387`, `[1, 2]`, `1 2 3`) or `@FILE` (a file in the same
    grammar, `#` comments allowed). A bare path of an existing file is read too."""
    text = spec.strip()
    if text.startswith("@"):
        return read_token_list(text[1:])
    if re.fullmatch(r"[\[\]\d,\s]+", text) and re.search(r"\d", text):
        return _ids_from_text(text, option)
    if Path(text).is_file():
        return read_token_list(text)
    raise HarnessError(f"{option} {spec!r}: give token ids (e.g. 2387,2387) or @FILE")


def _ids_from_text(text: str, where: str) -> list[int]:
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HarnessError(f"{where}: bad JSON: {exc}") from None
        if not isinstance(data, list) or not all(type(v) is int and v >= 0 for v in data):
            raise HarnessError(f"{where}: JSON must be an array of token ids (integers >= 0)")
        return list(data)
    ids: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if not tok:
                continue
            if not tok.isdigit():
                raise HarnessError(f"{where}:{lineno}: {tok!r} is not a token id (an "
                                   "integer >= 0)")
            ids.append(int(tok))
    return ids


def read_token_list(path: Path | str) -> list[int]:
    """Reference token ids from a file: a JSON array, or integers separated by
    whitespace/commas (`#` starts a comment)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"token list {path}: cannot read it: {exc}") from None
    return _ids_from_text(text, f"token list {path}")


# -- end tokens ----------------------------------------------------------------------------

END_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id")
#: End-of-turn pieces llama.cpp also treats as EOT when the GGUF has no eot key.
END_PIECES = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>")


def end_token_ids(model: Path | str) -> dict[int, str]:
    """The GGUF's end tokens: id -> where it comes from (the eos/eot/eom keys, and the
    end-of-turn pieces of its vocabulary, as llama.cpp finds Gemma's 106 `<end_of_turn>`)."""
    from harness.gguffile import open_gguf

    reader, _ = open_gguf(model)
    out: dict[int, str] = {}
    for key in END_KEYS:
        f = reader.fields.get(key)
        if f is not None and f.data:
            out[int(f.parts[f.data[0]][0])] = key.rsplit(".", 1)[1]
    toks = reader.fields.get("tokenizer.ggml.tokens")
    if toks is not None:
        wanted = {p.encode(): p for p in END_PIECES}
        for i, idx in enumerate(toks.data):
            piece = bytes(toks.parts[idx])
            if piece in wanted:
                out.setdefault(i, wanted[piece])
    return out


def cut_at_end(ids: Sequence[int], end_ids: Iterable[int]) -> tuple[list[int], int | None]:
    """`ids` up to and including the first end token, and that token's index (None: none)."""
    ends = set(end_ids)
    for i, t in enumerate(ids):
        if t in ends:
            return list(ids[:i + 1]), i
    return list(ids), None


# -- reading the output ----------------------------------------------------------------------

class DecodeScanner:
    """Reads a program's output as it streams: token ids with their arrival times, speed
    figures, `[perf]` step times, and the first lines (for a "nothing matched" message)."""

    def __init__(self, token_rx: re.Pattern[str], tps_rx: re.Pattern[str] | None,
                 ms_rx: re.Pattern[str] | None) -> None:
        self.token_rx, self.tps_rx, self.ms_rx = token_rx, tps_rx, ms_rx
        self.ids: list[int] = []
        self.times: list[float | None] = []
        self.tps: list[float] = []
        self.ms_per_token: list[float] = []
        self.perf_steps: dict[int, float] = {}
        self.first_lines: list[str] = []
        self.skipped_empty = 0
        self.lines = 0
        self._buf = b""

    def feed(self, chunk: bytes, when: float | None = None) -> None:
        """Take a chunk of output that arrived at `when` (seconds, any clock)."""
        self._buf += chunk
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > MAX_LINE:
                    self._line(self._buf[:MAX_LINE], when)
                    self._buf = b""
                return
            line, self._buf = self._buf[:i], self._buf[i + 1:]
            self._line(line[:MAX_LINE], when)

    def finish(self, when: float | None = None) -> DecodeScanner:
        if self._buf:
            self._line(self._buf[:MAX_LINE], when)
            self._buf = b""
        return self

    def _line(self, raw: bytes, when: float | None) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines += 1
        if len(self.first_lines) < FIRST_LINES:
            self.first_lines.append(line[:200])
        for m in self.token_rx.finditer(line):
            value = m.group(1)
            if not value:  # an alternation whose group did not take part
                self.skipped_empty += 1
                continue
            try:
                self.ids.append(int(value))
            except ValueError:
                raise HarnessError(f"--token-pattern {self.token_rx.pattern!r} captured "
                                   f"{value!r}, not a token id, in the line {line[:120]!r}"
                                   ) from None
            self.times.append(when)
        for rx, into in ((self.tps_rx, self.tps), (self.ms_rx, self.ms_per_token)):
            if rx is not None:
                for m in rx.finditer(line):
                    if m.group(1):
                        into.append(float(m.group(1)))
        m = PERF_STEP.search(line)
        if m:
            self.perf_steps[int(m.group(1))] = float(m.group(2))


def scanners(token_pattern: str, tps_pattern: str | None = None,
             ms_per_token_pattern: str | None = None) -> tuple[DecodeScanner, DecodeScanner]:
    """One scanner for stdout and one for stderr (patterns checked once, exit 2 if bad)."""
    tok = compile_pattern(token_pattern, "--token-pattern")
    tps = compile_pattern(tps_pattern, "--tps-pattern") if tps_pattern else None
    ms = (compile_pattern(ms_per_token_pattern, "--ms-per-token-pattern")
          if ms_per_token_pattern else None)
    return DecodeScanner(tok, tps, ms), DecodeScanner(tok, tps, ms)


def suggest_format(lines: Sequence[str]) -> str | None:
    """The preset whose token pattern finds ids in these lines, if one does."""
    for fmt in FORMATS.values():
        rx = re.compile(fmt.token_pattern)
        if any(m.group(1) for ln in lines for m in rx.finditer(ln)):
            return fmt.name
    return None


# -- timing ----------------------------------------------------------------------------------

@dataclass
class DecodeTiming:
    """Load time, time to first token, per-step times and the speed, with their sources."""

    step_ms: list[float] = field(default_factory=list)
    step_source: str = ""  # "[perf] lines" | "token-line arrival times" | ""
    ttft_s: float | None = None  # program start -> first token line (client clock)
    load_s: float | None = None  # ttft minus the first step's own time ([perf]) or ttft
    ms_per_token: float | None = None
    speed_source: str = ""

    @property
    def tok_per_s(self) -> float | None:
        return 1000.0 / self.ms_per_token if self.ms_per_token else None

    def to_dict(self) -> dict[str, object]:
        return {"load_s": self.load_s, "ttft_s": self.ttft_s, "step_ms": self.step_ms,
                "step_source": self.step_source, "ms_per_token": self.ms_per_token,
                "tok_per_s": self.tok_per_s, "speed_source": self.speed_source}


def decode_timing(scan: DecodeScanner, started: float | None) -> DecodeTiming:
    """Timing from the program's own figures where it prints them, else from when its token
    lines arrived (`started`: the program's start on the same clock as the arrival times)."""
    t = DecodeTiming()
    arrivals = [w for w in scan.times if w is not None]
    if started is not None and arrivals:
        t.ttft_s = max(0.0, arrivals[0] - started)
    if scan.perf_steps:
        t.step_ms = [scan.perf_steps[k] for k in sorted(scan.perf_steps)]
        t.step_source = "[perf] lines"
    elif len(arrivals) >= 2:
        t.step_ms = [1000.0 * (b - a) for a, b in zip(arrivals, arrivals[1:], strict=False)]
        t.step_source = "token-line arrival times"
    if t.ttft_s is not None:
        first = t.step_ms[0] / 1000.0 if t.step_source == "[perf] lines" else 0.0
        t.load_s = max(0.0, t.ttft_s - first)
    if scan.ms_per_token:
        t.ms_per_token, t.speed_source = scan.ms_per_token[-1], "ms/token line"
    elif scan.tps and scan.tps[-1] > 0:
        t.ms_per_token, t.speed_source = 1000.0 / scan.tps[-1], "tok/s line"
    elif t.step_ms:
        # a [perf] step 0 also digests the prompt; arrival gaps start after the first token
        perf = t.step_source == "[perf] lines"
        decode_steps = (t.step_ms[1:] if perf else t.step_ms) or t.step_ms
        t.ms_per_token = sum(decode_steps) / len(decode_steps)
        t.speed_source = f"mean of {len(decode_steps)} step times ({t.step_source})"
    return t


# -- the comparison --------------------------------------------------------------------------

@dataclass
class DecodeParity:
    """Token ids, timing and speed of one decode run against a reference list."""

    expected: list[int]
    got: list[int]
    timing: DecodeTiming
    target_tps: float = DEFAULT_TARGET_TPS
    target_label: str = DEFAULT_TARGET_LABEL
    first_divergence: int | None = None  # first differing index (or where one list ends)
    end_ids: dict[int, str] = field(default_factory=dict)
    expected_end: int | None = None  # index of the reference's first end token
    got_end: int | None = None
    got_after_end: int = 0  # ids the program printed after its end token (not compared)
    token_pattern: str = ""
    first_lines: list[str] = field(default_factory=list)
    skipped_empty: int = 0
    emulated: bool = False

    @property
    def ids_match(self) -> bool:
        return self.first_divergence is None

    @property
    def tok_per_s(self) -> float | None:
        return self.timing.tok_per_s

    def report(self) -> str:
        lines = []
        if not self.got:
            lines.append(f"token ids: NO token lines found with --token-pattern "
                         f"'{self.token_pattern}'; the program's first lines were:")
            lines += [f"  | {ln}" for ln in self.first_lines] or ["  (no output at all)"]
            fits = suggest_format(self.first_lines)
            if fits:
                lines.append(f"  (these lines match --format {fits})")
        elif self.ids_match:
            lines.append(f"token ids: all {len(self.expected)} match the reference")
        else:
            i = self.first_divergence
            assert i is not None
            exp = self.expected[i] if i < len(self.expected) else "(end)"
            got = self.got[i] if i < len(self.got) else "(end)"
            lines.append(f"token ids: FIRST DIVERGENCE at index {i}: expected {exp}, got {got} "
                         f"({i} of {len(self.expected)} matched before it; program printed "
                         f"{len(self.got)})")
        if self.end_ids:
            names = ", ".join(f"{k} ({v})" for k, v in sorted(self.end_ids.items()))
            where = []
            if self.expected_end is not None:
                where.append(f"reference stops at index {self.expected_end}")
            if self.got_end is not None:
                where.append(f"program stops at index {self.got_end}"
                             + (f" ({self.got_after_end} later ids not compared)"
                                if self.got_after_end else ""))
            lines.append(f"end tokens {names}: " + ("; ".join(where) or "neither side "
                                                    "reached one"))
        if self.skipped_empty:
            lines.append(f"note: {self.skipped_empty} matching lines had an empty group "
                         "and were skipped")
        lines += self.timing_lines()
        return "\n".join(lines)

    def timing_lines(self) -> list[str]:
        t = self.timing
        out = []
        if t.tok_per_s is None:
            out.append("speed: no figure (no tok/s or ms/token line, no step times)")
        else:
            ratio = t.tok_per_s / self.target_tps
            verdict = ("not judged: measured under qemu-user emulation (board-in-a-box), "
                       "the figure checks the plumbing, it says nothing about the board's speed"
                       if self.emulated else "meets" if ratio >= 1 else "below")
            out.append(f"speed: {t.tok_per_s:.2f} tok/s = {t.ms_per_token:.1f} ms/token (from "
                       f"{t.speed_source}) = {ratio:.2f}x the {self.target_tps:g} tok/s target "
                       f"({self.target_label}): {verdict}")
        parts = []
        if t.load_s is not None:
            parts.append(f"load {t.load_s:.3f} s")
        if t.ttft_s is not None:
            parts.append(f"first token {t.ttft_s:.3f} s after start")
        if t.step_ms:
            parts.append(f"{len(t.step_ms)} steps from {t.step_source}: first "
                         f"{t.step_ms[0]:.1f} ms, min {min(t.step_ms):.1f}, max "
                         f"{max(t.step_ms):.1f} ms")
        if parts:
            out.append("timing: " + "; ".join(parts))
        return out

    def to_dict(self) -> dict[str, object]:
        return {"ids_match": self.ids_match, "expected": self.expected, "got": self.got,
                "first_divergence": self.first_divergence,
                "end_tokens": {str(k): v for k, v in self.end_ids.items()},
                "expected_end": self.expected_end, "got_end": self.got_end,
                "got_after_end": self.got_after_end, "token_pattern": self.token_pattern,
                "first_lines": self.first_lines if not self.got else [],
                "timing": self.timing.to_dict(), "target_tps": self.target_tps,
                "target": self.target_label,
                "target_verdict": (None if self.emulated or not self.timing.tok_per_s else
                                   "meets" if self.timing.tok_per_s >= self.target_tps
                                   else "below"),
                "target_ratio": (self.timing.tok_per_s / self.target_tps
                                 if self.timing.tok_per_s else None),
                "emulated": self.emulated}


def judge_decode(out: DecodeScanner, err: DecodeScanner, expected: Sequence[int],
                 started: float | None = None, end_ids: dict[int, str] | None = None,
                 target_tps: float = DEFAULT_TARGET_TPS,
                 target_label: str = DEFAULT_TARGET_LABEL,
                 emulated: bool = False) -> DecodeParity:
    """Compare the ids the scanners read (stdout's, else stderr's) with `expected`, both cut
    after their first end token; timing from stdout's figures, else stderr's."""
    scan = out if out.ids else err
    for s in (out, err):
        s.finish()
    if not scan.tps and not scan.ms_per_token and not scan.perf_steps:
        other = err if scan is out else out
        scan.tps, scan.ms_per_token, scan.perf_steps = other.tps, other.ms_per_token, \
            other.perf_steps
    ends = end_ids or {}
    exp, exp_end = cut_at_end(expected, ends)
    got, got_end = cut_at_end(scan.ids, ends)
    first = None
    for i in range(max(len(got), len(exp))):
        if i >= len(got) or i >= len(exp) or got[i] != exp[i]:
            first = i
            break
    return DecodeParity(
        exp, got, decode_timing(scan, started), target_tps, target_label, first, dict(ends),
        exp_end, got_end, len(scan.ids) - len(got), out.token_rx.pattern,
        out.first_lines or err.first_lines, out.skipped_empty + err.skipped_empty, emulated)


def compare_decode(output: str, expected: Sequence[int],
                   token_pattern: str = DEFAULT_TOKEN_PATTERN,
                   tps_pattern: str | None = DEFAULT_TPS_PATTERN,
                   target_tps: float = DEFAULT_TARGET_TPS, stderr: str = "",
                   ms_per_token_pattern: str | None = None,
                   end_ids: dict[int, str] | None = None) -> DecodeParity:
    """`judge_decode` on whole stdout/stderr texts (no arrival times)."""
    out, err = scanners(token_pattern, tps_pattern, ms_per_token_pattern)
    out.feed(output.encode())
    err.feed(stderr.encode())
    return judge_decode(out, err, expected, end_ids=end_ids, target_tps=target_tps)


def decode_verdict(parity: DecodeParity, run: RunResult) -> Verdict:
    """The verdict of a decode run: "pass" when every id matches up to the first end token
    and the run was ok, else "FAIL" (`board decode-parity`'s exit code and the pytest
    decode items both read it)."""
    from harness.parity.verdict import Verdict

    return Verdict.PASS if parity.ids_match and run.ok else Verdict.FAIL


def decode_run(target: Target, program: Path, args: Sequence[str],
               inputs: dict[str, Path | bytes], expected: Sequence[int],
               end_ids: dict[int, str], fmt: str, emulated: bool,
               timeout: float | None = None,
               env: dict[str, str] | None = None) -> tuple[DecodeParity, RunResult]:
    """Run a decode program on the target and compare the ids it prints (format `fmt`)
    with `expected` up to the first end token: a pytest decode item, and the run report's
    voicecc stand-in."""
    import time

    f = FORMATS[fmt]
    out, err = scanners(f.token_pattern, f.tps_pattern, f.ms_per_token_pattern)
    res = target.run(program, args=list(args), inputs=inputs, timeout=timeout, env=env or {},
                     on_stdout=lambda c: out.feed(c, time.perf_counter()),
                     on_stderr=lambda c: err.feed(c, time.perf_counter()))
    return judge_decode(out, err, expected, started=res.started_at, end_ids=end_ids,
                        emulated=emulated), res


def voicecc_decode_parity(target: Target, program: Path, ids: Sequence[int], emulated: bool,
                          delay_ms: int = 20) -> tuple[DecodeParity, RunResult]:
    """Decode parity of the voicecc-format stand-in (fixtures/board/voicecc.c) fed `ids`,
    with VOICECC_PROFILE=1: ids, `[perf]` step times and speed, as the run report's board leg
    shows them. Returns the comparison and the RunResult."""
    return decode_run(target, program, ["toks.txt", "--delay-ms", str(delay_ms)],
                      {"toks.txt": ",".join(map(str, ids)).encode()}, ids, {}, "voicecc",
                      emulated, timeout=120, env={"VOICECC_PROFILE": "1"})
