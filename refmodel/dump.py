"""Activation dumps of the reference forward, named like llama.cpp's graph tensors.

Contract with the llama.cpp side of issue 14 (the comparison reads these files as is):

Layout of a dump directory DIR (written by `skoracle reference ... --dump DIR`):

- `DIR/meta.json`: {"model", "semantics", "semantics_options" (e.g. {"rounding": "x86"};
  absent in older dumps), "load", "tokens" (the ids fed, one per step), "n_steps",
  "format": "skoracle-refdump-1"}; a llama-ref dump has "semantics": "llama.cpp" and also
  "kv" (f16|f32) and "quantizer" (its Q8 activation quantizer, "x86" for the AVX2 build).
- `DIR/step-NNN.npz` (NNN = 000, 001, ...): one file per decode step; step k feeds
  tokens[k] at position k (prompt tokens are fed one per step too; no batching). Each
  array is float32, C-contiguous, and its numpy shape is llama.cpp's ggml `ne` reversed,
  so the row-per-token axis comes first for every per-token tensor:
  `inp_scaled` (1, n_embd); `Qcur-L` (1, n_head, head_dim); `kq-L` (n_head, 1, n_kv);
  `result_output` (1, n_vocab).

Names are llama.cpp's `cb(cur, name, il)` names as its eval callback reports them
(`name-il` for il >= 0, bare `name` for il = -1), from src/models/gemma3.cpp and
src/llama-graph.cpp (build_qkv, build_attn_mha, build_ffn) of the llama.cpp vendored in
llama-cpp-python 0.3.36. Where llama.cpp names two tensors alike within a layer, the
n-th repeat carries `#n`: `Qcur-L` is the projection, `Qcur-L#1` the same after RoPE.
Per layer L, in compute order:

    attn_norm-L  Qcur-L  Kcur-L  Vcur-L  Qcur_normed-L  Kcur_normed-L  Qcur-L#1  Kcur-L#1
    kq-L  kq_soft_max-L  kqv_out-L  attn_post_norm-L  sa_out-L  ffn_norm-L
    ffn_up-L  ffn_gate-L  ffn_geglu-L  ffn_out-L  ffn_post_norm-L  l_out-L

framed by `inp_scaled` (first) and `result_norm`, `result_output` (last).
`kq-L` holds the raw scores of the keys the query may attend to after the query scaling
(llama.cpp scales Q by f_attention_scale before the product, kq_scale is 1), positions
max(0, pos-n_swa+1) .. pos on sliding-window layers and 0 .. pos on global layers, oldest
first; llama.cpp's padded, -inf-masked columns are absent (slice them off before
comparing). `kq_soft_max-L` is over the same columns. `Vcur-L` is the projection before
the KV cache (no fp16 rounding). `ffn_out-L` is ffn_down's output. `kqv_out-L` is the
attention output before attn_output (wo), shape (1, n_head*head_dim).
With flash attention on, llama.cpp has no kq/kq_soft_max: skip those names.
"""

import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels_ref import activations
from kernels_ref.bounds import gamma
from refmodel.errors import RefmodelError

FORMAT = "skoracle-refdump-1"
#: the `semantics` a llama-ref dump's meta.json carries
LLAMA_CPP = "llama.cpp"

META = "meta.json"
#: how much a relative difference already present upstream may grow through one op
#: before the diff calls the op itself divergent (RMSNorm, RoPE, softmax and the residual
#: adds grow a relative perturbation by at most ~2 in the max norm; a margin of 2 over that)
GROWTH = 4.0


def step_file(step: int) -> str:
    return f"step-{step:03d}.npz"


