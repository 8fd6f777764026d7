"""Parity modes on a target: decode parity (a user's program) and kernel parity (the real
SKaiNET native kernels, linked into our driver, against kernels_ref's `skainet_neon`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.board.build import FIXTURE_DIR, archive_symbols, cross_compile
from harness.board.target import RunResult, Target
from harness.errors import HarnessError
from kernels_ref.compare import ulp_distance

# -- decode parity -------------------------------------------------------------------------

#: Default patterns: group 1 is a token id / a tokens-per-second figure.
DEFAULT_TOKEN_PATTERN = r"\btoken(?:\[\d+\]|\s+\d+)?\s*[=:]\s*(-?\d+)"
DEFAULT_TPS_PATTERN = r"(\d+(?:\.\d+)?)\s*(?:tok(?:ens)?/s|tokens per second)"
#: llama.cpp's decode speed for FunctionGemma 270M on the SL2610.
DEFAULT_TARGET_TPS = 9.7


def read_token_list(path: Path | str) -> list[int]:
    """Reference token ids: a JSON array, or integers separated by whitespace/commas
    (`#` starts a comment)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"token list {path}: cannot read it: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HarnessError(f"token list {path}: bad JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(v, int) for v in data):
            raise HarnessError(f"token list {path}: JSON must be an array of integers")
        return list(data)
    ids: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
            if not tok:
                continue
            try:
                ids.append(int(tok))
            except ValueError:
                raise HarnessError(
                    f"token list {path}:{lineno}: {tok!r} is not an integer token id"
                ) from None
    return ids


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        rx = re.compile(pattern, re.MULTILINE)
    except re.error as exc:
        raise HarnessError(f"{what} {pattern!r}: bad regular expression: {exc}") from None
    if rx.groups < 1:
        raise HarnessError(f"{what} {pattern!r}: needs a capture group around the number")
    return rx


@dataclass
class DecodeParity:
    """Token ids and speed of one decode run against a reference list."""

    expected: list[int]
    got: list[int]
    tok_per_s: float | None
    target_tps: float
    first_divergence: int | None  # index of the first differing id (or where one list ends)

    @property
    def ids_match(self) -> bool:
        return self.first_divergence is None

    def report(self) -> str:
        lines = []
        if self.ids_match:
            lines.append(f"token ids: all {len(self.expected)} match the reference")
        else:
            i = self.first_divergence
            assert i is not None
            exp = self.expected[i] if i < len(self.expected) else "(end)"
            got = self.got[i] if i < len(self.got) else "(end)"
            lines.append(f"token ids: FIRST DIVERGENCE at index {i}: expected {exp}, got {got} "
                         f"({i} of {len(self.expected)} matched before it; program printed "
                         f"{len(self.got)})")
        if self.tok_per_s is None:
            lines.append("speed: no tok/s figure found in the output")
        else:
            ratio = self.tok_per_s / self.target_tps
            verdict = "meets" if ratio >= 1 else "below"
            lines.append(f"speed: {self.tok_per_s:.2f} tok/s = {ratio:.2f}x the "
                         f"{self.target_tps:g} tok/s target ({verdict})")
        return "\n".join(lines)


def compare_decode(output: str, expected: Sequence[int], token_pattern: str = DEFAULT_TOKEN_PATTERN,
                   tps_pattern: str = DEFAULT_TPS_PATTERN,
                   target_tps: float = DEFAULT_TARGET_TPS, stderr: str = "") -> DecodeParity:
    """Parse ids (every match of token_pattern) and tok/s (the last match) from the
    program's stdout; stderr is searched when stdout has none (llama.cpp-style tools print
    their timings there)."""
    tok_rx = _compile(token_pattern, "--token-pattern")
    tps_rx = _compile(tps_pattern, "--tps-pattern")
    got = [int(m.group(1)) for m in tok_rx.finditer(output)] or \
        [int(m.group(1)) for m in tok_rx.finditer(stderr)]
    speeds = [float(m.group(1)) for m in tps_rx.finditer(output)] or \
        [float(m.group(1)) for m in tps_rx.finditer(stderr)]
    first = None
    for i in range(max(len(got), len(expected))):
        if i >= len(got) or i >= len(expected) or got[i] != expected[i]:
            first = i
            break
    return DecodeParity(list(expected), got, speeds[-1] if speeds else None, target_tps, first)


