"""Parity modes on a target: decode parity (a user's program) and kernel parity (the real
SKaiNET native kernels, linked into our driver, against kernels_ref's `skainet_neon`, or
for the ternary kernels the exact result within a rigorous bound: harness.board.kernelkinds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.board.build import FIXTURE_DIR, archive_symbols, cross_compile
from harness.board.decode import (  # decode parity lives there; re-exported for callers
    DEFAULT_TARGET_TPS,
    DEFAULT_TOKEN_PATTERN,
    DEFAULT_TPS_PATTERN,
    DecodeParity,
    compare_decode,
    read_token_list,
)
from harness.board.kernelkinds import (
    MODELLED_KINDS,
    OTHER_KERNELS,
    KernelSymbol,
    dense_bound_reference,
)
from harness.board.kernelkinds import case_inputs as other_case_inputs
from harness.board.kernelkinds import reference as other_reference
from harness.board.kernelkinds import skip_reason as other_skip_reason
from harness.board.target import RunResult, Target
from harness.errors import HarnessError
from harness.parity.judge import FAILED, OK, Expectation, Outcome, off_model_note, verdict_rule
from harness.parity.judge import judge as judge_outcome
from harness.parity.runner import BoardRunner, CaseRunner, KernelCall
from harness.parity.verdict import CASE_PASSING, Verdict
from harness.report import plural

__all__ = ["DEFAULT_TARGET_TPS", "DEFAULT_TOKEN_PATTERN", "DEFAULT_TPS_PATTERN", "DecodeParity",
           "compare_decode", "read_token_list"]


# -- kernel parity -------------------------------------------------------------------------

KERNEL_SYMBOLS: tuple[KernelSymbol, ...] = tuple(
    KernelSymbol(f"skainet_{stem}_matmul{suffix}", qt, order)
    for stem, qt in (("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("q5_0", "Q5_0"), ("q5_1", "Q5_1"),
                     ("q4k", "Q4_K"), ("q5k", "Q5_K"), ("q6k", "Q6_K"))
    for suffix, order in (("", "input_block_major"), ("_rm", "row_major"))
)

#: Every kernel kernel-parity runs: the packed matmuls, then the other kinds.
ALL_KERNELS: tuple[KernelSymbol, ...] = KERNEL_SYMBOLS + OTHER_KERNELS

#: Why other `skainet_*` symbols an archive defines are not run (prefix -> reason).
NOT_MODELLED: tuple[tuple[str, str], ...] = (
    ("skainet_smoke_", "the FFI smoke test (output = 2*input), not a kernel"),
    ("skainet_run_rows", "the row-range thread pool the packed kernels share, not a kernel"),
    ("skainet_cpu_has_", "a CPU feature probe, not a kernel"),
)
OTHER_SYMBOL = "not a kernel with a signature the driver knows (packed, dense, BitNet, ternary)"

#: (out_dim, in_dim, batch): small, a K-quant row, batch > 1, and out >= 512 (the threaded
#: path of the native kernels), plus in = 640 (FunctionGemma's n_embd; K-quants skip it).
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = (
    (64, 256, 1), (48, 512, 3), (600, 512, 1), (37, 640, 2),
)
DRIVER_SOURCE = FIXTURE_DIR / "skainet_kernel_driver.c"

#: The one verdict rule, stated where every verdict is printed.
VERDICT_RULE = ("a kernel with an order model in kernels_ref passes only bit-exact with it "
                "(skainet_neon(fused_final=True) on the board, skainet_x86 for an x86-64 host "
                "build); a kernel without one can at best be 'within-bound' of the exact result")
FIXTURE_ARCHIVE_NAME = "libfixture_kernels.a"
#: the project's archive of deliberately wrong kernels, one per non-packed kind
FIXTURE_WRONG_ARCHIVE_NAME = "libfixture_kernels_wrong.a"
FIXTURE_LABEL = ("TEST FIXTURE: the project's own C kernels (fixtures/board/kernels*), "
                 "not SKaiNET's result")


@dataclass
class KernelCase:
    """One kernel x shape. `reference` names the order model the build follows (bit-exact
    expected): "skainet_neon" on the board, "skainet_x86" for an x86-64 host build; or is
    "bound" (no order model: |kernel - exact| <= error_bound)."""

    symbol: str
    qtype: str
    shape: tuple[int, int, int]
    reference: str = "skainet_neon"
    bit_exact: bool = False
    within_bound: bool | None = None
    max_ulp: int = 0
    mismatches: int = 0
    #: max|y - ref| in ulps at max|ref| (the error against the output's scale)
    scale_ulps: float = 0.0
    #: for "bound": max |y - exact| / bound, and max bound / max|exact|
    bound_used: float | None = None
    tightness: float | None = None
    fused_final_matches: dict[bool, bool] = field(default_factory=dict)
    detail: str = ""
    failed_run: bool = False
    #: a failed run's status (crash, timeout, ...; "failed" for any other failure)
    status: str = FAILED
    #: the board that ran the case, when cases are spread over several (harness.board.spread)
    board: str = ""

    @property
    def verdict(self) -> str:
        return kernel_verdict(self)

    @property
    def passed(self) -> bool:
        return self.verdict in CASE_PASSING

    def row(self) -> str:
        o, i, b = self.shape
        on = f" [{self.board}]" if self.board else ""
        return (f"{self.symbol:26s} {self.qtype:5s} {o}x{i} b{b}{on}: {self.verdict}, "
                f"{self.measure()}")

    def measure(self) -> str:
        """The error in words: mismatches, ulps at the output scale, bound use and tightness."""
        if self.failed_run:
            return self.detail
        n = self.shape[0] * self.shape[2]
        parts = [f"{self.mismatches} of {plural(n, 'output')} differ"
                 + (f" (max {self.max_ulp} ulp each, {self.scale_ulps:.3g} ulp at max|y|)"
                    if self.mismatches else "")]
        if self.reference == "bound":
            parts.append(f"vs exact: error/bound {self.bound_used:.3g}, bound/max|y| "
                         f"{self.tightness:.3g}; no order model")
        else:
            parts.append(f"vs {self.reference}")
        if self.detail:
            parts.append(self.detail)
        return "; ".join(parts)


def kernel_verdict(case: KernelCase) -> str:
    """THE rule (harness.parity.judge.verdict_rule, which the CLI, `run`'s board leg and the
    tests all reach through here): "bit-exact" or "FAIL" for a modelled kernel;
    "within-bound" or "FAIL" for one without a model."""
    modelled = case.reference != "bound"
    return verdict_rule(case.status if case.failed_run else OK, modelled=modelled,
                        matched=modelled and case.bit_exact, within_bound=case.within_bound)


#: the semantics whose order a board's build follows
BOARD_MODEL = "skainet_neon"
#: the keys of a binding order model in `reference_outputs`: skainet_neon(fused_final=True),
#: or another build's model (e.g. skainet_x86)
MODEL_KEYS = ("fused", "model")


def reference_outputs(x: np.ndarray, packed: np.ndarray, k: KernelSymbol, out_dim: int,
                      in_dim: int, model: str | None = BOARD_MODEL) -> dict[str, np.ndarray]:
    """What kernels_ref says the kernel must output: {"fused": .., "unfused": ..} under
    skainet_neon, {"model": ..} under another `model` (both with the entry's kernel_order),
    or {"exact": .., "bound": ..} where `model` is None or has no model of the kernel."""
    from oracle.formats import OracleError

    try:
        from kernels_ref import matmul_wt
    except ImportError as exc:
        raise HarnessError(f"kernels_ref is not importable ({exc}); it is the reference the "
                           "kernel outputs are compared with") from None
    args = (x, packed, k.qtype, out_dim, in_dim)
    try:
        if model == BOARD_MODEL:
            return {name: matmul_wt(*args, order=k.order, semantics=model, fused_final=f,
                                    kernel_order=k.kernel_order)
                    for name, f in (("fused", True), ("unfused", False))}
        if model is not None:
            return {"model": matmul_wt(*args, order=k.order, semantics=model,
                                       kernel_order=k.kernel_order)}
    except OracleError:
        pass
    return bound_reference(x, packed, k, out_dim, in_dim, model)


def bound_reference(x: np.ndarray, packed: np.ndarray, k: KernelSymbol, out_dim: int,
                    in_dim: int, model: str | None = BOARD_MODEL) -> dict[str, np.ndarray]:
    """{"exact": .., "bound": ..}: the exact result and its rigorous bound, which for a kernel
    that quantizes its activations (Q4_K, Q6_K) includes that quantization, as `model` (or,
    without one, skainet_neon) quantizes them."""
    from kernels_ref import error_bound, matmul_wt

    if k.kind == "dense":
        return dense_bound_reference(k, x, packed, out_dim, in_dim)
    args = (x, packed, k.qtype, out_dim, in_dim)
    return {"exact": matmul_wt(*args, order=k.order, semantics="exact"),
            "bound": error_bound(*args, order=k.order, semantics=model or BOARD_MODEL)}


def model_key(ref: dict[str, np.ndarray]) -> str | None:
    """The key of the binding order model in `ref`, or None (exact and bound only)."""
    return next((key for key in MODEL_KEYS if key in ref), None)


def expectation(ref: dict[str, np.ndarray]) -> Expectation:
    """`reference_outputs` as the one judge's expectation: the order model binding
    (fused_final=False checked for the detail only), else exact and bound."""
    key = model_key(ref)
    if key:
        return Expectation([(key, ref[key])], binding=True,
                           alternatives=[("unfused", ref["unfused"])] if "unfused" in ref
                           else [])
    return Expectation(exact=ref["exact"], bound=ref["bound"])


def judge(case: KernelCase, y: np.ndarray, ref: dict[str, np.ndarray]) -> KernelCase:
    """Fill in the measurements for outputs `y` against `reference_outputs`, by the one
    judge (harness.parity.judge)."""
    j = judge_outcome(Outcome(y=y), expectation(ref))
    case.max_ulp, case.mismatches, case.scale_ulps = j.max_ulp, j.mismatches, j.scale_ulps
    key = model_key(ref)
    if key == "model":
        case.bit_exact = j.model_matches[key]
    elif key:
        case.fused_final_matches = {True: j.model_matches["fused"],
                                    False: j.model_matches.get("unfused", False)}
        case.bit_exact = case.fused_final_matches[True]
        if not case.bit_exact and case.fused_final_matches[False]:
            case.detail = ("bit-exact with fused_final=False instead: built without "
                           "-ffast-math?")
    else:
        case.reference = "bound"
        case.bit_exact = not case.mismatches
        case.bound_used, case.tightness = j.bound_used, j.tightness
        case.within_bound = j.verdict == Verdict.WITHIN_BOUND
    return case


@dataclass
class KernelInventory:
    """Every `skainet_*` symbol of an archive sorted into what happens to it, and every
    kernel the harness knows that the archive lacks."""

    archive: Path
    run: list[KernelSymbol] = field(default_factory=list)
    deselected: list[str] = field(default_factory=list)  # known, left out by --formats
    not_modelled: dict[str, str] = field(default_factory=dict)  # symbol -> why
    absent: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        names = ", ".join(k.symbol for k in self.run) or "none"
        out = [f"archive {self.archive.name}: {plural(len(self.run), 'kernel')} run: {names}"]
        if self.deselected:
            out.append(f"not selected by --formats: {', '.join(self.deselected)}")
        for sym, why in sorted(self.not_modelled.items()):
            out.append(f"not run: {sym}: {why}")
        if self.absent:
            out.append(f"ABSENT from the archive ({len(self.absent)}): {', '.join(self.absent)}")
        return out


def inventory(archive: Path, formats: Sequence[str] | None = None,
              symbols: set[str] | None = None) -> KernelInventory:
    """Sort the archive's `skainet_*` symbols (HarnessError, exit 2, when none is a packed
    kernel the harness runs). `symbols`: the library's defined symbols when already read
    (a shared library on the host), else the archive's."""
    archive = Path(archive)
    if not archive.exists():
        raise HarnessError(f"--kernels-archive {archive}: no such file (the real "
                           "libskainet_kernels.a from the linuxarm64 klib of "
                           "sk.ainet.core:skainet-backend-native-cpu is needed)")
    if symbols is None:
        symbols = archive_symbols(archive)
    defined = {s for s in symbols if s.startswith("skainet_")}
    wanted = {f.upper() for f in formats} if formats else None
    inv = KernelInventory(archive)
    known = {k.symbol: k for k in ALL_KERNELS}
    for k in ALL_KERNELS:
        if k.symbol not in defined:
            inv.absent.append(k.symbol)
        elif wanted is None or k.qtype in wanted:
            inv.run.append(k)
        else:
            inv.deselected.append(k.symbol)
    for sym in sorted(defined - set(known)):
        inv.not_modelled[sym] = next((why for prefix, why in NOT_MODELLED
                                      if sym.startswith(prefix)), OTHER_SYMBOL)
    if not inv.run:
        raise HarnessError(
            f"--kernels-archive {archive}: defines none of the SKaiNET kernels "
            f"({', '.join(k.symbol for k in KERNEL_SYMBOLS[:2])}, ...)"
            + (f" for {', '.join(sorted(wanted))}" if wanted else "")
            + "; some releases ship an empty archive: pick one whose archive holds them"
        )
    return inv


