"""The Gemma-3 text forward from a GGUF's packed weights, one token per step, greedy decode.

The graph is llama.cpp's (src/models/gemma3.cpp of the llama.cpp vendored in
llama-cpp-python 0.3.36): embedding rows gathered from the packed table and scaled by
sqrtf(n_embd); per layer RMSNorm, Q/K/V projections, q/k RMSNorms, NEOX RoPE (local base
on sliding-window layers, the GGUF's freq_base on global ones), Q scaled by
f_attention_scale, GQA attention over the KV cache (the last n_swa positions on
sliding-window layers), attn_output, post-attention norm, residual, FFN norm,
gelu_tanh(gate) * up, ffn_down, post-FFN norm, residual; final norm and the tied lm_head
straight from the packed token_embd bytes (optional final soft-capping).

Every matmul runs through kernels_ref.matmul_wt with the chosen `semantics` (`exact`,
`skainet_scalar`, `skainet_panama`, `skainet_neon`, `ggml`), or `fast` (`fast_matmul`): the
dequantized weights times x in float32, summed in 16 lanes then a pair tree
(`fast_reference`, the definition, which the compiled twin in oracle.native matches bit for
bit and runs straight from the packed bytes). The other ops are
float32 in ggml's order (refmodel.ops says which are followed exactly); `ggml` semantics
also rounds the K/V cache and the attention operands to fp16 and uses ggml's fp16 GELU
table, as llama.cpp's CPU backend does without flash attention.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels_ref import gather_rows, matmul_wt
from kernels_ref.semantics import REGISTRY, Exact, lane_tree_sum
from oracle import OracleError, dequantize, native, unpack
from refmodel import ops
from refmodel.arch import check_context, context_length
from refmodel.errors import RefmodelError
from refmodel.weights import EMBEDDING, Matrix, Weights

F32 = np.float32
FAST = "fast"
#: semantics names the forward accepts: kernels_ref's whole-model ones (those that refuse no
#: packed format; skainet_q8_reference models two kernels only) plus `fast` (`fast_reference`)
SEMANTICS_NAMES: tuple[str, ...] = (*(n for n, c in REGISTRY.items() if not c.refused), FAST)
#: weight elements one `fast` chunk covers (the NumPy definition expands them to float32)
FAST_CHUNK_ELEMENTS = 1 << 20
#: float32 accumulators of the `fast` order (lane l: elements l, l+FAST_LANES, ...)
FAST_LANES = 16

DumpFn = Callable[[str, np.ndarray], None]


@dataclass
class DecodeResult:
    """A greedy decode: generated ids, the logits that chose each, their top-2 margins.

    Timing as `llama-ref` counts it: `generate_seconds` is the wall time of the forward
    passes whose logits chose a token (one per generated token: the last prompt step and
    every generated step fed back), `prompt_seconds` that of the other prompt steps.
    `end_token`: the stop id that ended the decode before `n` (the last of `tokens`), None
    when all `n` were generated."""

    prompt: list[int]
    tokens: list[int]
    logits: np.ndarray  # float32 (n, n_vocab)
    margins: list[float]
    seconds: float  # the whole decode
    steps: int = 0  # forward passes (prompt tokens + generated tokens fed)
    extra: dict = field(default_factory=dict)
    generate_seconds: float = 0.0
    prompt_seconds: float = 0.0
    end_token: int | None = None

    @property
    def prompt_steps(self) -> int:
        """Forward passes that only fed the prompt (their logits chose nothing)."""
        return max(0, len(self.prompt) - 1)

    @property
    def tok_per_s(self) -> float:
        """Generated tokens over the wall time of the passes that chose them."""
        t = self.generate_seconds
        return len(self.tokens) / t if t > 0 else float("inf")


#: progress(steps done, total steps, tokens generated, seconds generating, seconds so far)
ProgressFn = Callable[[int, int, int, float, float], None]


#: the options a semantics takes on the command line (`--lanes`, `--reduction`,
#: `--rounding`), by semantics name
SEMANTICS_OPTIONS: dict[str, tuple[str, ...]] = {"skainet_panama": ("lanes", "reduction"),
                                                 "ggml": ("rounding",)}


def host_rounding(machine: str | None = None) -> str:
    """The Q8 activation quantizer llama.cpp's CPU backend runs on this machine (see
    kernels_ref.activations.ROUNDINGS): x86 on x86-64, NEON's ties-to-even on AArch64,
    the reference's roundf elsewhere."""
    m = (machine or platform.machine()).lower()
    return {"x86_64": "x86", "amd64": "x86", "aarch64": "even", "arm64": "even"}.get(m, "roundf")


