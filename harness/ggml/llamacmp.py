"""The reference forward held to llama.cpp: greedy tokens under a derived bound, per-tensor errors.

Two comparisons, both on the same fed tokens (the prompt, then llama.cpp's own greedy
tokens: the reference is teacher-forced with them, so every step compares like with like
even after a near-tie):

- `token_steps`: at every generated step, the two logit vectors must differ by no more than
  a derived bound B (per logit), and where the reference's top-2 margin exceeds 2*max(B)
  the two argmaxes must be the same id. B is rigorous for the last op given the measured
  difference of its input: with h_L, h_R the two `result_norm` rows and W the lm_head,
      |y_L - y_R| <= eb_L + eb_R + |W| |h_L - h_R| + u (|W h_L| + |W h_R|)
  where eb_* is kernels_ref.bounds.error_bound of each side's matmul against the exact
  product (llama.cpp: activations quantized to Q8_0 with ties to even, any float order; the
  reference: the same with ties away from zero under `ggml`, unquantized under `fast` and
  the others, whose lm_head on Q8_0 does not quantize activations). A logit that breaks it
  means the two sides' lm_heads are not the same function (a wrong row, a soft-cap...).
- `activation_errors`: for every tensor name and layer of two dumps, the largest normwise
  relative difference over the steps, max|a - b| / max(|a|, |b|).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from kernels_ref.bounds import U32, error_bound

_LAYERED = re.compile(r"^(?P<base>.+?)-(?P<layer>\d+)(?P<rep>#\d+)?$")


@dataclass
class StepCheck:
    """One generated step: llama.cpp's token, the reference's argmax, margin and bound."""

    step: int
    llama_token: int
    ref_token: int
    ref_margin: float
    llama_margin: float
    max_logit_diff: float
    bound: float  # max over the vocabulary of the per-logit bound B
    within_bound: bool  # every |y_L - y_R| <= B

    @property
    def decided(self) -> bool:
        """The margin is wide enough that the bound forces the same argmax."""
        return self.ref_margin > 2.0 * self.bound

    @property
    def ok(self) -> bool:
        return self.within_bound and (not self.decided or self.llama_token == self.ref_token)

    def row(self) -> str:
        mark = "ok" if self.ok else "FAIL"
        return (f"{self.step:4d} {self.llama_token:7d} {self.ref_token:7d} "
                f"{self.ref_margin:11.5g} {self.bound:11.4g} {self.max_logit_diff:11.4g} "
                f"{'yes' if self.decided else 'no':>7} {mark}")


STEP_HEADER = "step   llama     ref  ref margin   bound B   max|dy|  decided"


def lm_head_bound(w_raw: np.ndarray, wtype: str, rows: int, cols: int, h_llama: np.ndarray,
                  h_ref: np.ndarray, ref_quantizes: bool = True) -> np.ndarray:
    """Per-logit float64 bound on |y_llama - y_ref| (see the module docstring).

    `ref_quantizes`: the reference's lm_head is the `ggml` semantics (Q8_0 activations,
    ties away from zero); otherwise it is any float32 order of the unquantized product.
    """
    from oracle import dequantize

    hl = np.asarray(h_llama, np.float32).reshape(1, cols)
    hr = np.asarray(h_ref, np.float32).reshape(1, cols)
    eb_l = error_bound(hl, w_raw, wtype, rows, cols, semantics="ggml", rounding="even")[0]
    ref_opts = {"semantics": "ggml", "rounding": "roundf"} if ref_quantizes else {}
    eb_r = error_bound(hr, w_raw, wtype, rows, cols, **ref_opts)[0]
    delta = np.abs(hl.astype(np.float64) - hr.astype(np.float64))[0]
    prop = np.empty(rows, np.float64)
    mag = np.empty(rows, np.float64)
    step = max(1, (1 << 22) // cols)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        w = dequantize(wtype, w_raw[start:stop]).astype(np.float64)
        prop[start:stop] = np.abs(w) @ delta
        mag[start:stop] = np.abs(w @ hl[0].astype(np.float64)) + np.abs(w @ hr[0].astype(
            np.float64))
    return eb_l + eb_r + prop * (1 + 1e-12) + U32 * mag


def token_steps(ref_model, fed: list[int], prompt_len: int, llama_tokens: list[int],
                llama_logits: np.ndarray, llama_dump: Path) -> list[StepCheck]:
    """Teacher-force `ref_model` (a refmodel.Gemma3Reference) with `fed` and check every
    generated step against llama.cpp's logits and its dumped `result_norm`."""
    w = ref_model.w.output()
    out: list[StepCheck] = []
    ref_model.reset()
    quantizes = ref_model.semantics == "ggml"
    for pos, tok in enumerate(fed):
        seen: dict[str, np.ndarray] = {}
        logits = ref_model.forward(tok, pos, dump=lambda n, a, s=seen: s.__setitem__(n, a))
        k = pos - (prompt_len - 1)
        if k < 0:
            continue
        try:
            with np.load(Path(llama_dump) / f"step-{pos:03d}.npz") as z:
                h_l = z["result_norm"]
        except (OSError, KeyError) as exc:
            raise HarnessError(f"{llama_dump}: no result_norm for step {pos}: {exc}") from None
        yl = llama_logits[k].astype(np.float64)
        yr = logits.astype(np.float64)
        b = lm_head_bound(w.data, w.type, w.rows, w.cols, h_l, seen["result_norm"],
                          quantizes)
        d = np.abs(yl - yr)
        two = np.sort(yr)[-2:]
        two_l = np.sort(yl)[-2:]
        out.append(StepCheck(k, int(llama_tokens[k]), int(np.argmax(yr)),
                             float(two[1] - two[0]), float(two_l[1] - two_l[0]),
                             float(d.max()), float(b.max()), bool(np.all(d <= b))))
    return out


