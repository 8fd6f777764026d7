"""The tiny Gemma-3 GGUF: llama.cpp's gemma3 keys, a tied Q8_0 embedding, and the tensor-type
mix llama.cpp's quantizer gives a FunctionGemma-shaped model."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import oracle
from harness.golden import tinygemma as tg

GOLDEN_MODEL = Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "tiny-gemma3.gguf"

#: Keys llama.cpp's gemma3 loader reads (llm_load_hparams: generic + LLM_ARCH_GEMMA3 case)
#: and its SentencePiece vocabulary loader needs.
REQUIRED_KEYS = (
    "general.architecture", "general.file_type",
    "gemma3.context_length", "gemma3.embedding_length", "gemma3.block_count",
    "gemma3.feed_forward_length", "gemma3.attention.head_count",
    "gemma3.attention.head_count_kv", "gemma3.attention.key_length",
    "gemma3.attention.value_length", "gemma3.attention.layer_norm_rms_epsilon",
    "gemma3.rope.freq_base", "gemma3.attention.sliding_window",
    "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
)


@pytest.fixture(scope="module", params=sorted(tg.MIXES))
def model(request, tmp_path_factory) -> tuple[Path, tg.TinyGemmaConfig]:
    cfg = tg.TinyGemmaConfig(mix=request.param)
    path = tmp_path_factory.mktemp("tg") / f"tiny-{request.param}.gguf"
    tg.write(path, cfg, seed=0)
    return path, cfg


def test_structure_keys_and_size(model):
    path, cfg = model
    assert path.stat().st_size < 8_000_000
    assert tg.check(path, cfg) == []
    r = gguf.GGUFReader(path)
    missing = [k for k in REQUIRED_KEYS if k not in r.fields]
    assert not missing
    f = {k: r.fields[k].contents() for k in REQUIRED_KEYS}
    assert f["general.architecture"] == "gemma3"
    assert f["general.file_type"] == tg.MIXES[cfg.mix][1]
    assert f["gemma3.embedding_length"] == cfg.n_embd
    assert f["gemma3.attention.key_length"] * f["gemma3.attention.head_count"] == 256
    assert f["tokenizer.ggml.model"] == "llama"
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (2, 1)
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == len(set(tokens)) == cfg.n_vocab
    assert "<0x0A>" in tokens  # llama.cpp's SPM loader looks up the newline byte token
    assert len(f["tokenizer.ggml.scores"]) == len(f["tokenizer.ggml.token_type"]) == cfg.n_vocab


def test_tied_q8_0_embedding_and_a_mix_of_both_kinds(model):
    path, cfg = model
    r = gguf.GGUFReader(path)
    t = {x.name: x for x in r.tensors}
    assert "output.weight" not in t
    emb = t["token_embd.weight"]
    assert emb.tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert [int(d) for d in emb.shape] == [cfg.n_embd, cfg.n_vocab]
    kinds = {}
    for x in r.tensors:
        if x.tensor_type == gguf.GGMLQuantizationType.F32:
            assert len(x.shape) == 1 and x.name.endswith("norm.weight")
            continue
        in_dim = int(x.shape[0])
        kinds.setdefault(in_dim % oracle.QK_K == 0, set()).add(x.tensor_type.name)
    want = {"Q5_K_M": ({"Q5_1", "Q8_0"}, {"Q5_K", "Q6_K"}),
            "Q4_K_M": ({"Q5_0", "Q8_0"}, {"Q4_K", "Q6_K"})}[cfg.mix]
    assert kinds[False] == want[0] and kinds[True] == want[1]


def test_weights_are_the_oracles_quantization_of_finite_values(model):
    path, _ = model
    r = gguf.GGUFReader(path)
    for x in r.tensors:
        if x.tensor_type != gguf.GGMLQuantizationType.F32:
            values = oracle.dequantize(x.tensor_type.name, np.asarray(x.data))
            assert np.all(np.isfinite(values)) and np.any(values != 0), x.name


def test_the_two_mixes_differ_and_check_notices(model, tmp_path):
    path, cfg = model
    other = tg.TinyGemmaConfig(mix="Q4_K_M" if cfg.mix == "Q5_K_M" else "Q5_K_M")
    problems = tg.check(path, other)
    assert problems and all("rule gives" in p for p in problems)


def test_writing_is_deterministic(model, tmp_path):
    path, cfg = model
    again = tmp_path / "again.gguf"
    tg.write(again, cfg, seed=0)
    assert again.read_bytes() == path.read_bytes()


def test_mix_rule_on_functiongemma_dimensions():
    """FunctionGemma 270M (n_embd 640, 4 x 256 heads, n_ff 2048, 18 layers) in Q5_K_M: only
    attn_output (in 1024) and ffn_down (in 2048) keep K-quants; the rest fall back."""
    n = 18
    more = [i for i in range(n) if tg.use_more_bits(i, n)]
    assert more == [0, 1, 4, 7, 10, 13, 15, 16, 17]  # n/8 = 2, 7n/8 = 15
    for i in range(n):
        assert tg.tensor_type(f"blk.{i}.attn_q.weight", 640, i, n, "Q5_K_M") == "Q5_1"
        assert tg.tensor_type(f"blk.{i}.ffn_up.weight", 640, i, n, "Q5_K_M") == "Q5_1"
        assert tg.tensor_type(f"blk.{i}.attn_output.weight", 1024, i, n, "Q5_K_M") == "Q5_K"
        big = "Q6_K" if i in more else "Q5_K"
        assert tg.tensor_type(f"blk.{i}.ffn_down.weight", 2048, i, n, "Q5_K_M") == big
        small = "Q8_0" if i in more else "Q5_1"
        assert tg.tensor_type(f"blk.{i}.attn_v.weight", 640, i, n, "Q5_K_M") == small
    assert tg.tensor_type("token_embd.weight", 640, 0, n, "Q5_K_M") == "Q8_0"
    assert tg.tensor_type("blk.0.attn_q.weight", 640, 0, n, "Q4_K_M") == "Q5_0"


def test_golden_model_is_the_default_configuration():
    assert tg.check(GOLDEN_MODEL, tg.TinyGemmaConfig()) == []