# -- kernel parity -------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelSymbol:
    symbol: str
    qtype: str
    order: str  # oracle.layout block order the kernel reads


KERNEL_SYMBOLS: tuple[KernelSymbol, ...] = tuple(
    KernelSymbol(f"skainet_{stem}_matmul{suffix}", qt, order)
    for stem, qt in (("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("q5_0", "Q5_0"), ("q5_1", "Q5_1"),
                     ("q4k", "Q4_K"), ("q5k", "Q5_K"), ("q6k", "Q6_K"))
    for suffix, order in (("", "input_block_major"), ("_rm", "row_major"))
)

#: (out_dim, in_dim, batch): small, a K-quant row, batch > 1, and out >= 512 (the threaded
#: path of the native kernels), plus in = 640 (FunctionGemma's n_embd; K-quants skip it).
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = (
    (64, 256, 1), (48, 512, 3), (600, 512, 1), (37, 640, 2),
)
DRIVER_SOURCE = FIXTURE_DIR / "skainet_kernel_driver.c"


@dataclass
class KernelCase:
    """One kernel x shape. `reference` is "skainet_neon" (bit-exact expected) or "bound"
    (kernels_ref has no order model for this kernel: |kernel - exact| <= error_bound)."""

    symbol: str
    qtype: str
    shape: tuple[int, int, int]
    reference: str = "skainet_neon"
    bit_exact: bool = False
    within_bound: bool | None = None
    max_ulp: int = 0
    mismatches: int = 0
    fused_final_matches: dict[bool, bool] = field(default_factory=dict)
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.bit_exact if self.reference == "skainet_neon" else bool(self.within_bound)

    def row(self) -> str:
        o, i, b = self.shape
        if self.reference == "skainet_neon":
            verdict = "bit-exact" if self.bit_exact else f"{self.mismatches} outputs differ"
        else:
            verdict = "within bound" if self.within_bound else "OUTSIDE the error bound"
        return (f"{self.symbol:26s} {self.qtype:5s} {o}x{i} b{b}: {verdict}, max ulp "
                f"{self.max_ulp} (vs {self.reference if self.reference != 'bound' else 'exact'})"
                + (f" {self.detail}" if self.detail else ""))


def reference_outputs(x: np.ndarray, packed: np.ndarray, k: KernelSymbol, out_dim: int,
                      in_dim: int) -> dict[str, np.ndarray]:
    """What kernels_ref says the kernel must output: {"fused": .., "unfused": ..} under
    skainet_neon, or {"exact": .., "bound": ..} where that semantics refuses the format."""
    from oracle.formats import OracleError

    try:
        from kernels_ref import error_bound, matmul_wt
    except ImportError as exc:
        raise HarnessError(f"kernels_ref is not importable ({exc}); it is the reference the "
                           "kernel outputs are compared with") from None
    args = (x, packed, k.qtype, out_dim, in_dim)
    try:
        return {name: matmul_wt(*args, order=k.order, semantics="skainet_neon", fused_final=f)
                for name, f in (("fused", True), ("unfused", False))}
    except OracleError:
        return {"exact": matmul_wt(*args, order=k.order, semantics="exact"),
                "bound": error_bound(*args, order=k.order)}


def judge(case: KernelCase, y: np.ndarray, ref: dict[str, np.ndarray]) -> KernelCase:
    """Fill in the verdict for outputs `y` against `reference_outputs`."""
    if "fused" in ref:
        for fused in (True, False):
            d = ulp_distance(y, ref["fused" if fused else "unfused"])
            case.fused_final_matches[fused] = bool((d == 0).all())
            if fused:
                case.max_ulp, case.mismatches = int(d.max()), int((d != 0).sum())
        case.bit_exact = case.fused_final_matches[True]
        if not case.bit_exact and case.fused_final_matches[False]:
            case.detail = "(matches fused_final=False)"
    else:
        case.reference = "bound"
        d = ulp_distance(y, ref["exact"])
        err = np.abs(y.astype(np.float64) - ref["exact"].astype(np.float64))
        case.max_ulp, case.mismatches = int(d.max()), int((d != 0).sum())
        case.bit_exact = not case.mismatches
        case.within_bound = bool((err <= ref["bound"]).all())
    return case


def build_kernel_driver(archive: Path, out_dir: Path | None = None,
                        formats: Sequence[str] | None = None) -> tuple[Path, list[KernelSymbol]]:
    """Link our driver against the user's libskainet_kernels.a; the kernels it exports."""
    archive = Path(archive)
    if not archive.exists():
        raise HarnessError(f"--kernels-archive {archive}: no such file (the real "
                           "libskainet_kernels.a from the linuxarm64 klib of "
                           "sk.ainet.core:skainet-backend-native-cpu is needed)")
    defined = archive_symbols(archive)
    wanted = {f.upper() for f in formats} if formats else None
    kernels = [k for k in KERNEL_SYMBOLS if k.symbol in defined
               and (wanted is None or k.qtype in wanted)]
    if not kernels:
        raise HarnessError(
            f"--kernels-archive {archive}: defines none of the SKaiNET packed matmul kernels "
            f"({', '.join(k.symbol for k in KERNEL_SYMBOLS[:2])}, ...)"
            + (f" for {', '.join(sorted(wanted))}" if wanted else "")
            + "; some releases ship an empty archive: pick one whose archive holds them"
        )
    flags = [f"-DHAVE_{k.symbol}" for k in kernels]
    try:
        driver = cross_compile([DRIVER_SOURCE], "skainet_kernel_driver",
                               extra=[*flags, str(archive.resolve()), "-lpthread", "-lm"],
                               out_dir=out_dir)
    except HarnessError as exc:
        raise HarnessError(f"linking the kernel driver against {archive} failed: {exc}") from None
    return driver, kernels


def kernel_parity(
    target: Target,
    archive: Path,
    formats: Sequence[str] | None = None,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    seed: int = 0,
    timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> list[KernelCase]:
    """Run every exported packed kernel on the target and compare with `skainet_neon`."""
    from oracle.formats import qtype as qtype_of
    from oracle.layout import to_input_block_major
    from oracle.quants import quantize

    driver, kernels = build_kernel_driver(archive, formats=formats)
    rng = np.random.default_rng(seed)
    cases: list[KernelCase] = []
    for k in kernels:
        block = qtype_of(k.qtype).block
        for shape in shapes:
            out_dim, in_dim, batch = shape
            if in_dim % block:
                continue
            w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
            x = rng.standard_normal((batch, in_dim)).astype(np.float32)
            raw = quantize(k.qtype, w)
            packed = raw if k.order == "row_major" else to_input_block_major(raw, k.qtype)
            packed = np.ascontiguousarray(packed, np.uint8).reshape(-1)
            case = KernelCase(k.symbol, k.qtype, shape)
            res: RunResult = target.run(
                driver,
                args=[k.symbol, "w.bin", "x.bin", str(in_dim), str(out_dim), str(batch), "y.bin"],
                inputs={"w.bin": packed.tobytes(), "x.bin": x.astype("<f4").tobytes()},
                outputs=["y.bin"], timeout=timeout,
            )
            if not res.ok:
                case.detail = f"driver failed: {res.reason}"
                cases.append(case)
                continue
            y = np.frombuffer(res.outputs["y.bin"], "<f4").reshape(batch, out_dim)
            judge(case, y, reference_outputs(x, packed, k, out_dim, in_dim))
            cases.append(case)
            if progress:
                progress(case.row())
    return cases
