"""`skoracle footprint MODEL.gguf`: resident weight bytes under two loading policies.

Reads only the GGUF tensor table (harness.gguffile.check_gguf: every count checked against
the file size; no tensor data is touched) and prices every tensor under

- `dequant-fp32`: what SKaiNET 0.30.0's converter did — token_embd and output expanded to
  FP32 and both kept (a tied output, i.e. no output.weight tensor, is a second FP32 copy of
  token_embd); every other tensor as stored;
- `packed`: every packable weight kept in its GGUF blocks and the tied embedding/output
  stored once; block formats SKaiNET cannot pack are priced as FP32.

Float tensors (F32/F16/BF16) are priced as stored under both policies.

The verdict is on the PEAK, resident weights plus the largest transient copy each policy
makes: under `dequant-fp32`, `linearProject = matmul(x, transpose(W))` materializes a
transposed FP32 copy of the output projection on every forward pass (the ~0.67 GB that,
with the two resident copies, exceeds the SL2610's 1.9 GB); under `packed`, transpose is a
pre-transposed marker (no copy) and the only transient is one block relayout at load time,
bounded by the largest packed matrix.

The verdict (`judge`, shared by this command and the run's footprint leg) is the product's
claim: the packed policy fits the budget less the reserve at peak (exit 0; exit 1 when it
does not). Whether dequant-fp32 fits is reported as information. A reserve that leaves
nothing of the budget is refused (exit 2) before the file is read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from harness.errors import HarnessError
from harness.gguffile import SkainetGGUFWriter, check_gguf
from oracle.formats import FLOAT_TYPES, PACKED_TYPES, qtype

POLICIES = ("dequant-fp32", "packed")
EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"
PLAIN_FLOATS = FLOAT_TYPES
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, what: str = "size") -> int:
    """'1.9GB' / '512MiB' / '2000000' -> bytes (decimal kB/MB/GB, binary KiB/MiB/GiB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise HarnessError(f"{what}: cannot read {text!r} as a size (e.g. 1.9GB, 512MiB, 2000000)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 0:
        raise HarnessError(f"{what}: size must be a finite non-negative number, got {text!r}")
    return int(value)


def human(n: int) -> str:
    """Bytes as decimal units: 178.3 MB, 1.42 GB."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class TensorCost:
    """One tensor of the table and its resident bytes under each policy."""

    name: str
    type: str
    shape: tuple[int, ...]  # rows first: [out, in] for a weight matrix
    elements: int
    stored_bytes: int
    dequant_fp32: int
    packed: int
    note: str = ""


@dataclass(frozen=True)
class Footprint:
    path: str
    file_bytes: int
    tied_output: bool
    tensors: tuple[TensorCost, ...]

    def total(self, policy: str) -> int:
        key = policy.replace("-", "_")
        return sum(getattr(t, key) for t in self.tensors)

    def transient(self, policy: str) -> int:
        """The largest extra copy the policy makes while running (see the module docstring)."""
        if policy == "dequant-fp32":
            return max((t.dequant_fp32 for t in self.tensors if t.name.startswith(OUTPUT)),
                       default=0)
        return max((t.packed for t in self.tensors
                    if t.type in PACKED_TYPES and len(t.shape) == 2), default=0)

    def peak(self, policy: str) -> int:
        """Resident weights plus the largest transient copy: what the budget must hold."""
        return self.total(policy) + self.transient(policy)

    def embedding_output(self, policy: str) -> int:
        key = policy.replace("-", "_")
        return sum(getattr(t, key) for t in self.tensors if t.name.startswith((EMBEDDING,
                                                                                OUTPUT)))


def _ggml_type(raw: int) -> object:
    try:
        return GGMLQuantizationType(raw)
    except ValueError:
        return raw


def _type_name(tensor_type: object) -> str:
    return getattr(tensor_type, "name", str(tensor_type))


def _price(name: str, type_name: str, elements: int, stored: int) -> tuple[int, int, str]:
    fp32 = elements * 4
    if name in (EMBEDDING, OUTPUT):
        dequant = fp32
    elif type_name in PACKED_TYPES or type_name in PLAIN_FLOATS:
        dequant = stored
    else:
        dequant = fp32
    if type_name in PACKED_TYPES or type_name in PLAIN_FLOATS:
        return dequant, stored, ""
    return dequant, fp32, f"{type_name} is not a SKaiNET packed format: priced as FP32"


def read_footprint(path: str | os.PathLike[str]) -> Footprint:
    """Price every tensor of a GGUF file from its tensor table (HarnessError on bad input).

    The table comes from `check_gguf`, which checks every count and extent against the
    file size and keeps one record per tensor (gguf-py's reader would also build ~1 kB of
    objects per vocabulary entry, which the footprint never looks at)."""
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"{p}: no such file")
    layout = check_gguf(p)
    costs = []
    for t in layout.tensors:
        type_name = _type_name(_ggml_type(t.ggml_type))
        shape = tuple(reversed(t.dims))
        elements = math.prod(t.dims)
        dq, pk, note = _price(t.name, type_name, elements, t.n_bytes)
        costs.append(TensorCost(t.name, type_name, shape, elements, t.n_bytes, dq, pk, note))
    names = {c.name for c in costs}
    tied = OUTPUT not in names and EMBEDDING in names
    if tied:
        emb = next(c for c in costs if c.name == EMBEDDING)
        costs.append(TensorCost(f"{OUTPUT} (tied to {EMBEDDING})", emb.type, emb.shape,
                                emb.elements, 0, emb.elements * 4, 0,
                                "tied: a second FP32 copy under dequant-fp32, shared when packed"))
    return Footprint(str(p), layout.size, tied, tuple(costs))


#: The product's claim, and the one thing the verdict judges: the packed policy fits.
CLAIMED_POLICY = "packed"


@dataclass(frozen=True)
class Budget:
    """The memory budget, the part kept for the OS and runtime, and what is left."""

    total: int
    reserve: int = 0

    @property
    def available(self) -> int:
        return self.total - self.reserve

    def describe(self) -> str:
        return f"budget {human(self.total)}" + (f" - reserve {human(self.reserve)}"
                                               if self.reserve else "")


def parse_budget(budget: str, reserve: str = "0") -> Budget:
    """`--budget`/`--reserve` text -> Budget; HarnessError (exit 2) when nothing is left."""
    b = Budget(parse_size(budget, "--budget"), parse_size(reserve, "--reserve"))
    if b.available <= 0:
        raise HarnessError(f"--budget {budget} with --reserve {reserve} leaves "
                           f"{'nothing' if b.available == 0 else 'less than nothing'} for "
                           "the weights: give a budget larger than the reserve")
    return b


@dataclass(frozen=True)
class Verdict:
    """Which policies fit the budget at peak; only the packed policy's fit is the claim
    (that dequant-fp32 does not fit is the problem the packed loader solves: information)."""

    budget: Budget
    fits: dict[str, bool]

    @property
    def ok(self) -> bool:
        return self.fits[CLAIMED_POLICY]

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        return (f"{CLAIMED_POLICY} {'fits' if self.ok else 'does NOT fit'} "
                f"{self.budget.describe()}")


def judge(fp: Footprint, budget: Budget) -> Verdict:
    """The one footprint verdict, used by `skoracle footprint` and the run's footprint leg."""
    return Verdict(budget, {pol: fp.peak(pol) <= budget.available for pol in POLICIES})


def report_json(fp: Footprint, budget: Budget) -> dict:
    verdict = judge(fp, budget)
    return {
        "file": fp.path,
        "file_bytes": fp.file_bytes,
        "tied_output": fp.tied_output,
        "budget_bytes": budget.total,
        "reserve_bytes": budget.reserve,
        "verdict": {"claim": f"{CLAIMED_POLICY} fits", "ok": verdict.ok,
                    "exit_code": verdict.exit_code},
        "policies": {
            pol: {"total_bytes": fp.total(pol),
                  "embedding_output_bytes": fp.embedding_output(pol),
                  "transient_bytes": fp.transient(pol),
                  "peak_bytes": fp.peak(pol),
                  "fits": verdict.fits[pol]}
            for pol in POLICIES
        },
        "tensors": [{**asdict(t), "shape": list(t.shape)} for t in fp.tensors],
    }


def render(fp: Footprint, budget: Budget) -> None:
    from rich.table import Table

    from harness.console import make_console

    console = make_console()
    table = Table(title=f"{fp.path}: resident weight bytes", title_justify="left")
    table.add_column("tensor", no_wrap=True)
    table.add_column("type")
    table.add_column("shape", justify="right")
    table.add_column("stored", justify="right")
    table.add_column("dequant-fp32", justify="right")
    table.add_column("packed", justify="right")
    for t in fp.tensors:
        table.add_row(t.name, t.type, " x ".join(str(s) for s in t.shape), human(t.stored_bytes),
                      human(t.dequant_fp32), human(t.packed))
    table.add_section()
    table.add_row("token_embd + output", "", "", "", human(fp.embedding_output("dequant-fp32")),
                  human(fp.embedding_output("packed")), style="bold")
    table.add_row("total", "", "", human(fp.file_bytes), human(fp.total("dequant-fp32")),
                  human(fp.total("packed")), style="bold")
    console.print(table)
    avail = budget.available
    verdict = judge(fp, budget)
    for pol in POLICIES:
        peak = fp.peak(pol)
        fit = ("[green]fits[/]" if verdict.fits[pol] else
               "[red]exceeds[/]" if pol == CLAIMED_POLICY else "[yellow]exceeds[/]")
        console.print(f"{pol:>13}: {human(fp.total(pol)):>10} of weights + "
                      f"{human(fp.transient(pol)):>10} transient = peak {human(peak):>10}  "
                      f"{fit} {budget.describe()} ({100.0 * peak / avail:.0f}% of "
                      f"{human(avail)})")
    drop = fp.embedding_output("dequant-fp32"), fp.embedding_output("packed")
    console.print(f"token_embd + output: {human(drop[0])} -> {human(drop[1])}"
                  + (" (tied output)" if fp.tied_output else ""))
    console.print(f"verdict: {'[green]pass[/]' if verdict.ok else '[red]FAIL[/]'}: "
                  f"{verdict.summary()}")


def run(args: argparse.Namespace) -> int:
    budget = parse_budget(args.budget, args.reserve)
    fp = read_footprint(args.model)
    if args.json:
        print(json.dumps(report_json(fp, budget), indent=2))
    else:
        render(fp, budget)
    return judge(fp, budget).exit_code


FOOTPRINT_EXIT_CODES = """\
exit codes:
  0  the packed policy fits the budget at peak (dequant-fp32 not fitting is information)
  1  the packed policy does not fit
  2  bad input: unreadable GGUF, unreadable size, or a reserve that leaves nothing"""


#: the SL2610's RAM: `--budget`'s default
BOARD_BUDGET = "1.9GB"


def add_budget_options(p: argparse.ArgumentParser) -> None:
    """`--budget` and `--reserve`, the same for `footprint` and `run`."""
    p.add_argument("--budget", default=BOARD_BUDGET, metavar="SIZE",
                   help="memory budget, decimal (GB) or binary (GiB) units (default "
                        "%(default)s, the SL2610's RAM)")
    p.add_argument("--reserve", default="0", metavar="SIZE",
                   help="part of the budget kept for the OS and runtime; must leave something "
                        "(default %(default)s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "footprint",
        help="resident weight bytes of a GGUF under dequant-fp32 vs packed loading",
        description=__doc__,
        epilog=FOOTPRINT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_budget_options(p)
    p.add_argument("model", help="the .gguf file (only its tensor table is read)")
    p.add_argument("--json", action="store_true", help="print JSON to stdout instead of a table")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------
# a FunctionGemma-shaped model for the planner's default run and its tests

N_LAYER, N_EMBD, N_FF, N_HEAD, N_KV, HEAD_DIM, VOCAB = 18, 640, 2048, 4, 1, 256, 262144
ALIGN = 32


def functiongemma_tensors(tied: bool = True) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape [rows, cols], type) of llama.cpp's Q5_K_M FunctionGemma-270M file
    (REFERENCE facts: 18 gemma3 blocks, n_embd 640, FFN 2048, 4 heads, 1 KV head, head dim
    256, vocab 262144, token_embd Q8_0 tied to the output)."""
    t = [("token_embd.weight", (VOCAB, N_EMBD), "Q8_0")]
    q, kv = N_HEAD * HEAD_DIM, N_KV * HEAD_DIM
    for i in range(N_LAYER):
        b = f"blk.{i}."
        t += [
            (b + "attn_norm.weight", (N_EMBD,), "F32"),
            (b + "attn_q.weight", (q, N_EMBD), "Q5_0"),
            (b + "attn_k.weight", (kv, N_EMBD), "Q5_0"),
            (b + "attn_v.weight", (kv, N_EMBD), "Q8_0"),
            (b + "attn_q_norm.weight", (HEAD_DIM,), "F32"),
            (b + "attn_k_norm.weight", (HEAD_DIM,), "F32"),
            (b + "attn_output.weight", (N_EMBD, q), "Q5_K"),
            (b + "post_attention_norm.weight", (N_EMBD,), "F32"),
            (b + "ffn_norm.weight", (N_EMBD,), "F32"),
            (b + "ffn_gate.weight", (N_FF, N_EMBD), "Q5_1" if i % 3 == 0 else "Q5_0"),
            (b + "ffn_up.weight", (N_FF, N_EMBD), "Q5_0"),
            (b + "ffn_down.weight", (N_EMBD, N_FF), "Q6_K" if i % 2 == 0 else "Q5_K"),
            (b + "post_ffw_norm.weight", (N_EMBD,), "F32"),
        ]
    t.append(("output_norm.weight", (N_EMBD,), "F32"))
    if not tied:
        t.append(("output.weight", (VOCAB, N_EMBD), "Q8_0"))
    return t


def nbytes(shape: tuple[int, ...], type_name: str) -> int:
    """Packed bytes of a tensor of numpy shape `shape` stored as `type_name`."""
    qt = qtype(type_name)
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * qt.row_bytes(shape[-1])


def write_shaped_gguf(path: Path, tensors: list[tuple[str, tuple[int, ...], str]]) -> int:
    """A complete GGUF with these tensor shapes whose data is all zeros, written as a sparse
    file (the ~250 MB data area takes no disk blocks); returns its size in bytes."""
    w = SkainetGGUFWriter(path, "gemma3")
    w.add_block_count(N_LAYER)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    offset = 0
    for name, shape, type_name in tensors:
        n = nbytes(shape, type_name)
        w.add_tensor_info(name, shape, np.dtype(np.float32), n,
                          raw_dtype=GGMLQuantizationType[type_name])
        last_offset, last_n = offset, n
        offset += -(-n // ALIGN) * ALIGN
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header = path.stat().st_size
    size = -(-header // ALIGN) * ALIGN + last_offset + last_n
    with open(path, "r+b") as f:
        f.truncate(size)
    return size