class DumpWriter:
    """Writes a dump directory: each step into a temporary directory, renamed into place by
    `finish()`; `abort()` removes the partial directory. Refuses an existing DIR."""

    def __init__(self, directory: str | Path, meta: dict) -> None:
        self.final = Path(directory)
        if self.final.exists():
            raise RefmodelError(f"{self.final}: already exists; --dump writes a new directory")
        parent = self.final.parent
        if not parent.is_dir():
            raise RefmodelError(f"{parent}: no such directory for --dump")
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=parent))
        except OSError as exc:
            raise RefmodelError(f"--dump {self.final}: cannot write in {parent}: "
                               f"{exc.strerror or exc}") from None
        self.meta = {"format": FORMAT, **meta}
        self.steps = 0

    def step(self, step: int) -> Callable[[str, np.ndarray], None]:
        """The callback collecting step `step`'s tensors (written when the next step starts)."""
        self._flush()
        self._current: dict[str, np.ndarray] = {}
        self._index = step

        def cb(name: str, a: np.ndarray) -> None:
            self._current[name] = np.ascontiguousarray(a, dtype=np.float32)
        return cb

    def _flush(self) -> None:
        cur = getattr(self, "_current", None)
        if cur:
            try:
                np.savez(self.tmp / step_file(self._index), **cur)
            except OSError as exc:
                raise RefmodelError(f"--dump {self.final}: cannot write step {self._index}: "
                                   f"{exc.strerror or exc}") from None
            self.steps = self._index + 1
            self._current = {}

    def finish(self, **extra: object) -> Path:
        self._flush()
        meta = {**self.meta, **extra, "n_steps": self.steps}
        try:
            (self.tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
            os.replace(self.tmp, self.final)
        except OSError as exc:
            raise RefmodelError(f"--dump {self.final}: cannot finish the dump: "
                               f"{exc.strerror or exc}") from None
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_meta(directory: str | Path) -> dict:
    d = Path(directory)
    try:
        meta = json.loads((d / META).read_text())
    except FileNotFoundError:
        raise RefmodelError(f"{d}: not a reference dump (no {META})") from None
    except (OSError, ValueError) as exc:
        raise RefmodelError(f"{d / META}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise RefmodelError(f"{d / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def iter_tensors(directory: str | Path, n_steps: int) -> Iterator[tuple[int, str, np.ndarray]]:
    """(step, name, array) in compute order."""
    d = Path(directory)
    for step in range(n_steps):
        path = d / step_file(step)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = [(name, z[name]) for name in z.files]
        except FileNotFoundError:
            raise RefmodelError(f"{path}: missing (meta.json says {n_steps} steps)") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise RefmodelError(f"{path}: unreadable, truncated or not an .npz "
                               f"({type(exc).__name__}: {exc})") from None
        for name, a in arrays:
            yield step, name, a


def reduction_length(name: str, meta: dict, shape: tuple[int, ...]) -> int:
    """How many terms the op that produced `name` sums per element (1 for elementwise ops):
    the K of gamma_K in the bound."""
    base = name.split("-")[0]
    if base in ("Qcur", "Kcur", "Vcur") and "#" not in name or base in ("ffn_up", "ffn_gate",
                                                                         "result_output"):
        return int(meta["n_embd"])
    if base == "ffn_out":
        return int(meta["n_ff"])
    if base == "kq":
        return int(meta["head_dim"])
    if base in ("kqv_out", "kq_soft_max"):
        return int(meta.get("n_kv_max", shape[-1]))
    if base in ("attn_norm", "Qcur_normed", "Kcur_normed", "attn_post_norm", "ffn_norm",
                "ffn_post_norm", "result_norm"):
        return int(shape[-1])
    return 4  # RoPE, GELU, residual adds, scaling: a few roundings per element


@dataclass
class TensorDiff:
    step: int
    name: str
    max_abs: float
    scale: float
    bound: float
    index: tuple[int, ...]
    #: why the bound does not judge this tensor: its op's rounded inputs differ between the
    #: two dumps (see rounding_flips); None when it is judged
    flipped: str | None = None

    @property
    def rel(self) -> float:
        return self.max_abs / self.scale if self.scale else (0.0 if not self.max_abs else
                                                            float("inf"))

    def as_dict(self) -> dict:
        return {"step": self.step, "tensor": self.name, "max_abs_diff": self.max_abs,
                "scale": self.scale, "rel_diff": self.rel, "bound": self.bound,
                "index": list(self.index), "not_judged": self.flipped}


def common_steps(ma: dict, mb: dict) -> int:
    """Leading steps both dumps were fed the same token (later steps are not comparable)."""
    ta, tb = list(ma.get("tokens") or []), list(mb.get("tokens") or [])
    n = min(int(ma["n_steps"]), int(mb["n_steps"]), len(ta), len(tb))
    for i in range(n):
        if ta[i] != tb[i]:
            return i
    return n


def describe(meta: dict) -> str:
    """What computed a dump: 'ggml(rounding=x86), load packed' or 'llama.cpp (kv f16,
    quantizer x86)'."""
    if meta.get("semantics") == LLAMA_CPP:
        quantizer, kv = _ggml_like(meta) or ("?", "?")
        return f"llama.cpp (kv {kv}, quantizer {quantizer})"
    opts = meta.get("semantics_options") or {}
    inner = ", ".join(f"{k}={v}" for k, v in opts.items())
    sem = f"{meta.get('semantics')}({inner})" if inner else str(meta.get("semantics"))
    return f"{sem}, load {meta.get('load', '?')}"


def _ggml_like(meta: dict) -> tuple[str, str] | None:
    """(activation quantizer, K/V type) of a dump that computes in ggml's CPU order (the
    reference's `ggml` semantics, or llama.cpp itself); None for the other semantics."""
    if meta.get("semantics") == LLAMA_CPP:  # dumps from before the key: the x86 AVX2 build
        return str(meta.get("quantizer", "x86")), str(meta.get("kv", "f16"))
    if meta.get("semantics") == "ggml":
        return str((meta.get("semantics_options") or {}).get("rounding", "roundf")), "f16"
    return None


def by_design(ma: dict, mb: dict) -> str | None:
    """Why two dumps differ by construction (None when they compute like for like: the
    same semantics and options, or the `ggml` semantics with llama.cpp's quantizer against
    llama.cpp with an f16 K/V cache). A divergence between a by-design pair shows where
    the two orders part, not a defect."""
    ga, gb = _ggml_like(ma), _ggml_like(mb)
    if ga is not None and gb is not None:
        reasons = []
        if ga[0] != gb[0]:
            reasons.append(f"activation quantizer {ga[0]} vs {gb[0]} (Q8 codes differ)")
        if ga[1] != gb[1]:
            reasons.append(f"K/V cache {ga[1]} vs {gb[1]}")
        return "; ".join(reasons) or None
    same = (ma.get("semantics") == mb.get("semantics")
            and (ma.get("semantics_options") or {}) == (mb.get("semantics_options") or {}))
    if same:
        return None
    quantizes = [m for m, g in ((ma, ga), (mb, gb)) if g is not None]
    if len(quantizes) == 1:
        return (f"{describe(quantizes[0])} quantizes activations to Q8 and rounds K/V to fp16; "
                f"{describe(mb if quantizes[0] is ma else ma)} does not")
    return f"different float orders: {describe(ma)} vs {describe(mb)}"


#: ggml-order ops that round an input to a grid before computing: dumped tensor base ->
#: (input tensor base, grid). "q8": the matmul's activation quantizer (Q8_0/Q8_1 codes and
#: fp16 scale per 32, Q8_K codes per 256); "fp16": GELU's table index, the attention
#: product's query (after the 1/sqrt(head_dim) scaling) and the probabilities times V.
ROUNDED_INPUT: dict[str, tuple[str, str]] = {
    "Qcur": ("attn_norm", "q8"), "Kcur": ("attn_norm", "q8"), "Vcur": ("attn_norm", "q8"),
    "attn_post_norm": ("kqv_out", "q8"), "ffn_up": ("ffn_norm", "q8"),
    "ffn_gate": ("ffn_norm", "q8"), "ffn_out": ("ffn_geglu", "q8"),
    "result_output": ("result_norm", "q8"), "ffn_geglu": ("ffn_gate", "fp16"),
    "kq": ("Qcur#1", "fp16"), "kqv_out": ("kq_soft_max", "fp16"),
}
#: the fp16 K/V cache entry behind each attention product
CACHED: dict[str, str] = {"kq": "Kcur#1", "kqv_out": "Vcur"}


def _split(name: str) -> tuple[str, str]:
    """'Qcur-3#1' -> ('Qcur#1', '3'); 'result_norm' -> ('result_norm', '')."""
    head, _, rep = name.partition("#")
    base, _, layer = head.partition("-")
    return base + (f"#{rep}" if rep else ""), layer


def _join(base: str, layer: str) -> str:
    head, _, rep = base.partition("#")
    return (f"{head}-{layer}" if layer else head) + (f"#{rep}" if rep else "")


def _grid(x: np.ndarray, grid: str, rounding: str) -> list[np.ndarray]:
    """What rounding `x` to `grid` produces (codes and stored scales), to compare."""
    if grid == "fp16":
        with np.errstate(over="ignore"):
            return [x.astype(np.float16)]
    row = np.ascontiguousarray(x, dtype=np.float32).reshape(1, -1)
    out = []
    if row.shape[1] % 32 == 0:
        q = activations.ggml_q8_0(row, rounding)
        out += [q["qs"], q["d"]]
    if row.shape[1] % 256 == 0:
        q = activations.ggml_q8_k(row)
        out += [q["qs"], q["d"]]
    return out


def rounding_flips(name: str, now: dict[str, tuple[np.ndarray, np.ndarray]],
                   cache_flipped: dict[str, str], ra: str, rb: str,
                   head_dim: int) -> str | None:
    """Whether the op producing `name` rounds an input that lands on different grid values
    in the two dumps (a Q8 code or scale, an fp16 value): then the two outputs differ by
    whole grid steps, which no float-order bound covers. llama.cpp's AVX2 sums differ from
    the modelled order by float rounding, and such a difference moves a value across a
    rounding boundary now and then: a known difference, found here from the dumps'
    own inputs (never assumed). Returns the reason, or None (the tensor is judged)."""
    base, layer = _split(name)
    if base not in ROUNDED_INPUT:
        return None
    src, grid = ROUNDED_INPUT[base]
    pair = now.get(_join(src, layer))
    if pair is None:
        return None
    xa, xb = pair
    if base == "kq":  # ggml scales Q before the product, then rounds it to fp16
        scale = np.float32(1) / np.sqrt(np.float32(head_dim))
        xa, xb = (xa * scale).astype(np.float32), (xb * scale).astype(np.float32)
    ga, gb = _grid(xa, grid, ra), _grid(xb, grid, rb)
    moved = sum(int((u != v).sum()) for u, v in zip(ga, gb, strict=True))
    if moved:
        what = "Q8 code/scale" if grid == "q8" else "fp16 value"
        return (f"{moved} {what}{'s' if moved > 1 else ''} of its input {_join(src, layer)} "
                f"differ{'' if moved > 1 else 's'}")
    cached = CACHED.get(base)
    if cached and _join(cached, layer) in cache_flipped:
        return cache_flipped[_join(cached, layer)]
    return None


def diff_dumps(a: str | Path, b: str | Path) -> tuple[TensorDiff | None, list[TensorDiff]]:
    """Walk two dumps in compute order over the steps both were fed the same tokens;
    return the first tensor beyond its bound (or None) and every tensor's difference up to
    and including it.

    Bound for tensor t (absolute, on its largest element difference):
        (gamma_{2K+8} + GROWTH * r) * max(|a_t|, |b_t|)
    where K is the op's reduction length (reduction_length), gamma is kernels_ref.bounds'
    float32 gamma (the same form as its matmul bound, with sum|x||w| replaced by the
    tensor's largest magnitude) and r the largest relative difference of any tensor
    before t. It is a derived tolerance, not a proof: it assumes no catastrophic
    cancellation in a matmul and at most GROWTH-fold growth of an upstream difference.

    Between two dumps that both compute in ggml's order like for like (by_design is None:
    the `ggml` semantics with llama.cpp's quantizer, llama.cpp itself), a tensor whose op
    rounds an input that already lands on different grid values in the two dumps
    (rounding_flips) is not judged by the bound: its row carries the reason, and its
    difference still feeds r, so the tensors after it are judged with that much more room.
    """
    ma, mb = read_meta(a), read_meta(b)
    n = common_steps(ma, mb)
    if n == 0:
        raise RefmodelError(f"{a} and {b} were fed different first tokens: "
                           f"{ma.get('tokens')} vs {mb.get('tokens')}")
    ga, gb = _ggml_like(ma), _ggml_like(mb)
    flips = ga is not None and gb is not None and by_design(ma, mb) is None
    rows: list[TensorDiff] = []
    r = 0.0
    it_b = iter_tensors(b, n)
    now: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cache_flipped: dict[str, str] = {}
    last_step = -1
    for step, name, xa in iter_tensors(a, n):
        sb, nb, xb = next(it_b, (None, None, None))
        if (sb, nb) != (step, name):
            raise RefmodelError(f"{b}: step {step} has {nb!r} where {a} has {name!r}")
        if xa.shape != xb.shape:
            raise RefmodelError(f"step {step} {name}: shapes {xa.shape} and {xb.shape} differ")
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(xa.astype(np.float64) - xb.astype(np.float64))
        d = np.where(np.isnan(xa) & np.isnan(xb), 0.0, np.where(np.isnan(d), np.inf, d))
        idx = np.unravel_index(int(np.argmax(d)), d.shape) if d.size else ()
        scale = float(max(np.abs(xa).max(initial=0), np.abs(xb).max(initial=0)))
        k = reduction_length(name, ma, xa.shape)
        bound = (gamma(2 * k + 8) + GROWTH * r) * scale
        td = TensorDiff(step, name, float(d.max(initial=0)), scale, bound,
                        tuple(int(i) for i in idx))
        if flips:
            if step != last_step:
                now, last_step = {}, step
            now[name] = (xa, xb)
            base, layer = _split(name)
            if base in ("Kcur#1", "Vcur") and name not in cache_flipped and not np.array_equal(
                    xa.astype(np.float16), xb.astype(np.float16)):
                cache_flipped[name] = (f"its fp16 {base.split('#')[0]} cache differs from "
                                       f"step {step}")
            if td.max_abs > bound:
                td.flipped = rounding_flips(name, now, cache_flipped, ga[0], gb[0],
                                            int(ma.get("head_dim") or mb.get("head_dim") or 1))
        rows.append(td)
        if td.max_abs > bound and td.flipped is None:
            return td, rows
        r = max(r, td.rel)
    return None, rows