def build_kernel_driver(archive: Path, out_dir: Path | None = None,
                        formats: Sequence[str] | None = None) -> tuple[Path, KernelInventory]:
    """Link our driver against the archive; its inventory (the kernels linked in are `run`)."""
    inv = inventory(archive, formats)
    flags = [f"-DHAVE_{k.symbol}" for k in inv.run]
    try:
        driver = cross_compile([DRIVER_SOURCE], "skainet_kernel_driver",
                               extra=[*flags, str(Path(archive).resolve()), "-lpthread", "-lm"],
                               out_dir=out_dir)
    except HarnessError as exc:
        raise HarnessError(f"linking the kernel driver against {archive} failed: {exc}") from None
    return driver, inv


def packed_for(k: KernelSymbol, raw: np.ndarray) -> np.ndarray:
    """Row-major packed bytes rearranged into the block order kernel `k` reads, flat."""
    from oracle.layout import to_input_block_major

    packed = raw if k.order == "row_major" else to_input_block_major(raw, k.qtype)
    return np.ascontiguousarray(packed, np.uint8).reshape(-1)


def run_kernel(target: Target, driver: Path, k: KernelSymbol, x: np.ndarray,
               packed: np.ndarray, out_dim: int, timeout: float = 300.0,
               in_dim: int | None = None) -> tuple[np.ndarray | None, RunResult]:
    """One driver run of kernel `k`: float32 (batch, out_dim) outputs, or None if it failed.
    `x` is float32 activations, or bytes (uint8) in the kind's input encoding."""
    batch = x.shape[0]
    in_dim = x.shape[1] if in_dim is None else in_dim
    x_bytes = x.tobytes() if x.dtype == np.uint8 else x.astype("<f4").tobytes()
    res: RunResult = target.run(
        driver,
        args=[k.symbol, "w.bin", "x.bin", str(in_dim), str(out_dim), str(batch), "y.bin"],
        inputs={"w.bin": packed.tobytes(), "x.bin": x_bytes},
        outputs=["y.bin"], timeout=timeout,
    )
    if not res.ok:
        return None, res
    return np.frombuffer(res.outputs["y.bin"], "<f4").reshape(batch, out_dim), res


