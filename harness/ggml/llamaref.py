"""`skoracle llama-ref MODEL.gguf`: greedy "llama-ref" tokens and activation dumps from llama.cpp.

Runs the real llama.cpp (harness/ggml/llamacpp.py) on a GGUF: the prompt is fed one token per
`llama_decode` (positions 0, 1, ...), then N tokens are decoded greedily (argmax of the
logits, ties to the lowest id, as `np.argmax`). Each decode runs in its own process, so a
crash inside llama.cpp is an error message, and the libraries never meet the scalar C
reference in one address space.

Settings, each chosen so llama.cpp computes what the `ggml` semantics of the reference
models wherever llama.cpp allows it:

- KV cache F16, llama.cpp's default, which the reference's `ggml` semantics models (it
  rounds K, V and the attention operands to fp16); `kv="f32"` (`--kv f32`) removes that
  rounding on llama.cpp's side, for a comparison with the other semantics;
- flash attention off (so `kq`/`kq_soft_max` exist and softmax is a separate op);
- no weight repacking (`use_extra_bufts` off: ggml's vec_dot, not the Q4_0/Q4_K 8x8 GEMV);
- `swa_full` on, a fresh cache per run: KV cell i holds position i, so the attended keys
  of `kq-L` are known from the mask;
- 1 thread by default (`--threads 2` also gives identical results: ggml splits rows, never
  a dot product).

What llama.cpp does that the reference's `ggml` semantics models: its matmuls quantize
activations to Q8_0/Q8_1/Q8_K before the integer dot (vec_dot_type; SKaiNET's Q8_0/Q5_x
kernels do not), with the x86 quantizer (ggml-cpu/arch/x86/quants.c: id = 127/amax, ties
to even; the reference's `--rounding x86`, its default on x86-64; the generic C one takes
id = 1/(amax/127) and rounds ties away from zero); GELU is ggml's fp16 table in both.
What it still does differently, by construction: its dot products run in AVX2 order
(8-lane FMA accumulators), the attention products (F16 K/V) and softmax in SIMD order. So
an activation within a float ulp of a Q8 or fp16 rounding boundary can land on the
neighbouring code on one side: a jump of ~1e-3 relative in that tensor, carried forward;
`reference diff` finds those from the two dumps and does not judge them by the bound.

A step that computes NaN or infinity is a finding (exit 1): the first non-finite tensor
of that step is named. Without --dump only the final norm and the logits are watched
(ggml's x86 quantizer turns a NaN activation into code -128, so a NaN inside a layer can
leave the logits finite); with --dump every dumped tensor is. The decode must fit the
model's context (prompt + n <= `{arch}.context_length`), checked before llama.cpp starts.

With `--dump DIR`, DIR gets the reference's dump layout (refmodel/dump.py, format
skoracle-refdump-1): `meta.json` and one `step-NNN.npz` per decode step, each array named
as llama.cpp's eval callback names it (`attn_norm-3`, `kq_soft_max-3`, `l_out-3`, ...;
a repeat within a layer gets `#n`), float32, numpy shape = ggml ne reversed. `kq-L` and
`kq_soft_max-L` keep only the columns the mask lets the query see, oldest first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import INPUT_ERRORS, HarnessError
from harness.ggml import llamacpp
from harness.report import plural
from harness.workerproc import WorkerProcess
from refmodel.arch import check_context, context_length
from refmodel.gemma3 import host_rounding, top2_margin

DUMP_FORMAT = "skoracle-refdump-1"
SEMANTICS = "llama.cpp"
#: Per-token tensors whose ggml rank is 3 ([head_dim, heads, tokens] or [kv, tokens, heads]);
#: the rest are 2-D ([n, tokens]). A decode step has one token, so ne alone cannot tell.
RANK3 = frozenset({"Qcur", "Kcur", "Vcur", "Qcur_normed", "Kcur_normed", "kq", "kq_soft_max",
                   "kqv"})
_NAMED = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*?)(?:-(?P<layer>\d+))?$")
DEFAULT_TIMEOUT = 1800.0
KV_TYPES = ("f16", "f32")


@dataclass
class LlamaDecode:
    """One greedy decode by llama.cpp (the fields match refmodel's DecodeResult)."""

    prompt_tokens: list[int]
    tokens: list[int]
    logits: np.ndarray  # float32 (n, n_vocab): the logits that chose each generated token
    margins: list[float]  # top-1 minus top-2 logit per generated step
    seconds: float  # wall time of the forward passes that chose the generated tokens
    threads: int
    tensor_names: list[str] = field(default_factory=list)  # dump names of one step, in order
    dump_dir: Path | None = None
    prompt_seconds: float = 0.0  # the other prompt steps (reported apart)
    #: {"step", "tensor", "value"}: the step whose logits came out non-finite and the first
    #: tensor of that step's graph that did (a finding, not an input error); None if none
    non_finite: dict | None = None

    @property
    def tok_per_s(self) -> float:
        """Generated tokens over the wall time of the passes that chose them (the rule of
        `skoracle reference` too)."""
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> dict:
        return {"engine": SEMANTICS, "prompt_tokens": self.prompt_tokens, "tokens": self.tokens,
                "margins": [round(m, 6) for m in self.margins],
                "tok_per_s": round(self.tok_per_s, 3), "seconds": round(self.seconds, 4),
                "prompt_steps": max(0, len(self.prompt_tokens) - 1),
                "prompt_seconds": round(self.prompt_seconds, 4),
                "threads": self.threads, "non_finite": self.non_finite,
                "dump": str(self.dump_dir) if self.dump_dir else None}


# ----------------------------------------------------------------------------------------
# The parent side: check the input, run one worker process, collect its files
# ----------------------------------------------------------------------------------------

def _check_model(model: Path) -> Path:
    model = Path(model)
    try:
        with open(model, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise HarnessError(f"{model}: cannot read the model: {exc.strerror or exc}") from None
    if magic != b"GGUF":
        raise HarnessError(f"{model}: not a GGUF file (magic {magic!r})")
    return model


def _precheck(model: Path) -> int | None:
    """Before llama.cpp starts: the vocabulary must match token_embd's rows (the refusal
    llama.cpp's loader gives, in one line naming both; refmodel.weights); returns the
    GGUF's `{arch}.context_length` (refmodel.arch). A file these readers cannot open is
    left to llama.cpp's loader, which says why."""
    from refmodel.weights import EMBEDDING, VOCABULARY, check_vocabulary, open_gguf

    try:
        reader = open_gguf(model)
    except INPUT_ERRORS:
        return None
    emb = next((t for t in reader.tensors if t.name == EMBEDDING), None)
    # no vocabulary at all is llama.cpp's to judge (tokenizer model "none" allows it)
    if emb is not None and len(emb.shape) > 1 and VOCABULARY in reader.fields:
        check_vocabulary(reader, int(emb.shape[1]), str(model))
    return context_length(reader)


#: decode's parameters and the `skoracle llama-ref` options that set them.
OPTIONS = {"tokens": "--tokens", "prompt": "--prompt", "n": "--n", "threads": "--threads",
           "kv": "--kv", "dump": "--dump"}
#: Where the worker leaves an argument it refused, for the parent to raise it again.
ARGUMENT_ERROR_FILE = "argument-error.json"


class DecodeArgumentError(HarnessError):
    """An argument `decode` refuses, naming its parameter ("tokens: ..."); a front end words
    it as its own option with `worded` (`skoracle llama-ref`: "--tokens: ...")."""

    def __init__(self, param: str, detail: str, value: str | None = None) -> None:
        self.param, self.detail, self.value = param, detail, value
        super().__init__(self.worded(param))

    def worded(self, name: str) -> str:
        """The message with the parameter called `name`."""
        return f"{name}{'' if self.value is None else ' ' + self.value}: {self.detail}"

    def fields(self) -> dict[str, str | None]:
        return {"param": self.param, "detail": self.detail, "value": self.value}


def decode(model: str | Path, tokens: list[int] | None = None, n: int = 32, *,
           prompt: str | None = None, threads: int = 1, kv: str = "f16",
           dump: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
           progress: bool = False) -> LlamaDecode:
    """Greedy-decode n tokens after `tokens` (or the tokenized `prompt`) with llama.cpp.
    With `progress`, the worker's progress is drawn on stderr (harness.progress).

    With `dump`, per-step activations go to that directory (which must not exist yet; it
    appears complete or not at all).
    """
    model = _check_model(model)
    tokens = _checked_arguments(tokens, prompt, n, threads, kv)
    ctx = _precheck(model)
    if tokens is not None:  # a prompt: the worker checks once llama.cpp has tokenized it
        check_context(len(tokens), n, ctx, str(model))
    dump_dir = _checked_dump_dir(dump)
    if not llamacpp.is_built():  # once on a fresh machine; progress on stderr
        llamacpp.build(log=lambda m: print(f"llamacpp: {m}", file=sys.stderr, flush=True))
    parent = dump_dir.parent if dump_dir is not None else None
    work = Path(tempfile.mkdtemp(prefix=".llama-ref-", dir=parent))
    try:
        spec = {"model": str(model.resolve()), "tokens": tokens, "prompt": prompt, "n": n,
                "threads": threads, "kv": kv, "dump": dump_dir is not None, "out": str(work)}
        with _ProgressFile(work / PROGRESS_FILE, enabled=progress):
            _run_worker(spec, timeout)
        result = _read_result(work, threads)
        if dump_dir is not None:
            os.replace(work / "dump", dump_dir)
            result.dump_dir = dump_dir
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _checked_arguments(tokens: list[int] | None, prompt: str | None, n: int, threads: int,
                       kv: str) -> list[int] | None:
    """decode's arguments checked (DecodeArgumentError naming the parameter); returns the
    prompt ids as plain ints, or None when a prompt text is given."""
    if (tokens is None) == (prompt is None):
        raise HarnessError("give exactly one of tokens and prompt")
    if tokens is not None:
        if not tokens or not all(isinstance(t, int | np.integer) and t >= 0 for t in tokens):
            raise DecodeArgumentError("tokens", "need one or more non-negative ids, got "
                                      f"{tokens!r}")
        tokens = [int(t) for t in tokens]
    if not isinstance(n, int) or n < 1:
        raise DecodeArgumentError("n", f"need a positive number of tokens, got {n!r}")
    if threads not in (1, 2):
        raise DecodeArgumentError("threads", f"1 or 2, got {threads!r}")
    if kv not in KV_TYPES:
        raise DecodeArgumentError("kv", f"one of {', '.join(KV_TYPES)}, got {kv!r}")
    return tokens


def _checked_dump_dir(dump: str | Path | None) -> Path | None:
    """The dump directory to create: it must not exist, and its parent must be a
    directory this process can write in (DecodeArgumentError otherwise)."""
    dump_dir = Path(dump) if dump is not None else None
    if dump_dir is None:
        return None
    if dump_dir.exists():
        raise DecodeArgumentError("dump", "already exists (will not overwrite)", str(dump_dir))
    if not dump_dir.parent.is_dir():
        raise DecodeArgumentError("dump", "parent directory does not exist", str(dump_dir))
    if not os.access(dump_dir.parent, os.W_OK | os.X_OK):
        raise DecodeArgumentError("dump", f"cannot write in {dump_dir.parent}", str(dump_dir))
    return dump_dir


#: the worker's progress, rewritten (temp name + rename) after every step:
#: [steps done, total steps, tokens generated, seconds generating, seconds so far]
PROGRESS_FILE = "progress.json"


class _ProgressFile:
    """While the worker runs, a thread that draws the progress it writes to PROGRESS_FILE
    (harness.progress: a bar in a terminal, a line every 8 steps otherwise)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _ProgressFile:
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()

    def _poll(self) -> None:
        from harness.progress import DecodeProgress

        last = None
        with DecodeProgress("llama-ref") as show:
            while True:
                stopping = self.stop.wait(0.2)
                try:
                    now = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    now = last
                if now is not None and now != last:
                    show(*now)
                    last = now
                if stopping:  # the worker's last state was read after it ended
                    return


def _write_progress(out: Path, *values: float) -> None:
    tmp = out / f".{PROGRESS_FILE}"
    tmp.write_text(json.dumps(values))
    os.replace(tmp, out / PROGRESS_FILE)


def _run_worker(spec: dict, timeout: float) -> None:
    """Decode in a worker process (harness.workerproc) that dies with this process, however
    it ends, and removes the scratch directory `spec["out"]` then."""
    wp = WorkerProcess("harness.ggml.llamaref:_worker_main", ["--worker", json.dumps(spec)],
                       cleanup=[spec["out"]], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = wp.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"llama.cpp decode did not finish in {timeout:.0f} s") from None
    finally:
        wp.stop(grace=0)
    if wp.proc.returncode == 0:
        return
    msg = (stderr.strip().splitlines() or ["no output"])[-1]
    if wp.proc.returncode < 0:
        name = signal.Signals(-wp.proc.returncode).name
        raise HarnessError(f"llama.cpp crashed ({name}) decoding {spec['model']}: {msg}")
    try:
        refused = json.loads((Path(spec["out"]) / ARGUMENT_ERROR_FILE).read_text())
    except (OSError, ValueError):
        raise HarnessError(msg.removeprefix("error: ")) from None
    raise DecodeArgumentError(**refused)


def _read_result(work: Path, threads: int) -> LlamaDecode:
    meta = json.loads((work / "result.json").read_text())
    return LlamaDecode(prompt_tokens=meta["prompt_tokens"], tokens=meta["tokens"],
                       logits=np.load(work / "logits.npy", allow_pickle=False),
                       margins=meta["margins"], seconds=meta["seconds"], threads=threads,
                       tensor_names=meta["tensor_names"],
                       prompt_seconds=meta.get("prompt_seconds", 0.0),
                       non_finite=meta.get("non_finite"))


# ----------------------------------------------------------------------------------------
# The worker: llama.cpp in this process
# ----------------------------------------------------------------------------------------

class _Recorder:
    """The eval callback: asks for every named graph node and keeps a float32 copy.

    A RESHAPE that keeps its input's name (llama.cpp names the projection and its
    [head_dim, heads, tokens] view alike) replaces that entry: same values, the 3-D shape.
    """

    def __init__(self, lc) -> None:
        self.lc = lc
        self.step: dict[str, np.ndarray] = {}
        self.graph: list[str] = []  # every named node of this step, in compute order
        self.visible: dict[str, np.ndarray] = {}  # kq_soft_max-L -> columns the mask keeps
        self.error: BaseException | None = None

    @staticmethod
    def wanted(name: str) -> bool:
        return bool(name) and " (" not in name and not name.startswith(("node_", "leaf_"))

    def __call__(self, t: int, ask: bool, _user: int | None) -> bool:
        try:
            name = self.lc.tensor_name(t)
            if ask:
                return self.wanted(name)
            self.graph.append(name)
            arr = self.lc.tensor_array(t)
            if arr is None:
                return True
            m = _NAMED.match(name)
            base = m.group("base") if m else name
            if base == "kq_soft_max":
                mask = self.lc.tensor_array(self.lc.tensor_src(t, 1))
                row = mask.reshape(-1, mask.shape[-1])[0]
                self.visible[name] = np.flatnonzero(np.isfinite(row))
            arr = arr.reshape(_dump_shape(base, arr.shape))
            if self.lc.tensor_op(t) == llamacpp.GGML_OP_RESHAPE and name in self.step:
                self.step[self._last(name)] = arr
                return True
            key, k = name, 1
            while key in self.step:
                key, k = f"{name}#{k}", k + 1
            self.step[key] = arr
        except BaseException as exc:  # never let an exception cross into C
            self.error = exc
            return False
        return True

    def _last(self, name: str) -> str:
        key, k = name, 1
        while f"{name}#{k}" in self.step:
            key, k = f"{name}#{k}", k + 1
        return key

    def take(self, order: list[str]) -> dict[str, np.ndarray]:
        """This step's arrays named in `order`, in that order; kq columns restricted to
        the keys the query may attend to."""
        out = {}
        for key in order:
            if key not in self.step:
                continue
            arr = self.step[key]
            m = _NAMED.match(key.split("#", 1)[0])
            if m and m.group("base") in ("kq", "kq_soft_max") and m.group("layer") is not None:
                cols = self.visible.get(f"kq_soft_max-{m.group('layer')}")
                if cols is not None:
                    arr = arr[..., cols]
            out[key] = np.ascontiguousarray(arr, dtype=np.float32)
        self.step, self.visible, self.graph = {}, {}, []
        return out


class _FiniteWatch:
    """An eval callback that notes the first named graph tensor holding a NaN or an
    infinity in a step (the attention mask's -inf columns excepted). With `only`, it looks
    at those tensors alone (each makes ggml stop once per step: a decode watches the final
    norm, because ggml's x86 Q8 quantizer turns a NaN activation into code -128 and the
    logits after it come out finite); without, at every named node, to explain a finding."""

    def __init__(self, lc, only: frozenset[str] | None = None) -> None:
        self.lc, self.only = lc, only
        self.first: dict | None = None
        self.error: BaseException | None = None

    def __call__(self, t: int, ask: bool, _user: int | None) -> bool:
        try:
            name = self.lc.tensor_name(t)
            if ask:
                if self.only is not None:
                    return name in self.only
                return _Recorder.wanted(name) and "mask" not in name.lower()
            if self.first is None:
                arr = self.lc.tensor_array(t)
                if arr is not None and not np.isfinite(arr).all():
                    at = np.flatnonzero(~np.isfinite(arr))[0]
                    self.first = {"tensor": name, "value": str(arr.reshape(-1)[at])}
        except BaseException as exc:  # never let an exception cross into C
            self.error = exc
            return False
        return True


def _context(lc, model: int, spec: dict, n_ctx: int, recorder: object
             ) -> tuple[int, object]:
    """A fresh llama.cpp context with the settings the module docstring lists; returns it
    and the ctypes callback, which must stay alive as long as the context."""
    cp = lc.llama.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = cp.n_ubatch = 1
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = spec["threads"]
    cp.type_k = cp.type_v = (llamacpp.GGML_TYPE_F32 if spec["kv"] == "f32"
                             else llamacpp.GGML_TYPE_F16)
    cp.flash_attn_type = llamacpp.FLASH_ATTN_DISABLED
    cp.swa_full = True
    cp.no_perf = True
    callback = llamacpp.EvalCallback(recorder)
    cp.cb_eval = callback
    ctx = lc.llama.llama_init_from_model(model, cp)
    if not ctx:
        raise HarnessError(f"{spec['model']}: llama.cpp cannot make a context: "
                           f"{lc.last_error()}")
    return ctx, callback


def _first_non_finite(lc, model: int, spec: dict, fed: list[int], n_ctx: int) -> dict:
    """Replay `fed` in a fresh context under a _FiniteWatch; the first non-finite tensor of
    the last step (compute order)."""
    watch = _FiniteWatch(lc)
    ctx, _callback = _context(lc, model, spec, n_ctx, watch)
    token = np.zeros(1, dtype=np.int32)
    try:
        for i, t in enumerate(fed):
            watch.first = None
            token[0] = t
            lc.llama.llama_decode(ctx, lc.llama.llama_batch_get_one(token.ctypes.data, 1))
            if watch.error is not None:
                raise watch.error
            if watch.first is not None and i < len(fed) - 1:
                return {**watch.first, "step": i}
    finally:
        lc.llama.llama_free(ctx)
    return {**(watch.first or {"tensor": "result_output", "value": "nan"}),
            "step": len(fed) - 1}


#: The dump's per-layer names in the contract's order (refmodel/dump.py); llama.cpp's own
#: compute order differs only in ffn_gate before ffn_up. Other named nodes of the graph
#: (`embd`, `norm-L`, `kqv-L`: RMSNorm before its weight, per-head attention output) are
#: listed in meta.json's `graph_tensors` but not dumped.
LAYER_NAMES: tuple[str, ...] = (
    "attn_norm", "Qcur", "Kcur", "Vcur", "Qcur_normed", "Kcur_normed", "Qcur#1", "Kcur#1",
    "kq", "kq_soft_max", "kqv_out", "attn_post_norm", "sa_out", "ffn_norm", "ffn_up",
    "ffn_gate", "ffn_geglu", "ffn_out", "ffn_post_norm", "l_out")


def dump_names(n_layer: int) -> list[str]:
    """Every array name of one dump step, in order, for a model of n_layer layers."""
    per = [n.replace("#", f"-{il}#") if "#" in n else f"{n}-{il}"
           for il in range(n_layer) for n in LAYER_NAMES]
    return ["inp_scaled", *per, "result_norm", "result_output"]


def _dump_shape(base: str, shape4: tuple[int, ...]) -> tuple[int, ...]:
    """ne reversed, keeping the tensor's own rank (2, or 3 for the per-head tensors)."""
    rank = 3 if base in RANK3 else 2
    lead = shape4[: len(shape4) - rank]
    if any(d != 1 for d in lead):
        return shape4
    return shape4[len(shape4) - rank:]


def _worker(spec: dict) -> int:
    """The worker's decode (spec: decode's checked arguments and the scratch directory
    `out`): writes result.json and logits.npy (and the dump) into `out`; returns 0."""
    lc = llamacpp.load(build_if_missing=False)
    model = _load_model(lc, spec["model"])
    ctx = None
    try:
        vocab = lc.llama.llama_model_get_vocab(model)
        n_vocab = lc.llama.llama_vocab_n_tokens(vocab)
        prompt = _prompt_ids(lc, model, vocab, n_vocab, spec)
        recorder = _Recorder(lc) if spec["dump"] else None
        watch = _FiniteWatch(lc, only=frozenset({"result_norm"}))
        # the callback must stay alive as long as the context: held here until it is freed
        ctx, _callback = _context(lc, model, spec, len(prompt) + spec["n"], recorder or watch)
        loop = _GreedyLoop(lc, model, ctx, spec, prompt, n_vocab, recorder, watch)
        if recorder:
            loop.dump.mkdir()
        loop.run()
        if recorder:
            loop.write_meta()
        loop.write_result()
    finally:
        if ctx:
            lc.llama.llama_free(ctx)
        lc.llama.llama_model_free(model)
    return 0


def _load_model(lc, path: str) -> int:
    """The GGUF loaded by llama.cpp on the CPU, without weight repacking."""
    mp = lc.llama.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_extra_bufts = False
    model = lc.llama.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise HarnessError(f"{path}: llama.cpp cannot load it: {lc.last_error()}")
    return model


def _prompt_ids(lc, model: int, vocab: int, n_vocab: int, spec: dict) -> list[int]:
    """The prompt ids (given, or tokenized by llama.cpp), checked against the vocabulary
    and, with the tokens to generate, against the model's trained context."""
    prompt = spec["tokens"] if spec["tokens"] is not None else _tokenize(lc, vocab,
                                                                         spec["prompt"])
    bad = [t for t in prompt if t >= n_vocab]
    if bad:
        raise DecodeArgumentError("tokens", f"id {bad[0]} is outside the vocabulary "
                                  f"({n_vocab} tokens)")
    trained = lc.meta(model, f"{lc.meta(model, 'general.architecture')}.context_length")
    check_context(len(prompt), spec["n"], int(trained) if trained and trained.isdigit()
                  else None, spec["model"])
    return prompt


class _GreedyLoop:
    """The worker's decode in a context: the prompt one token per `llama_decode`, then
    greedy tokens fed back; each step's dump, progress, and the first non-finite step (a
    finding that stops the decode)."""

    def __init__(self, lc, model: int, ctx: int, spec: dict, prompt: list[int],
                 n_vocab: int, recorder: _Recorder | None, watch: _FiniteWatch) -> None:
        self.lc, self.model, self.ctx, self.spec = lc, model, ctx, spec
        self.prompt, self.n_vocab = prompt, n_vocab
        self.recorder, self.watch = recorder, watch
        self.out = Path(spec["out"])
        self.dump = self.out / "dump"
        self.n_ctx = len(prompt) + spec["n"]
        self.order = dump_names(lc.llama.llama_model_n_layer(model))
        self.fed: list[int] = []
        self.generated: list[int] = []
        self.logits: list[np.ndarray] = []
        self.names: list[str] = []  # dump names of one step, in order
        self.graph: list[str] = []  # every named node of one step, in compute order
        self.t_gen = self.t_prompt = 0.0
        self.non_finite: dict | None = None

    def run(self) -> None:
        """Decode until n tokens are generated or a step comes out non-finite."""
        token = np.zeros(1, dtype=np.int32)
        t_start = time.perf_counter()
        queue = list(self.prompt)
        while len(self.generated) < self.spec["n"]:
            token[0] = queue.pop(0)
            t0 = time.perf_counter()
            row = self._decode(token)
            step = len(self.fed)
            self.fed.append(int(token[0]))
            arrays = self._keep_step(step)
            self.non_finite = self._non_finite(arrays, row, step)
            if self.non_finite is not None:
                break
            if not queue:  # these logits choose the next token
                nxt = int(np.argmax(row))
                self.t_gen += time.perf_counter() - t0
                self.generated.append(nxt)
                self.logits.append(row.copy())
                queue.append(nxt)
            else:
                self.t_prompt += time.perf_counter() - t0
            _write_progress(self.out, len(self.fed), self.n_ctx - 1, len(self.generated),
                            self.t_gen, time.perf_counter() - t_start)

    def _decode(self, token: np.ndarray) -> np.ndarray:
        """One `llama_decode` of `token`; its logits (a view into llama.cpp's buffer)."""
        llama = self.lc.llama
        rc = llama.llama_decode(self.ctx, llama.llama_batch_get_one(token.ctypes.data, 1))
        for cb in (self.recorder, self.watch):
            if cb is not None and cb.error is not None:
                raise cb.error
        if rc != 0:
            raise HarnessError(f"llama_decode returned {rc} at position {len(self.fed)}: "
                               f"{self.lc.last_error()}")
        return np.ctypeslib.as_array(llama.llama_get_logits_ith(self.ctx, -1), (self.n_vocab,))

    def _keep_step(self, step: int) -> dict[str, np.ndarray]:
        """The recorder's arrays of this step, saved as step-NNN.npz ({} without a dump)."""
        if not self.recorder:
            return {}
        self.graph = self.graph or list(self.recorder.graph)  # take() clears it
        arrays = self.recorder.take(self.order)
        self.names = self.names or list(arrays)
        np.savez(self.dump / f"step-{step:03d}.npz", **arrays)
        return arrays

    def _non_finite(self, arrays: dict[str, np.ndarray], row: np.ndarray, step: int
                    ) -> dict | None:
        """Where a non-finite step started: its first dumped tensor that is, else (replayed
        under a full watch) the first graph tensor; None if the step is finite."""
        bad = next((k for k, v in arrays.items() if not np.isfinite(v).all()), None)
        if bad is None and self.watch.first is None and np.isfinite(row).all():
            return None
        # a finding: say where it started (the dump holds that step too)
        if bad is not None:
            return {"tensor": bad, "value": str(arrays[bad][~np.isfinite(arrays[bad])][0]),
                    "step": step}
        return _first_non_finite(self.lc, self.model, self.spec, self.fed, self.n_ctx)

    def write_meta(self) -> None:
        """The dump's meta.json (refmodel/dump.py's layout)."""
        spec = self.spec
        meta = {"model": spec["model"], "semantics": SEMANTICS, "load": "llama.cpp",
                "tokens": self.fed, "n_steps": len(self.fed), "format": DUMP_FORMAT,
                "threads": spec["threads"], "kv": spec["kv"],
                "quantizer": host_rounding(), **_hparams(self.lc, self.model),
                "graph_tensors": self.graph}
        (self.dump / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    def write_result(self) -> None:
        """logits.npy and result.json, which the parent reads (_read_result)."""
        lg = (np.stack(self.logits).astype(np.float32) if self.logits
              else np.zeros((0, self.n_vocab), np.float32))
        np.save(self.out / "logits.npy", lg)
        result = {"prompt_tokens": self.prompt, "tokens": self.generated,
                  "margins": [top2_margin(r) for r in lg], "seconds": self.t_gen,
                  "prompt_seconds": self.t_prompt, "tensor_names": self.names,
                  "non_finite": self.non_finite}
        (self.out / "result.json").write_text(json.dumps(result))


def _hparams(lc, model: int) -> dict[str, int]:
    """The sizes refmodel's `reference diff` reads from a dump's meta.json (0 if absent)."""
    arch = lc.meta(model, "general.architecture") or ""

    def get(key: str, default: int = 0) -> int:
        v = lc.meta(model, f"{arch}.{key}")
        return int(v) if v is not None and v.lstrip("-").isdigit() else default

    n_embd = get("embedding_length")
    return {"n_embd": n_embd, "n_ff": get("feed_forward_length"),
            "head_dim": get("attention.key_length",
                            n_embd // max(1, get("attention.head_count", 1))),
            "n_swa": get("attention.sliding_window")}


def _tokenize(lc, vocab: int, text: str) -> list[int]:
    """The prompt through llama.cpp's own tokenizer (BOS added as the GGUF says)."""
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = np.zeros(cap, dtype=np.int32)
    k = lc.llama.llama_tokenize(vocab, data, len(data), buf.ctypes.data, cap, True, False)
    if k < 0:
        raise DecodeArgumentError("prompt", f"llama.cpp needs {-k} tokens, more than {cap}")
    if k == 0:
        raise DecodeArgumentError("prompt", "tokenizes to nothing")
    return [int(t) for t in buf[:k]]


# ----------------------------------------------------------------------------------------
# skoracle llama-ref
# ----------------------------------------------------------------------------------------

def _parse_tokens(text: str) -> list[int]:
    """`--tokens` as `skoracle reference` reads it, as an argparse type (exit 2 on error)."""
    from harness.reference.cli import parse_tokens

    try:
        return parse_tokens(text)
    except HarnessError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--tokens: ")) from None


LLAMA_REF_EXIT_CODES = """\
exit codes:
  0  the decode ran
  1  a finding: a step computed values that are not finite (the first non-finite tensor is
     named; without --dump only the final norm and the logits are watched)
  2  usage or input error (not a GGUF, ids outside the vocabulary, a decode longer than
     the model's context), or llama.cpp failed"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "llama-ref",
        help="greedy 'llama-ref' token ids (and activation dumps) from the real llama.cpp",
        description=__doc__, epilog=LLAMA_REF_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the .gguf file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", type=_parse_tokens, metavar="IDS",
                     help="prompt ids, e.g. 2,105,2364 (default: none, give it or --prompt)")
    src.add_argument("--prompt", metavar="TEXT", help="prompt text, tokenized by llama.cpp's "
                     "own tokenizer (default: none, give it or --tokens)")
    p.add_argument("--n", type=int, default=32, metavar="N",
                   help="tokens to generate (default 32)")
    p.add_argument("--threads", type=int, default=1, choices=(1, 2), help="default 1")
    p.add_argument("--kv", default="f16", choices=KV_TYPES,
                   help="KV cache type (default f16, llama.cpp's own default)")
    p.add_argument("--dump", metavar="DIR", help="write per-step activations to DIR (a new "
                   "directory; default: no dump)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        r = decode(args.model, args.tokens, args.n, prompt=args.prompt, threads=args.threads,
                   kv=args.kv, dump=args.dump, progress=True)
    except DecodeArgumentError as exc:  # the library names parameters, the CLI its options
        raise HarnessError(exc.worded(OPTIONS[exc.param]), exc.exit_code) from None
    if args.json:
        print(json.dumps(r.summary(), indent=1))
        return 1 if r.non_finite else 0
    print(",".join(str(t) for t in r.tokens))
    margin = f"; min top-2 margin {min(r.margins):.4g}" if r.margins else ""
    speed = f"{r.tok_per_s:.1f} tok/s" if r.tokens else "no tok/s"
    print(f"llama.cpp {len(r.tokens)} tokens, {speed} ({r.threads} thread"
          f"{'s' if r.threads > 1 else ''}){margin}; prompt: "
          f"{plural(max(0, len(r.prompt_tokens) - 1), 'step')} in {r.prompt_seconds:.2f} s "
          "before them")
    if r.dump_dir:
        print(f"dump: {r.dump_dir} ({len(r.tensor_names)} tensors per step)")
    if r.non_finite:
        nf = r.non_finite
        print(f"FINDING: step {nf['step']} computes values that are not finite: its first "
              f"non-finite tensor is {nf['tensor']} ({nf['value']}); decoding stopped there")
        return 1
    return 0


def _worker_main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    try:
        return _worker(spec)
    except DecodeArgumentError as exc:  # raised again as such by the parent (_run_worker)
        (Path(spec["out"]) / ARGUMENT_ERROR_FILE).write_text(json.dumps(exc.fields()))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # the decode worker starts through harness.workerproc
    raise SystemExit("usage: skoracle llama-ref MODEL --tokens IDS (python3 -m harness)")
