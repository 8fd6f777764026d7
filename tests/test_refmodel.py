"""The whole-model reference: forward in every semantics, fast within the derived bound,
dump naming, the diff CLI, sliding-window masking, tokenizer, packed-load memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.golden import tinygemma
from kernels_ref import error_bound, matmul_wt
from refmodel import SEMANTICS_NAMES, Gemma3Reference
from refmodel.dump import diff_dumps
from refmodel.weights import open_gguf, string_array

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "golden" / "tiny-gemma3.gguf"
PROMPT = [2, 105, 300]


def skoracle(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def windowed(tmp_path_factory) -> tuple[Path, Path]:
    """Six layers (layer 5 global, 0-4 sliding) with a window of 8, and the same weights
    with a window wider than any decode here."""
    d = tmp_path_factory.mktemp("swa")
    small, wide = d / "window8.gguf", d / "window4096.gguf"
    tinygemma.write(small, tinygemma.TinyGemmaConfig(n_layer=6, sliding_window=8))
    tinygemma.write(wide, tinygemma.TinyGemmaConfig(n_layer=6, sliding_window=4096))
    return small, wide


@pytest.mark.parametrize("semantics", SEMANTICS_NAMES)
def test_forward_runs_in_every_semantics(semantics):
    r = Gemma3Reference(TINY, semantics=semantics).decode(PROMPT, 3)
    assert len(r.tokens) == 3 and all(0 <= t < 512 for t in r.tokens)
    assert r.logits.shape == (3, 512) and np.isfinite(r.logits).all()
    assert len(r.margins) == 3 and min(r.margins) >= 0 and r.steps == 5


def test_skainet_orders_agree_with_exact_only_as_far_as_their_kernels_do():
    """Semantics that change the matmul's float order change the logits' bits (so the
    semantics really reaches every matmul), while greedy ids agree at these margins."""
    exact = Gemma3Reference(TINY, "exact").decode(PROMPT, 4)
    for sem in ("skainet_neon", "ggml"):
        other = Gemma3Reference(TINY, sem).decode(PROMPT, 4)
        assert not np.array_equal(exact.logits, other.logits), sem


def test_fast_matmuls_are_within_the_derived_bound():
    """Every matmul of a `fast` forward against `exact` on the same input, within
    kernels_ref.error_bound (rigorous for any float32 order)."""
    m = Gemma3Reference(TINY, "fast")
    calls = []
    inner = m.matmul

    def spy(x, mat):
        y = inner(x, mat)
        calls.append((x.copy(), mat, y))
        return y

    m.matmul = spy
    m.decode(PROMPT, 2)
    assert len(calls) == 4 * 7 * 4 + 4  # 4 steps x (4 layers x 7 matmuls + lm_head)
    worst = 0.0
    for x, mat, y in calls:
        ex = matmul_wt(x, mat.data, mat.type, mat.rows, mat.cols, semantics="exact")
        b = error_bound(x, mat.data, mat.type, mat.rows, mat.cols)
        diff = np.abs(y.astype(np.float64) - ex)
        assert (diff <= b).all(), mat.name
        worst = max(worst, float((diff / b).max()))
    assert worst > 0  # fast really is a different order


def test_exact_and_fast_dumps_show_no_divergence(tmp_path):
    for sem in ("exact", "fast"):
        r = skoracle("reference", str(TINY), "--tokens", "2,105,300", "--n", "3",
                     "--semantics", sem, "--dump", str(tmp_path / sem))
        assert r.returncode == 0, r.stderr
    r = skoracle("reference", "diff", str(tmp_path / "exact"), str(tmp_path / "fast"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no divergence beyond the bound" in r.stdout


def test_dump_names_shapes_and_meta(tmp_path):
    d = tmp_path / "dump"
    r = skoracle("reference", str(TINY), "--tokens", "2,105", "--n", "2", "--dump", str(d),
                 "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["format"] == "skoracle-refdump-1" and meta["n_steps"] == 3
    assert meta["tokens"] == [2, 105, rep["tokens"][0]]
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "step-000.npz",
                                                   "step-001.npz", "step-002.npz"]
    per_layer = ["attn_norm", "Qcur", "Kcur", "Vcur", "Qcur_normed", "Kcur_normed", "Qcur#1",
                 "Kcur#1", "kq", "kq_soft_max", "kqv_out", "attn_post_norm", "sa_out",
                 "ffn_norm", "ffn_up", "ffn_gate", "ffn_geglu", "ffn_out", "ffn_post_norm",
                 "l_out"]

    def named(base: str, il: int) -> str:
        name, _, rep_ = base.partition("#")
        return f"{name}-{il}" + (f"#{rep_}" if rep_ else "")

    want = ["inp_scaled"] + [named(b, il) for il in range(4) for b in per_layer] + \
        ["result_norm", "result_output"]
    with np.load(d / "step-002.npz") as z:
        assert z.files == want
        assert z["inp_scaled"].shape == (1, 160) and z["Qcur-0"].shape == (1, 4, 64)
        assert z["Kcur-3#1"].shape == (1, 1, 64) and z["kq-1"].shape == (4, 1, 3)
        assert z["kqv_out-2"].shape == (1, 256) and z["ffn_up-0"].shape == (1, 512)
        assert z["result_output"].shape == (1, 512)
        assert all(z[n].dtype == np.float32 for n in z.files)
        assert int(np.argmax(z["result_output"])) == rep["tokens"][1]


def test_diff_names_an_injected_perturbation(tmp_path):
    a = tmp_path / "a"
    assert skoracle("reference", str(TINY), "--tokens", "2,105", "--n", "2", "--dump",
                    str(a)).returncode == 0
    b = tmp_path / "b"
    shutil.copytree(a, b)
    with np.load(b / "step-001.npz") as z:
        arrays = {n: z[n] for n in z.files}
    arrays["ffn_out-2"] = arrays["ffn_out-2"].copy()
    arrays["ffn_out-2"][0, 17] *= np.float32(1.001)
    np.savez(b / "step-001.npz", **arrays)
    r = skoracle("reference", "diff", str(a), str(b))
    assert r.returncode == 1
    assert "first divergence: step 1 tensor ffn_out-2 at index [0, 17]" in r.stdout
    first, rows = diff_dumps(a, b)
    assert first.name == "ffn_out-2" and all(t.max_abs == 0 for t in rows[:-1])
    assert skoracle("reference", "diff", str(a), str(a)).returncode == 0


def test_decode_longer_than_the_sliding_window(windowed, tmp_path):
    """20 steps with a window of 8: sliding layers see only the last 8 positions, the
    global layer all; until the window fills the two models agree bit for bit, after it
    they must not."""
    small, wide = windowed
    dumps = {}
    for name, path in (("small", small), ("wide", wide)):
        dumps[name] = d = tmp_path / name
        r = skoracle("reference", str(path), "--tokens", "2", "--n", "20", "--semantics",
                     "fast", "--dump", str(d), "--json")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["tokens"]) == 20
    with np.load(dumps["small"] / "step-015.npz") as z:
        assert [z[f"kq-{il}"].shape[-1] for il in range(6)] == [8, 8, 8, 8, 8, 16]
    for step in range(20):
        with np.load(dumps["small"] / f"step-{step:03d}.npz") as s, \
                np.load(dumps["wide"] / f"step-{step:03d}.npz") as w:
            same = np.array_equal(s["result_output"], w["result_output"])
            assert same == (step < 8), step


def test_window_masks_exactly_the_oldest_positions(windowed):
    """Layer 0 sees the same keys in both models when the same prompt is fed, so at
    position 10 the window-8 model's scores must be exactly the wide model's last 8
    (positions 3..10), and its softmax a softmax over those alone; the global layer 5
    keeps all 11."""
    small, wide = windowed
    prompt = [2, 105, 300, 7, 8, 9, 10, 11, 12, 13, 14]
    got: dict[str, dict] = {"small": {}, "wide": {}}
    for name, path in (("small", small), ("wide", wide)):
        Gemma3Reference(path, "exact").decode(
            prompt, 1, dump=lambda step, g=got[name]: (
                lambda n, a: g.__setitem__((step, n), a)))
    kq_small, kq_wide = got["small"][(10, "kq-0")], got["wide"][(10, "kq-0")]
    assert kq_small.shape == (4, 1, 8) and kq_wide.shape == (4, 1, 11)
    assert np.array_equal(kq_small, kq_wide[..., 3:])
    p = got["small"][(10, "kq_soft_max-0")]
    e = np.exp(kq_small.astype(np.float64) - kq_small.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=-1, keepdims=True), rtol=1e-6)
    assert got["small"][(10, "kq-5")].shape == (4, 1, 11)


def test_prompt_uses_the_gguf_vocabulary():
    r = skoracle("reference", str(TINY), "--prompt", "get the weather", "--n", "2", "--json")
    assert r.returncode == 0, r.stderr
    ids = json.loads(r.stdout)["prompt_tokens"]
    pieces = string_array(open_gguf(TINY), "tokenizer.ggml.tokens")
    assert ids[0] == 2  # add_bos_token
    assert "".join(pieces[i] for i in ids[1:]) == "get\u2581the\u2581weather"
    utf8 = skoracle("reference", str(TINY), "--prompt", "Zürich", "--n", "1", "--json")
    pid = json.loads(utf8.stdout)["prompt_tokens"]
    assert [pieces[i] for i in pid[2:4]] == ["<0xC3>", "<0xBC>"]  # byte fallback for ü


@pytest.mark.parametrize("args, message", [
    (["missing.gguf", "--tokens", "2"], "no such file"),
    ([str(TINY), "--tokens", "2,999"], "out of range"),
    ([str(TINY), "--tokens", "2,x"], "not an integer"),
    ([str(TINY)], "exactly one of --tokens and --prompt"),
    ([str(TINY), "--tokens", "2", "--n", "5000"], "context length"),
    ([str(TINY), "--tokens", "2", "--dump", str(ROOT / "fixtures")], "already exists"),
    (["diff", str(ROOT)], "usage"),
    (["diff", str(ROOT), str(ROOT)], "not a reference dump"),
    ([str(ROOT / "fixtures/golden/dequantize-q8_0-edge-o9-i256.gguf"), "--tokens", "2"],
     "general.architecture"),
])
def test_bad_input_is_one_clear_message(args, message):
    r = skoracle("reference", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_failed_decode_leaves_no_dump(tmp_path):
    d = tmp_path / "d"
    r = skoracle("reference", str(TINY), "--tokens", "2,999", "--dump", str(d))
    assert r.returncode == 2 and not d.exists() and list(tmp_path.iterdir()) == []


MEMORY_PROBE = """
import json, sys, tracemalloc
from refmodel import Gemma3Reference
tracemalloc.start()
m = Gemma3Reference(sys.argv[1], semantics="fast", load=sys.argv[2])
m.decode([2, 105], 2)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1]}))
"""


@pytest.mark.slow
def test_packed_load_does_not_expand_the_embedding(tmp_path):
    """A 32768 x 640 Q8_0 embedding (84 MB as FP32): a packed decode allocates under half
    of one FP32 copy (its transient is one bounded chunk of rows, whatever the vocabulary);
    dequant-fp32 allocates the three SKaiNET 0.30.0 kept."""
    path = tmp_path / "wide-vocab.gguf"
    tinygemma.write(path, tinygemma.TinyGemmaConfig(n_vocab=32768, n_embd=640, n_layer=2))
    fp32_table = 32768 * 640 * 4
    peaks = {}
    for load in ("packed", "dequant-fp32"):
        r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), load],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        peaks[load] = json.loads(r.stdout)["peak"]
    assert peaks["packed"] < fp32_table / 2
    assert peaks["dequant-fp32"] >= 3 * fp32_table


def test_dequant_fp32_load_gives_the_same_decode():
    """SKaiNET 0.30.0's loading changes memory, not numbers: under `exact` the FP32 tables
    give the packed decode's logits bit for bit (float64 sums of the same exact products)."""
    packed = Gemma3Reference(TINY, "exact", "packed").decode(PROMPT, 4)
    m = Gemma3Reference(TINY, "exact", "dequant-fp32")
    assert m.w.fp32["token_embd.weight"].shape == (512, 160)
    assert m.w.fp32["output.T"].shape == (160, 512) and m.w.fp32["output.T"].flags.c_contiguous
    assert not np.shares_memory(m.w.fp32["token_embd.weight"], m.w.fp32["output.weight"])
    fp32 = m.decode(PROMPT, 4)
    assert fp32.tokens == packed.tokens
    assert np.array_equal(fp32.logits.view(np.uint32), packed.logits.view(np.uint32))