def fixture_neon_outputs(x: np.ndarray, raw: np.ndarray, qtype: str, out_dim: int
                         ) -> np.ndarray:
    """The project's fixture C kernel for `qtype` (feed order, SKaiNET's flags) run here under
    qemu-aarch64: a compiled evaluation of the skainet_neon(fused_final=True) order, to hold
    the model to bit for bit without a board. HarnessError when it cannot run."""
    from harness.board.build import fixture_kernel_archive
    from harness.board.sim import QEMU_CPU
    from harness.board.target import LocalTarget

    k = next(k for k in KERNEL_SYMBOLS if k.qtype == qtype and k.kernel_order == "feed")
    driver, inv = build_kernel_driver(fixture_kernel_archive(), formats=[qtype])
    if k not in inv.run:
        raise HarnessError(f"the fixture archive has no {k.symbol}")
    target = LocalTarget(["qemu-aarch64", "-cpu", QEMU_CPU, "-L", "/usr/aarch64-linux-gnu"])
    y, res = run_kernel(target, driver, k, x, packed_for(k, raw), out_dim)
    if y is None:
        raise HarnessError(f"fixture kernel {k.symbol} failed: {res.reason}")
    return y


@dataclass
class KernelParity:
    """A kernel-parity run: the inventory, the cases, the shapes skipped and why."""

    inventory: KernelInventory
    cases: list[KernelCase] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fixture: bool = False
    #: the boards the cases were spread over (harness.board.spread), else empty
    boards: list[str] = field(default_factory=list)
    #: the fixture label (the board's archive, or the host's fixtures/host library)
    fixture_label: str = FIXTURE_LABEL
    #: said after the rule (e.g. the host build's order has no model)
    note: str = ""

    @property
    def failed(self) -> list[KernelCase]:
        return [c for c in self.cases if not c.passed]

    @property
    def ok(self) -> bool:
        return bool(self.cases) and not self.failed

    def summary(self) -> str:
        """One line: counts per verdict, the rule, and what a failure pattern suggests."""
        counts: dict[str, int] = {}
        for c in self.cases:
            counts[c.verdict] = counts.get(c.verdict, 0) + 1
        told = ", ".join(f"{n} {v}" for v, n in counts.items()) or "no cases"
        failing = sorted({c.symbol for c in self.failed})
        line = (f"kernel parity: {len(self.cases) - len(self.failed)} of "
                f"{plural(len(self.cases), 'case')} pass ({told})"
                + (f"; FAILING: {', '.join(failing)}" if failing else "")
                + (f"; {plural(len(self.inventory.absent), 'known kernel')} absent"
                   if self.inventory.absent else "")
                + f". Rule: {VERDICT_RULE}."
                + (f" {self.note}." if self.note else ""))
        unfused = [c for c in self.failed if c.fused_final_matches.get(False)]
        if unfused and len(unfused) == len(self.failed):
            line += (" Every failing case is bit-exact with fused_final=False: the archive "
                     "looks built without -ffast-math?")
        elif unfused:
            line += (f" {plural(len(unfused), 'failing case')} match "
                     "fused_final=False (built without -ffast-math?)")
        if self.fixture:
            line = f"[{self.fixture_label}] {line}"
        return line

    def notes(self) -> list[str]:
        """Everything not in a case row: the inventory and the skipped shapes."""
        spread = []
        if self.boards:
            counts = ", ".join(f"{b}: {plural(sum(c.board == b for c in self.cases), 'case')}"
                               for b in self.boards)
            spread = [f"spread over {plural(len(self.boards), 'board')} ({counts})"]
        return [*self.inventory.lines(), *self.skipped, *spread]

    def to_dict(self) -> dict[str, object]:
        """The run as JSON-ready data: every case with its verdict and measures."""
        inv = self.inventory
        return {
            "ok": self.ok, "fixture": self.fixture, "summary": self.summary(),
            "rule": VERDICT_RULE, "archive": str(inv.archive),
            "inventory": {"run": [k.symbol for k in inv.run], "deselected": inv.deselected,
                          "not_modelled": inv.not_modelled, "absent": inv.absent},
            "skipped": self.skipped, "boards": self.boards,
            "cases": [{"board": c.board, "symbol": c.symbol, "qtype": c.qtype,
                       "shape": list(c.shape),
                       "verdict": c.verdict, "reference": c.reference,
                       "mismatches": c.mismatches, "max_ulp": c.max_ulp,
                       "scale_ulps": c.scale_ulps, "bound_used": c.bound_used,
                       "tightness": c.tightness, "detail": c.measure()}
                      for c in self.cases],
        }