def semantics_options(name: str, lanes: int | None = None, reduction: str | None = None,
                      rounding: str | None = None) -> dict:
    """The kernels_ref options of semantics `name` from its command-line values, checked
    (RefmodelError naming the option): skainet_panama's lanes and reduction (defaults: the
    semantics' own, 8 and sequential), ggml's rounding (default: host_rounding(), what
    llama.cpp does on this CPU). An option given to a semantics without it is refused."""
    if name not in SEMANTICS_NAMES:
        raise RefmodelError(f"unknown semantics {name!r}: expected one of "
                           f"{', '.join(SEMANTICS_NAMES)}")
    given = {k: v for k, v in (("lanes", lanes), ("reduction", reduction),
                               ("rounding", rounding)) if v is not None}
    takes = SEMANTICS_OPTIONS.get(name, ())
    for key in given:
        if key not in takes:
            owner = next(s for s, keys in SEMANTICS_OPTIONS.items() if key in keys)
            raise RefmodelError(f"--{key} applies to --semantics {owner}, not {name}")
    if name == "ggml":
        given.setdefault("rounding", host_rounding())
    if name not in REGISTRY:
        return given
    cls = REGISTRY[name]
    opts = {k: given.get(k, cls.params[k]) for k in takes}
    try:
        cls(**opts)
    except OracleError as exc:
        raise RefmodelError(str(exc)) from None
    return opts


def describe_semantics(name: str, options: dict) -> str:
    """'skainet_panama(lanes=4, reduction=pairwise)', or the bare name without options."""
    inner = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"{name}({inner})" if inner else name


def top2_margin(logits: np.ndarray) -> float:
    """Largest minus second-largest logit (0 for a tie); llama-ref's margins too."""
    two = np.partition(np.asarray(logits, dtype=np.float64), -2)[-2:]
    return float(two[1] - two[0])


def fast_rows(fmt: str, raw: np.ndarray) -> np.ndarray:
    """Packed rows as float32 weights, equal to oracle.dequantize: for the formats whose
    weight is code * fp16 scale (exact in float32) straight from the unpacked codes, which
    is an order of magnitude quicker than the general path."""
    if fmt in Exact.SCALED_CODES:
        p = unpack(fmt, raw)
        if np.isfinite(p["d"]).all():
            return (p["qs"].astype(F32) * p["d"][..., None]).reshape(raw.shape[0], -1)
    return dequantize(fmt, raw)


#: per dumped tensor (name without its layer), the weights its op reads, "{}" the layer
OP_WEIGHTS: dict[str, tuple[str, ...]] = {
    "inp_scaled": (EMBEDDING,), "attn_norm": ("blk.{}.attn_norm.weight",),
    "Qcur": ("blk.{}.attn_q.weight",), "Kcur": ("blk.{}.attn_k.weight",),
    "Vcur": ("blk.{}.attn_v.weight",), "Qcur_normed": ("blk.{}.attn_q_norm.weight",),
    "Kcur_normed": ("blk.{}.attn_k_norm.weight",),
    "attn_post_norm": ("blk.{}.attn_output.weight", "blk.{}.post_attention_norm.weight"),
    "ffn_norm": ("blk.{}.ffn_norm.weight",), "ffn_up": ("blk.{}.ffn_up.weight",),
    "ffn_gate": ("blk.{}.ffn_gate.weight",), "ffn_out": ("blk.{}.ffn_down.weight",),
    "ffn_post_norm": ("blk.{}.post_ffw_norm.weight",), "result_norm": ("output_norm.weight",),
}


def op_weights(name: str, w: Weights) -> tuple[str, ...]:
    """The weight tensors the op producing dump tensor `name` reads (none for RoPE,
    attention, GELU and the residual adds)."""
    if name == "result_output":
        return (w.output().name,)
    base, _, layer = name.split("#")[0].partition("-")
    if "#" in name:  # the RoPE'd repeat of Qcur/Kcur
        return ()
    return tuple(t.format(layer) for t in OP_WEIGHTS.get(base, ()))


def fast_reference(x: np.ndarray, fmt: str, raw: np.ndarray) -> np.ndarray:
    """The `fast` order, defined: float32 (batch, rows) = x (batch, in) times the rows'
    dequantized weights, each product rounded to float32, summed in float32 by
    `lane_tree_sum` with FAST_LANES lanes."""
    w = dequantize(fmt, raw)
    with np.errstate(all="ignore"):
        return lane_tree_sum(x[:, None, :] * w[None], FAST_LANES)