def test_diff_compares_only_the_steps_fed_the_same_tokens(tmp_path):
    for name, toks in (("a", "2,105"), ("b", "2,106")):
        assert skoracle("reference", str(TINY), "--tokens", toks, "--n", "1", "--dump",
                        str(tmp_path / name)).returncode == 0
    r = skoracle("reference", "diff", str(tmp_path / "a"), str(tmp_path / "b"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("tokens differ: fed the same tokens for steps 0..0, different ones from step 1 on "
            "(of 2); only steps 0..0 are compared") in r.stdout
    first, rows = diff_dumps(tmp_path / "a", tmp_path / "b")
    assert first is None and {t.step for t in rows} == {0}


#: a seed whose tiny-gemma3 decodes PROMPT as 300 300 300 203 ...: a token that first
#: appears mid-run (the default seed repeats its first token), so a stop there is mid-decode
TURNING_SEED = 8


def first_new_token(tokens: list[int]) -> int | None:
    """Index of the first generated token that did not come before it (None: none does)."""
    return next((i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i]), None)


def test_decode_stops_at_a_stop_id_and_spends_no_pass_after_it(tmp_path):
    model = tmp_path / "turning.gguf"
    tinygemma.write(model, seed=TURNING_SEED)
    m = Gemma3Reference(model, "fast")
    full = m.decode(PROMPT, 8)
    k = first_new_token(full.tokens)
    assert k is not None and k >= 2, full.tokens  # the end token comes mid-run
    end = full.tokens[k]
    never_made = [t for t in range(512) if t not in full.tokens]
    passes = []
    forward = m.forward
    m.forward = lambda token, pos, dump=None: passes.append(pos) or forward(token, pos, dump)
    r = m.decode(PROMPT, 8, stop_ids={end, *never_made[:3]})
    assert r.tokens == full.tokens[:k + 1] and r.end_token == end
    # prompt-only passes, then one pass per generated token up to and including the end token
    assert len(passes) == r.steps == r.prompt_steps + k + 1 == len(PROMPT) + k
    assert passes == list(range(r.steps))
    assert np.array_equal(r.logits.view(np.uint32), full.logits[:k + 1].view(np.uint32))
    assert r.margins == full.margins[:k + 1] and full.end_token is None
    # stop ids never generated, or none: all n tokens
    passes.clear()
    never = m.decode(PROMPT, 8, stop_ids=never_made)
    assert never.tokens == full.tokens and never.end_token is None
    assert len(passes) == never.steps == len(PROMPT) + 7
