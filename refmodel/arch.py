"""Gemma-3 hyper-parameters: what the GGUF carries, and the few constants llama.cpp fixes.

Every value a GGUF `gemma3.*` key carries is read from the file (`Gemma3HParams.read`).
The constants llama.cpp fixes for the architecture instead stand in LLAMA_GEMMA3, each
with the file and function of the llama.cpp vendored in llama-cpp-python 0.3.36 it comes
from; a GGUF key that overrides one is honoured and named there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from refmodel.errors import RefmodelError

ARCH = "gemma3"

#: Constants llama.cpp fixes for LLM_ARCH_GEMMA3: value, where it comes from, GGUF override.
LLAMA_GEMMA3: dict[str, tuple[Any, str, str | None]] = {
    "swa_pattern": (6, "src/models/gemma3.cpp load_arch_hparams: load_swa_pattern(ml, 6); "
                    "llama-hparams.cpp set_swa_pattern: layer il slides iff il % 6 < 5",
                    "attention.sliding_window_pattern"),
    "rope_freq_base_swa": (10000.0, "src/llama-hparams.h rope_freq_base_train_swa default "
                           "(llama_model::get_rope_freq_base picks it on SWA layers)",
                           "rope.freq_base_swa"),
    "rope_type": ("neox", "src/llama-model.cpp llama_model_rope_type: LLM_ARCH_GEMMA3 -> "
                  "LLAMA_ROPE_TYPE_NEOX (pairs i, i + n_rot/2)", None),
    "swa_mask": ("p1 - p0 >= n_swa", "src/llama-hparams.h is_masked_swa, "
                 "LLAMA_SWA_TYPE_STANDARD: key p0 is hidden from query p1", None),
    "attention_scale": ("1/sqrt(head_dim); 1/sqrt(n_embd/n_head) when n_layer == 62 (27B)",
                        "src/models/gemma3.cpp load_arch_hparams: f_attention_scale, applied "
                        "to Q after RoPE (kq_scale 1)", None),
    "embedding_scale": ("sqrtf(n_embd)", "src/models/gemma3.cpp graph: "
                        "ggml_scale(inpL, sqrtf(n_embd)) on token input", None),
    "ffn": ("gelu_tanh(gate) * up", "src/llama-graph.cpp build_ffn LLM_FFN_GELU + "
            "LLM_FFN_PAR -> ggml_geglu_split", None),
    "final_logit_softcapping": (0.0, "src/models/gemma3.cpp load_arch_hparams: 0 unless "
                                "the GGUF key is present; applied only when non-zero",
                                "final_logit_softcapping"),
}


def _key(r: gguf.GGUFReader, name: str) -> Any:
    f = r.fields.get(name)
    return None if f is None else f.contents()


def context_length(r: gguf.GGUFReader) -> int | None:
    """`{general.architecture}.context_length` of a GGUF (None when absent): the longest
    prompt + generated sequence llama.cpp's model was trained for."""
    arch = _key(r, "general.architecture")
    v = _key(r, f"{arch}.context_length") if isinstance(arch, str) else None
    return None if v is None else int(v)


def check_context(prompt_len: int, n: int, ctx: int | None, path: str) -> None:
    """Refuse (RefmodelError, exit 2) a decode of `n` tokens after `prompt_len` that does not
    fit the model's context, before any work: the rule of `reference` and `llama-ref`."""
    if n < 1:
        raise RefmodelError(f"--n must be at least 1, got {n}")
    if ctx is not None and prompt_len + n > ctx:
        raise RefmodelError(f"{path}: prompt ({prompt_len}) + n ({n}) exceeds the model's "
                           f"context length {ctx}")