@dataclass(frozen=True)
class PlannedCase:
    """One kernel x shape of a run; its inputs come from (seed, kernel, shape) alone."""

    kernel: KernelSymbol
    shape: tuple[int, int, int]


def plan_cases(inv: KernelInventory, shapes: Sequence[tuple[int, int, int]],
               skipped: list[str]) -> Iterator[PlannedCase]:
    """Every case of a run, in order; shapes a kernel cannot take go to `skipped`, saying
    why (harness.board.spread hands them to several boards)."""
    for k in inv.run:
        for shape in shapes:
            why = shape_skip(k, shape)
            if why:
                skipped.append(why)
                continue
            yield PlannedCase(k, tuple(shape))


def shape_skip(k: KernelSymbol, shape: tuple[int, int, int]) -> str | None:
    """Why kernel `k` has no case at `shape` (a packed kernel's in_dim not a whole number of
    its blocks; the other kinds' own limits), as a "skipped ..." line, else None."""
    from oracle.formats import qtype as qtype_of

    out_dim, in_dim, batch = shape
    if k.kind != "packed":
        why = other_skip_reason(k, shape)
    else:
        block = qtype_of(k.qtype).block
        why = (f"in {in_dim} is not a multiple of {k.qtype}'s {block}-element block"
               if in_dim % block else None)
    return f"skipped {k.symbol} {out_dim}x{in_dim} b{batch}: {why}" if why else None