@dataclass
class TensorError:
    """The largest normwise relative difference of one tensor (per layer) over all steps."""

    tensor: str  # name without the layer, with a #n repeat suffix if any
    layer: int  # -1 for the tensors outside the layers
    max_rel: float
    step: int  # where the largest difference occurred
    steps: int


def split_name(name: str) -> tuple[str, int]:
    """'Qcur-3#1' -> ('Qcur#1', 3); 'result_norm' -> ('result_norm', -1)."""
    m = _LAYERED.match(name)
    if not m:
        return name, -1
    return m.group("base") + (m.group("rep") or ""), int(m.group("layer"))


def activation_errors(dump_a: str | Path, dump_b: str | Path) -> list[TensorError]:
    """Per tensor and layer: max over steps of max|a-b| / max(|a|, |b|); names both have."""
    a, b = Path(dump_a), Path(dump_b)
    best: dict[tuple[str, int], TensorError] = {}
    step = 0
    while (a / f"step-{step:03d}.npz").is_file() and (b / f"step-{step:03d}.npz").is_file():
        with np.load(a / f"step-{step:03d}.npz") as za, np.load(b / f"step-{step:03d}.npz") as zb:
            for name in za.files:
                if name not in zb.files:
                    continue
                xa, xb = za[name].astype(np.float64), zb[name].astype(np.float64)
                if xa.size != xb.size:
                    raise HarnessError(f"step {step} {name}: {xa.shape} vs {xb.shape}")
                xa, xb = xa.reshape(-1), xb.reshape(-1)
                scale = max(np.abs(xa).max(initial=0), np.abs(xb).max(initial=0))
                diff = np.abs(xa - xb).max(initial=0)
                rel = diff / scale if scale else (0.0 if diff == 0 else float("inf"))
                key = split_name(name)
                cur = best.get(key)
                if cur is None or rel > cur.max_rel:
                    best[key] = TensorError(key[0], key[1], float(rel), step,
                                            (cur.steps if cur else 0) + 1)
                else:
                    cur.steps += 1
        step += 1
    if not step:
        raise HarnessError(f"{a} and {b}: no common step-000.npz")
    return list(best.values())


def error_table(errors: list[TensorError]) -> str:
    """Tensors as rows, layers as columns, max relative difference in each cell."""
    layers = sorted({e.layer for e in errors if e.layer >= 0})
    names: list[str] = []
    for e in errors:
        if e.tensor not in names:
            names.append(e.tensor)
    cell = {(e.tensor, e.layer): e.max_rel for e in errors}
    head = f"{'tensor':18s}" + "".join(f"{'L' + str(i):>10s}" for i in layers)
    lines = [head]
    for n in names:
        if (n, -1) in cell:
            lines.append(f"{n:18s}{cell[(n, -1)]:10.2e}")
            continue
        lines.append(f"{n:18s}" + "".join(
            f"{cell[(n, i)]:10.2e}" if (n, i) in cell else f"{'-':>10s}" for i in layers))
    return "\n".join(lines)
