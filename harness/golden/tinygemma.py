"""A tiny Gemma-3 GGUF: FunctionGemma's structure at a size a test can carry.

Same architecture keys as llama.cpp's converter writes for Gemma 3 (`gemma3.*`), a small
SentencePiece-style vocabulary, the token embedding tied to the output (no `output.weight`),
and per-tensor types chosen by the rule llama.cpp's quantizer applies for a `Q5_K_M` (or
`Q4_K_M`) file: the K-quant a tensor would get, falling back to Q5_0 / Q5_1 / Q8_0 when its
row length is not a multiple of 256 — exactly what makes FunctionGemma (n_embd 640) a mix.

Dimensions: n_embd 160 (not a multiple of 256, like 640), 4 heads of 64 (attn_output
in = 256) and n_ff 512 (ffn_down in = 512), so both kinds of tensor occur. Weights are
random but deterministic (harness.golden.spec streams), norms F32 near 1 (the converter
stores Gemma's 1 + w).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

import oracle
from harness.errors import HarnessError
from harness.gguffile import SkainetGGUFWriter, open_gguf
from harness.golden import spec as S
from oracle.formats import QK_K, qtype

ARCH = "gemma3"

#: llama.cpp's fallback when a K-quant's row length is not a multiple of 256
#: (llama_tensor_get_type, "convert_incompatible_tensor").
LLAMA_FALLBACK: dict[str, str] = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

#: File types this module can lay out: base K-quant and the GGUF general.file_type value.
MIXES: dict[str, tuple[str, int]] = {
    "Q5_K_M": ("Q5_K", int(gguf.LlamaFileType.MOSTLY_Q5_K_M)),
    "Q4_K_M": ("Q4_K", int(gguf.LlamaFileType.MOSTLY_Q4_K_M)),
}


@dataclass(frozen=True)
class TinyGemmaConfig:
    """Hyper-parameters, named as the gemma3.* keys they become."""

    n_vocab: int = 512
    n_embd: int = 160
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 1
    head_dim: int = 64
    n_ff: int = 512
    context_length: int = 2048
    sliding_window: int = 64
    rope_freq_base: float = 1_000_000.0
    rms_eps: float = 1e-6
    mix: str = "Q5_K_M"
    #: "functiongemma": per-tensor types of llama.cpp's Q5_K_M FunctionGemma-270M file
    #: (harness.footprint.functiongemma_tensors) instead of the mix rule
    type_table: str | None = None


#: FunctionGemma-270M's shapes, metadata and quant mix with deterministic random weights
#: (~250 MB: generated into the cache by `cached_model`, never committed).
FUNCTIONGEMMA = TinyGemmaConfig(
    n_vocab=262144, n_embd=640, n_layer=18, n_head=4, n_head_kv=1, head_dim=256, n_ff=2048,
    context_length=32768, sliding_window=512, rope_freq_base=1_000_000.0,
    type_table="functiongemma")
#: weights per generated chunk of a large tensor (bounds the generator's memory)
CHUNK_WEIGHTS = 1 << 22


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's layer pick for the extra-bits tensors of *_K_M files."""
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def tensor_type(name: str, in_dim: int, i_layer: int, n_layer: int, mix: str) -> str:
    """The type llama.cpp's quantizer gives a 2-D gemma3 tensor in a `mix` file (no
    imatrix, tied embedding): token_embd Q8_0 when n_embd % 256 != 0 (else Q6_K); attn_v
    and ffn_down Q6_K on use_more_bits layers; everything else the base K-quant; then the
    fallback for rows that are not whole super-blocks."""
    base, _ = MIXES[mix]
    if name == "token_embd.weight":
        return "Q8_0" if in_dim % QK_K else "Q6_K"
    t = base
    if (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")) \
            and use_more_bits(i_layer, n_layer):
        t = "Q6_K"
    if in_dim % QK_K:
        t = LLAMA_FALLBACK[t]
    return t


def layout(cfg: TinyGemmaConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """Every tensor in file order: (name, numpy shape (rows, in) or (n,), type name)."""
    if cfg.type_table == "functiongemma":
        from harness import footprint

        table = {name: t for name, _, t in footprint.functiongemma_tensors()}
        return [(name, shape, table.get(name, t)) for name, shape, t in
                layout(TinyGemmaConfig(**{**cfg.__dict__, "type_table": None}))]
    if cfg.type_table is not None:
        raise HarnessError(f"tiny-gemma3: unknown type table {cfg.type_table!r}", 2)
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    out: list[tuple[str, tuple[int, ...], str]] = [
        ("token_embd.weight", (cfg.n_vocab, cfg.n_embd),
         tensor_type("token_embd.weight", cfg.n_embd, 0, cfg.n_layer, cfg.mix)),
    ]
    for i in range(cfg.n_layer):
        mats = [
            ("attn_q", (q_dim, cfg.n_embd)),
            ("attn_k", (kv_dim, cfg.n_embd)),
            ("attn_v", (kv_dim, cfg.n_embd)),
            ("attn_output", (cfg.n_embd, q_dim)),
            ("ffn_gate", (cfg.n_ff, cfg.n_embd)),
            ("ffn_up", (cfg.n_ff, cfg.n_embd)),
            ("ffn_down", (cfg.n_embd, cfg.n_ff)),
        ]
        norms = [
            ("attn_norm", cfg.n_embd), ("attn_q_norm", cfg.head_dim),
            ("attn_k_norm", cfg.head_dim), ("post_attention_norm", cfg.n_embd),
            ("ffn_norm", cfg.n_embd), ("post_ffw_norm", cfg.n_embd),
        ]
        for short, n in norms:
            out.append((f"blk.{i}.{short}.weight", (n,), "F32"))
        for short, shape in mats:
            name = f"blk.{i}.{short}.weight"
            out.append((name, shape, tensor_type(name, shape[1], i, cfg.n_layer, cfg.mix)))
    out.append(("output_norm.weight", (cfg.n_embd,), "F32"))
    return out


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-shaped vocabulary: Gemma's special ids (pad 0, eos 1, bos 2, unk 3),
    chat-turn controls, the 256 byte tokens llama.cpp's SPM tokenizer falls back to, then
    pieces. Returns tokens, scores, token types."""
    T = gguf.TokenType
    specials = [("<pad>", T.CONTROL), ("<eos>", T.CONTROL), ("<bos>", T.CONTROL),
                ("<unk>", T.UNKNOWN), ("<mask>", T.USER_DEFINED),
                ("<start_of_turn>", T.CONTROL), ("<end_of_turn>", T.CONTROL)]
    toks = [(s, t) for s, t in specials] + [(f"<0x{b:02X}>", T.BYTE) for b in range(256)]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    pieces = ["\u2581"] + [f"\u2581{c}" for c in letters] + list(letters) + list(".,:;!?()[]{}\"'")
    words = ["the", "call", "function", "name", "args", "user", "model", "tool", "json",
             "true", "false", "null", "get", "set", "time", "weather", "city", "value"]
    pieces += [f"\u2581{w}" for w in words] + words
    i = 0
    while len(toks) + len(pieces) < n_vocab and i < len(letters) ** 2:  # two-letter pieces
        pieces.append(f"\u2581{letters[i // len(letters)]}{letters[i % len(letters)]}")
        i += 1
    toks += [(p, T.NORMAL) for p in pieces]
    # a large vocabulary (FunctionGemma's 262144) is filled up as Gemma's is, with unused slots
    toks += [(f"<unused{j}>", T.UNUSED) for j in range(n_vocab - len(toks))]
    toks = toks[:n_vocab]
    if len(toks) != n_vocab or len({t for t, _ in toks}) != n_vocab:
        raise HarnessError(f"tiny-gemma3: cannot lay out a vocabulary of {n_vocab}", 2)
    scores = [0.0 if t != T.NORMAL else -float(k) for k, (_, t) in enumerate(toks)]
    return [t for t, _ in toks], scores, [int(t) for _, t in toks]


def tensors(cfg: TinyGemmaConfig, seed: int) -> list[tuple[str, np.ndarray, str]]:
    """The model's tensors: (name, data, type). Quantized data is uint8 (rows, row bytes)
    from the oracle's quantizer; norms are float32."""

    out = []
    for name, shape, tname in layout(cfg):
        rng = S.case_rng(seed, f"tiny-gemma3/{cfg.mix}/{name}")
        if tname == "F32":
            data = (1.0 + (S.uniform(rng, shape) - 0.5) * 0.25).astype(np.float32)
        elif shape[0] * shape[1] <= CHUNK_WEIGHTS:
            data = oracle.quantize(tname, S.random_weights(rng, *shape) * np.float32(0.125))
        else:  # large: one stream per chunk of rows, so memory stays bounded
            step = max(1, CHUNK_WEIGHTS // shape[1])
            data = np.empty((shape[0], qtype(tname).row_bytes(shape[1])), np.uint8)
            for start in range(0, shape[0], step):
                stop = min(shape[0], start + step)
                crng = S.case_rng(seed, f"tiny-gemma3/{cfg.mix}/{name}/rows{start}")
                data[start:stop] = oracle.quantize(
                    tname, S.random_weights(crng, stop - start, shape[1]) * np.float32(0.125))
        out.append((name, data, tname))
    return out


def write(path: Path, cfg: TinyGemmaConfig | None = None, seed: int = S.DEFAULT_SEED) -> None:
    """Write the tiny model to `path` (deterministic for a given cfg and seed)."""
    cfg = cfg or TinyGemmaConfig()
    tokens, scores, types = vocabulary(cfg.n_vocab)
    w = SkainetGGUFWriter(path, ARCH)
    w.add_custom_alignment(S.ALIGNMENT)
    w.add_name(f"tiny-gemma3-{cfg.mix.lower()}")
    w.add_description("deterministic random weights; structure of a FunctionGemma "
                      f"{cfg.mix} file (skoracle fixtures, generator {S.GENERATOR_VERSION})")
    w.add_file_type(MIXES[cfg.mix][1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_rope_freq_base(cfg.rope_freq_base)
    w.add_sliding_window(cfg.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_pad_token_id(0)
    w.add_eos_token_id(1)
    w.add_bos_token_id(2)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_string(S.K_VERSION, S.GENERATOR_VERSION)
    w.add_uint64(S.K_SEED, seed)
    for name, data, tname in tensors(cfg, seed):
        raw = None if tname == "F32" else gguf.GGMLQuantizationType(qtype(tname).ggml_type)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def describe(cfg: TinyGemmaConfig | None = None) -> dict[str, Any]:
    """A summary for the manifest: dimensions and how many tensors of each type."""
    cfg = cfg or TinyGemmaConfig()
    counts: dict[str, int] = {}
    for _, _, t in layout(cfg):
        counts[t] = counts.get(t, 0) + 1
    return {
        "architecture": ARCH, "mix": cfg.mix, "n_vocab": cfg.n_vocab, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_head_kv": cfg.n_head_kv,
        "head_dim": cfg.head_dim, "n_ff": cfg.n_ff, "tensor_types": counts,
        "tied_embedding": True,
    }


def check(path: Path, cfg: TinyGemmaConfig) -> list[str]:
    """Structural problems of a written tiny model (empty list = fine): architecture key,
    tensor names, shapes and types per the mix rule, no output.weight, finite weights."""

    problems: list[str] = []
    r, _ = open_gguf(path)
    arch = r.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[arch.data[0]]).decode() != ARCH:
        problems.append("general.architecture is not gemma3")
    want = {name: (shape, t) for name, shape, t in layout(cfg)}
    have = {t.name: t for t in r.tensors}
    if "output.weight" in have:
        problems.append("output.weight present: the output must be tied to token_embd")
    for name in sorted(set(want) - set(have)):
        problems.append(f"missing tensor {name}")
    for name in sorted(set(have) - set(want)):
        problems.append(f"unexpected tensor {name}")
    for name in sorted(set(want) & set(have)):
        shape, tname = want[name]
        t = have[name]
        got_type = gguf.GGMLQuantizationType(int(t.tensor_type)).name
        if got_type != tname:
            problems.append(f"{name}: type {got_type}, the {cfg.mix} rule gives {tname}")
            continue
        if tuple(int(d) for d in reversed(t.shape)) != shape:
            problems.append(f"{name}: shape {list(t.shape)}, expected ne {list(shape[::-1])}")
            continue
        data = np.array(t.data)
        values = data if tname == "F32" else oracle.dequantize(tname, data)
        if not np.all(np.isfinite(values)):
            problems.append(f"{name}: non-finite weights")
    return problems


def cached_model(cfg: TinyGemmaConfig, name: str, seed: int = S.DEFAULT_SEED) -> Path:
    """`cfg`'s model in the cache ($SKORACLE_CACHE or ~/.cache/skainet-oracle), generated on
    first use into a temporary file and renamed into place; reused while the generator
    version, seed and configuration are the same."""
    import hashlib
    import os
    import tempfile

    from harness.ggml.build import cache_root

    key = hashlib.sha256(repr((S.GENERATOR_VERSION, seed, cfg)).encode()).hexdigest()[:12]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}-{key}.gguf"
    if path.is_file():
        return path
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".gguf", dir=root)
    os.close(fd)
    try:
        write(Path(tmp), cfg, seed)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