def fast_matmul(x: np.ndarray, m: Matrix) -> np.ndarray:
    """x (batch, cols) . W^T in the `fast` order: the compiled twin straight from the
    packed rows, else `fast_reference` a bounded chunk of rows at a time."""
    x = np.ascontiguousarray(x, dtype=F32)
    got = native.gemv(FAST, m.type, x, m.data) if m.cols % FAST_LANES == 0 else None
    if got is not None:  # the twin reads the packed rows in place, a tile at a time
        return got
    y = np.empty((x.shape[0], m.rows), F32)
    step = max(1, FAST_CHUNK_ELEMENTS // m.cols)
    for start in range(0, m.rows, step):
        stop = min(m.rows, start + step)
        y[:, start:stop] = fast_reference(x, m.type, m.data[start:stop])
    return y


class Gemma3Reference:
    """A Gemma-3 GGUF ready to run: `forward` one step, `decode` greedily."""

    def __init__(self, path: str | Path, semantics: str = "exact", load: str = "packed",
                 options: dict | None = None) -> None:
        self.options = semantics_options(semantics, **(options or {}))
        self.semantics = semantics
        self.w = Weights(path, load)
        self.hp = self.w.hp
        self.kv_f16 = semantics == "ggml"
        self.embd_scale = np.sqrt(F32(self.hp.n_embd))  # sqrtf(n_embd)
        self.norms = {name: self.w.norm(name) for name, m in self.w.tensors.items()
                      if m.type == "F32" and m.rows == 1}
        self.reset()

    def reset(self) -> None:
        """Empty the KV cache."""
        hp = self.hp
        self.cache_k = [np.zeros((0, hp.n_head_kv, hp.head_dim), F32) for _ in range(hp.n_layer)]
        self.cache_v = [np.zeros((0, hp.n_head_kv, hp.head_dim), F32) for _ in range(hp.n_layer)]

    # ---------------------------------------------------------------------------- matmuls

    def matmul(self, x: np.ndarray, m: Matrix) -> np.ndarray:
        """x (1, cols) . W^T in the chosen semantics; float32 (1, rows)."""
        if self.semantics != FAST:
            return matmul_wt(x, m.data, m.type, m.rows, m.cols, semantics=self.semantics,
                             **self.options)
        return fast_matmul(x, m)

    def lm_head(self, x: np.ndarray) -> np.ndarray:
        """Logits: the packed output (tied token_embd) or, under dequant-fp32, SKaiNET
        0.30.0's transposed FP32 copy (float64 sums rounded once, = `exact`; BLAS for fast)."""
        if self.w.load == "packed":
            return self.matmul(x, self.w.output())
        wt = self.w.fp32["output.T"]
        if self.semantics == FAST:
            return np.einsum("bk,kr->br", x, wt)
        y = np.empty((x.shape[0], wt.shape[1]), F32)
        step = max(1, FAST_CHUNK_ELEMENTS // wt.shape[0])
        for start in range(0, wt.shape[1], step):
            stop = min(wt.shape[1], start + step)
            y[:, start:stop] = np.einsum("bk,kr->br", x, wt[:, start:stop], dtype=np.float64)
        return y

    def embed(self, token: int) -> np.ndarray:
        """inp_scaled: the token's row, dequantized, times sqrtf(n_embd); (1, n_embd)."""
        if self.w.load == "dequant-fp32":
            return (self.w.fp32[EMBEDDING][[token]] * self.embd_scale).astype(F32)
        e = self.w.tensors[EMBEDDING]
        return gather_rows(e.data, e.type, e.rows, e.cols, np.array([token]),
                           scale=self.embd_scale)

    # ---------------------------------------------------------------------------- forward

    def forward(self, token: int, pos: int, dump: DumpFn | None = None) -> np.ndarray:
        """Feed `token` at position `pos` (the cache must hold positions 0..pos-1); returns
        the logits float32 (n_vocab,). `dump(name, array)` receives every named tensor."""
        self._check_step(token, pos)
        cb = self._checked(dump, pos)
        x = self.embed(token)
        cb("inp_scaled", x)
        for il in range(self.hp.n_layer):
            sa = self._attention_block(il, x, pos, cb)
            x = self._ffn_block(il, sa, cb)
        x = ops.rms_norm(x, self.norms["output_norm.weight"], self.hp.rms_eps)
        cb("result_norm", x)
        logits = self._soft_capped(self.lm_head(x))
        cb("result_output", logits)
        return logits[0]

    def _check_step(self, token: int, pos: int) -> None:
        """A token inside the vocabulary, at the position that follows the cache."""
        if not 0 <= token < self.hp.n_vocab:
            raise RefmodelError(f"token id {token} is out of range for a vocabulary of "
                               f"{self.hp.n_vocab}")
        if pos != self.cache_k[0].shape[0]:
            raise RefmodelError(f"position {pos} does not follow the cache "
                               f"({self.cache_k[0].shape[0]} positions held)")

    def _layer_norm(self, il: int, short: str) -> np.ndarray:
        """The F32 norm weight `blk.{il}.{short}.weight`."""
        return self.norms[f"blk.{il}.{short}.weight"]

    def _qkv(self, il: int, h: np.ndarray, pos: int, cb: DumpFn
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Layer il's Q (normed, RoPE'd, scaled), K (normed, RoPE'd) and V of the normed
        input h, each (1, heads, head_dim)."""
        hp, w = self.hp, self.w
        eps, nh, nkv, hd = hp.rms_eps, hp.n_head, hp.n_head_kv, hp.head_dim
        q = self.matmul(h, w.layer(il, "attn_q")).reshape(1, nh, hd)
        cb(f"Qcur-{il}", q)
        k = self.matmul(h, w.layer(il, "attn_k")).reshape(1, nkv, hd)
        cb(f"Kcur-{il}", k)
        v = self.matmul(h, w.layer(il, "attn_v")).reshape(1, nkv, hd)
        cb(f"Vcur-{il}", v)
        q = ops.rms_norm(q, self._layer_norm(il, "attn_q_norm"), eps)
        cb(f"Qcur_normed-{il}", q)
        k = ops.rms_norm(k, self._layer_norm(il, "attn_k_norm"), eps)
        cb(f"Kcur_normed-{il}", k)
        base = hp.rope_freq_base_swa if hp.swa_layers[il] else hp.rope_freq_base
        q = ops.rope_neox(q[0], pos, hp.n_rot, base)[None]
        cb(f"Qcur-{il}#1", q)
        k = ops.rope_neox(k[0], pos, hp.n_rot, base)[None]
        cb(f"Kcur-{il}#1", k)
        q = (q * hp.attention_scale).astype(F32)
        return q, k, v

    def _attend_cached(self, il: int, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       pos: int, cb: DumpFn) -> np.ndarray:
        """Append k, v to layer il's cache (fp16-rounded under `ggml`) and attend q over
        the positions the layer sees (the last n_swa on sliding-window layers); kqv_out
        (1, n_head * head_dim)."""
        hp = self.hp
        kc, vc = (k, v) if not self.kv_f16 else (k.astype(np.float16).astype(F32),
                                                 v.astype(np.float16).astype(F32))
        self.cache_k[il] = np.concatenate([self.cache_k[il], kc])
        self.cache_v[il] = np.concatenate([self.cache_v[il], vc])
        first = max(0, pos - hp.n_swa + 1) if hp.swa_layers[il] else 0
        kq, p, kqv = ops.attend(q[0], self.cache_k[il][first:], self.cache_v[il][first:],
                                hp.n_head_kv, self.kv_f16, self.semantics == FAST)
        cb(f"kq-{il}", kq)
        cb(f"kq_soft_max-{il}", p)
        kqv = kqv.reshape(1, hp.n_head * hp.head_dim)
        cb(f"kqv_out-{il}", kqv)
        return kqv

    def _attention_block(self, il: int, x: np.ndarray, pos: int, cb: DumpFn) -> np.ndarray:
        """Layer il's attention half: norm, Q/K/V, attention, output projection,
        post-attention norm and the residual add; sa_out (1, n_embd)."""
        eps = self.hp.rms_eps
        h = ops.rms_norm(x, self._layer_norm(il, "attn_norm"), eps)
        cb(f"attn_norm-{il}", h)
        q, k, v = self._qkv(il, h, pos, cb)
        kqv = self._attend_cached(il, q, k, v, pos, cb)
        o = self.matmul(kqv, self.w.layer(il, "attn_output"))
        o = ops.rms_norm(o, self._layer_norm(il, "post_attention_norm"), eps)
        cb(f"attn_post_norm-{il}", o)
        sa = (o + x).astype(F32)
        cb(f"sa_out-{il}", sa)
        return sa

    def _ffn_block(self, il: int, sa: np.ndarray, cb: DumpFn) -> np.ndarray:
        """Layer il's feed-forward half: norm, gelu_tanh(gate) * up, down, post-FFN norm
        and the residual add; l_out (1, n_embd)."""
        eps, w = self.hp.rms_eps, self.w
        f = ops.rms_norm(sa, self._layer_norm(il, "ffn_norm"), eps)
        cb(f"ffn_norm-{il}", f)
        up = self.matmul(f, w.layer(il, "ffn_up"))
        cb(f"ffn_up-{il}", up)
        gate = self.matmul(f, w.layer(il, "ffn_gate"))
        cb(f"ffn_gate-{il}", gate)
        g = ops.geglu(gate, up, fp16_table=self.semantics == "ggml")
        cb(f"ffn_geglu-{il}", g)
        d = self.matmul(g, w.layer(il, "ffn_down"))
        cb(f"ffn_out-{il}", d)
        d = ops.rms_norm(d, self._layer_norm(il, "post_ffw_norm"), eps)
        cb(f"ffn_post_norm-{il}", d)
        x = (d + sa).astype(F32)
        cb(f"l_out-{il}", x)
        return x

    def _soft_capped(self, logits: np.ndarray) -> np.ndarray:
        """The GGUF's final logit soft-capping, cap * tanh(logits / cap), if it sets one."""
        cap = self.hp.final_logit_softcapping
        if cap:
            logits = (np.tanh((logits * (F32(1) / cap)).astype(F32).astype(np.float64))
                      .astype(F32) * cap).astype(F32)
        return logits

    def _checked(self, dump: DumpFn | None, pos: int) -> DumpFn:
        """The forward's tensor callback: refuses the first non-finite tensor (naming the
        weight that made it, see non_finite), then hands the tensor to `dump`."""
        def cb(name: str, a: np.ndarray) -> None:
            if not np.isfinite(a).all():
                raise self.non_finite(name, a, pos)
            if dump is not None:
                dump(name, a)
        return cb

    def non_finite(self, name: str, a: np.ndarray, pos: int) -> RefmodelError:
        """The error for tensor `name` of step `pos` coming out non-finite: names the first
        weight of its op holding a non-finite value (file, tensor, row, column), or says the
        activations overflowed when the weights it read are all finite."""
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        what = f"step {pos}: {name} is {a[where]} at index {list(where)}"
        weights = op_weights(name, self.w)
        for wname in weights:
            bad = self.w.first_non_finite(wname)
            if bad is not None:
                row, col, value = bad
                return RefmodelError(f"{self.w.path}: tensor {wname} holds {value} at row "
                                    f"{row}, column {col} ({what})")
        read = f" (it reads {', '.join(weights)}, all finite)" if weights else ""
        return RefmodelError(f"{self.w.path}: {what}{read}: the activations left float32's "
                            "range")

    def decode(self, tokens: Sequence[int], n: int,
               dump: Callable[[int], DumpFn] | None = None,
               progress: ProgressFn | None = None,
               stop_ids: Collection[int] | None = None) -> DecodeResult:
        """Greedy decode of `n` tokens after the prompt `tokens`, from an empty cache, one
        token per step. `dump(step)` returns the callback for that step's tensors;
        `progress` is called after every step (ProgressFn). With `stop_ids` (a model's end
        tokens) the decode ends at the first generated token among them, kept as the last
        token: no forward pass is spent after it."""
        prompt = [int(t) for t in tokens]
        if not prompt:
            raise RefmodelError("the prompt must hold at least one token")
        check_context(len(prompt), n, context_length(self.w.reader), self.w.path)
        for t in prompt:
            if not 0 <= t < self.hp.n_vocab:
                raise RefmodelError(f"token id {t} is out of range for a vocabulary of "
                                   f"{self.hp.n_vocab}")
        self.reset()
        out: list[int] = []
        rows, margins = [], []
        t0 = time.perf_counter()
        feed = list(prompt)
        pos = 0
        total = len(prompt) + n - 1
        t_gen = t_prompt = 0.0
        stops = frozenset(int(t) for t in stop_ids or ())
        end_token = None
        while len(out) < n and end_token is None:
            token = feed[pos]
            t_step = time.perf_counter()
            logits = self.forward(token, pos, dump(pos) if dump else None)
            pos += 1
            if pos >= len(prompt):
                nxt = int(np.argmax(logits))
                out.append(nxt)
                rows.append(logits)
                margins.append(top2_margin(logits))
                feed.append(nxt)
                t_gen += time.perf_counter() - t_step
                if nxt in stops:
                    end_token = nxt
            else:
                t_prompt += time.perf_counter() - t_step
            if progress is not None:
                progress(pos, total, len(out), t_gen, time.perf_counter() - t0)
        return DecodeResult(prompt, out, np.stack(rows), margins,
                            time.perf_counter() - t0, steps=pos, generate_seconds=t_gen,
                            prompt_seconds=t_prompt, end_token=end_token)