def _check_number(path: str, key: str, value: Any, positive: bool) -> None:
    """A float hyper-parameter must be finite and >= 0 (> 0 when `positive`): a negative
    RMSNorm epsilon or RoPE base turns every activation into NaN a few ops later."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RefmodelError(f"{path}: {key} is {value!r}, not a number") from None
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        raise RefmodelError(f"{path}: {key} is {v:g}; it must be a finite number "
                           f"{'> 0' if positive else '>= 0'}")


@dataclass(frozen=True)
class Gemma3HParams:
    """One file's Gemma-3 text hyper-parameters (numbers as llama.cpp uses them)."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_rot: int
    rms_eps: np.float32
    rope_freq_base: np.float32
    rope_freq_base_swa: np.float32
    n_swa: int
    swa_layers: tuple[bool, ...]
    attention_scale: np.float32
    final_logit_softcapping: np.float32

    @classmethod
    def read(cls, r: gguf.GGUFReader, path: str, n_vocab: int) -> Gemma3HParams:
        """From the GGUF's metadata; RefmodelError (exit 2) naming the missing/bad field."""
        arch = _key(r, "general.architecture")
        if arch != ARCH:
            raise RefmodelError(f"{path}: general.architecture is {arch!r}, the reference "
                               f"forward models {ARCH!r}")

        def need(key: str) -> Any:
            v = _key(r, f"{ARCH}.{key}")
            if v is None:
                raise RefmodelError(f"{path}: missing metadata {ARCH}.{key}")
            return v

        def opt(key: str, default: Any) -> Any:
            v = _key(r, f"{ARCH}.{key}")
            return default if v is None else v

        scaling = opt("rope.scaling.type", "none")
        if scaling not in ("none", None):
            raise RefmodelError(f"{path}: {ARCH}.rope.scaling.type {scaling!r} is not modelled")
        n_layer, n_embd, n_head = int(need("block_count")), int(need("embedding_length")), \
            int(need("attention.head_count"))
        head_dim = int(opt("attention.key_length", n_embd // n_head))
        if int(opt("attention.value_length", head_dim)) != head_dim:
            raise RefmodelError(f"{path}: key_length != value_length is not modelled")
        n_swa = int(opt("attention.sliding_window", 0))
        pattern = opt("attention.sliding_window_pattern", LLAMA_GEMMA3["swa_pattern"][0])
        if isinstance(pattern, list):  # an explicit per-layer array (load_swa_pattern)
            swa = tuple(bool(v) for v in pattern[:n_layer])
        else:
            p = int(pattern)
            swa = tuple(p == 0 or il % p < p - 1 for il in range(n_layer))
        if n_swa <= 0:
            swa = (False,) * n_layer
        # 1.0f / std::sqrt(float(...)), in float32 as llama.cpp computes it
        scale_dim = np.float32(n_embd // n_head if n_layer == 62 else head_dim)
        scale = np.float32(1) / np.sqrt(scale_dim)
        eps = need("attention.layer_norm_rms_epsilon")
        for key, value, lowest in (("attention.layer_norm_rms_epsilon", eps, "a number >= 0"),
                                   ("rope.freq_base", opt("rope.freq_base", 1.0), "> 0"),
                                   ("rope.freq_base_swa", opt("rope.freq_base_swa", 1.0), "> 0"),
                                   ("final_logit_softcapping",
                                    opt("final_logit_softcapping", 0.0), "a number >= 0")):
            _check_number(path, f"{ARCH}.{key}", value, positive=lowest == "> 0")
        return cls(
            n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            n_head_kv=int(opt("attention.head_count_kv", n_head)), head_dim=head_dim,
            n_ff=int(need("feed_forward_length")),
            n_rot=int(opt("rope.dimension_count", head_dim)),
            rms_eps=np.float32(need("attention.layer_norm_rms_epsilon")),
            rope_freq_base=np.float32(opt("rope.freq_base", 10000.0)),
            rope_freq_base_swa=np.float32(opt("rope.freq_base_swa",
                                              LLAMA_GEMMA3["rope_freq_base_swa"][0])),
            n_swa=n_swa, swa_layers=swa, attention_scale=scale,
            final_logit_softcapping=np.float32(opt("final_logit_softcapping", 0.0)),
        )