def case_rng(k: KernelSymbol, shape: tuple[int, int, int], seed: int) -> np.random.Generator:
    """The random stream of one case, from (seed, kernel, shape) alone: a case selected on
    its own (pytest -k, one xdist worker, one board of a pool) sees the same numbers as in
    the whole run."""
    import zlib

    out_dim, in_dim, batch = shape
    return np.random.default_rng([seed, out_dim, in_dim, batch, zlib.crc32(k.symbol.encode())])


def kernel_case(runner: CaseRunner, k: KernelSymbol, shape: tuple[int, int, int],
                seed: int = 0, model: str | None = BOARD_MODEL, note: str = "") -> KernelCase:
    """Run one kernel x shape through `runner` (the driver's entry for its signature) and
    judge it with the one judge: what `kernel_parity`, the pool spread, the host runner and
    the pytest items (harness.parity.pytest_items) all call. `model`: the semantics whose
    order the build follows (skainet_x86 for an x86-64 host build), None where it has none
    (the case is judged within the rigorous bound); `note` is said in the row. A packed or
    dense kernel that misses its model bit for bit is FAIL, and its row says whether it still
    lies inside the rigorous bound (a build whose compiler ordered the sums differently)."""
    x, packed, ref = case_data(k, shape, case_rng(k, shape, seed), model=model)
    modelled = k.kind in MODELLED_KINDS and model_key(ref) is not None
    case = KernelCase(k.symbol, k.qtype, tuple(shape),
                      reference=(model or BOARD_MODEL) if modelled else "bound", detail=note)
    outcome = runner.run(KernelCall(k.symbol, x, packed, shape[0], shape[1]))
    if outcome.status != OK:
        case.failed_run, case.status = True, outcome.status
        case.detail = outcome.error
        return case
    judge(case, outcome.y, ref)
    if modelled and k.kind in ("packed", "dense") and not case.bit_exact:
        off_model_detail(case, outcome.y, bound_reference(x, packed, k, *shape[:2], model))
    return case


def off_model_detail(case: KernelCase, y: np.ndarray, ref: dict[str, np.ndarray]) -> None:
    """Add to a case that missed its order model whether its outputs lie inside the
    rigorous bound of the exact result (the verdict stays FAIL)."""
    said = off_model_note(y, ref["exact"], ref["bound"])
    case.detail = f"{case.detail}; {said}" if case.detail else said


def start_parity(archive: Path, formats: Sequence[str] | None, fixture: bool | None
                 ) -> tuple[Path, KernelParity]:
    """The driver linked against `archive` and the empty result with its inventory;
    `fixture` None: the project's own test archives (right or deliberately wrong) by name."""
    driver, inv = build_kernel_driver(archive, formats=formats)
    if fixture is None:
        fixture = Path(archive).name in (FIXTURE_ARCHIVE_NAME, FIXTURE_WRONG_ARCHIVE_NAME)
    return driver, KernelParity(inv, fixture=fixture)


def kernel_parity(
    target: Target,
    archive: Path,
    formats: Sequence[str] | None = None,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    seed: int = 0,
    timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
    fixture: bool | None = None,
) -> KernelParity:
    """Run every exported kernel the harness knows (packed, dense, BitNet, ternary) on the
    target (`BoardRunner`), with the driver's entry for its signature, and judge it with the
    one judge (`kernel_verdict` its rule).
    `fixture` labels the project's own test archive (default: by its file name).
    (harness.board.spread runs the same cases over several boards.)"""
    driver, result = start_parity(archive, formats, fixture)
    runner = BoardRunner(target, driver, timeout)
    for planned in plan_cases(result.inventory, shapes, result.skipped):
        case = kernel_case(runner, planned.kernel, planned.shape, seed)
        result.cases.append(case)
        if progress:
            progress(case.row())
    return result


def case_data(k: KernelSymbol, shape: tuple[int, int, int], rng: np.random.Generator,
              model: str | None = BOARD_MODEL
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(driver input, weight bytes, reference) of one case: random weights and inputs of
    the kernel's kind and what kernels_ref says the outputs must be under `model` (None:
    the exact result and its rigorous bound only; `reference_outputs`)."""
    from oracle.quants import quantize

    out_dim, in_dim, _ = shape
    if k.kind != "packed":
        x, packed = other_case_inputs(k, rng, shape)
        return x, packed, other_reference(k, x, packed, out_dim, in_dim, model)
    w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
    x = rng.standard_normal((shape[2], in_dim)).astype(np.float32)
    packed = packed_for(k, quantize(k.qtype, w))
    return x, packed, reference_outputs(x, packed, k, out_dim, in_dim, model)
