"""The real llama.cpp (built from the llama-cpp-python sdist) as the "llama-ref" decoder: its
build, its greedy decode, its eval-callback dumps, the CLI's handling of bad input — and the
reference forward (refmodel) held to it.

Semantics of the comparisons (harness/ggml/llamacmp.py says why the bounds hold):

- llama.cpp: AVX2/FMA build, F16 KV cache (its default), no flash attention, no repacking;
  activations quantized to Q8_0/Q8_1/Q8_K by the x86 quantizer (id = 127/amax, ties to
  even), SIMD float order.
- reference: `ggml` semantics — activations quantized the same way (its default rounding
  on x86-64 is llama.cpp's x86 quantizer) but summed in the generic C float order; K/V and
  attention operands rounded to fp16; ggml's fp16 GELU table.

So the two must differ in the float order of every matmul and in the occasional activation
within an ulp of a rounding boundary (a ~1e-3 jump, carried forward); nothing else.
Tokens are compared under a derived bound; activations are reported (max relative
difference per tensor and layer) and the inputs of layer 0, where no rounding has happened
yet, must be bit-identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.ggml import llamacmp, llamacpp, llamaref
from harness.golden import tinygemma as tg

pytestmark = pytest.mark.llamacpp

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "golden" / "tiny-gemma3.gguf"
PROMPT = [2, 5, 9, 40]


@pytest.fixture(scope="session")
def built() -> Path:
    return llamacpp.build(log=lambda m: None)


@pytest.fixture(scope="module")
def small_window(tmp_path_factory) -> Path:
    """tiny-gemma3 with a sliding window of 8: a 32-token decode runs far past it."""
    path = tmp_path_factory.mktemp("sw") / "tiny-gemma3-swa8.gguf"
    tg.write(path, tg.TinyGemmaConfig(sliding_window=8), seed=0)
    return path


def skoracle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_build_is_cached_with_its_flags(built):
    stamp = json.loads((llamacpp.build_dir() / "stamp.json").read_text())
    assert stamp["build"]["cmake_flags"] == list(llamacpp.CMAKE_FLAGS)
    assert "-DGGML_NATIVE=OFF" in stamp["build"]["cmake_flags"]
    assert "-DGGML_AMX_INT8=OFF" in stamp["build"]["cmake_flags"]
    assert all((built / n).is_file() for n in llamacpp.LIBRARIES)
    assert llamacpp.is_built()


def test_greedy_decode_is_deterministic_across_threads(built):
    one = llamaref.decode(TINY, PROMPT, 8, threads=1)
    two = llamaref.decode(TINY, PROMPT, 8, threads=2)  # slow on a busy machine (spin waits)
    assert len(one.tokens) == 8 and one.logits.shape == (8, 512)
    assert one.tokens == two.tokens
    assert np.array_equal(one.logits.view(np.uint32), two.logits.view(np.uint32))
    assert one.tokens == [int(np.argmax(r)) for r in one.logits]
    assert one.margins == pytest.approx([llamaref.top2_margin(r) for r in one.logits])


def test_dump_names_and_shapes_follow_the_graph(built, tmp_path):
    r = llamaref.decode(TINY, PROMPT, 3, dump=tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["format"] == llamaref.DUMP_FORMAT
    assert meta["tokens"] == PROMPT + r.tokens[:-1] and meta["n_steps"] == 6
    # every dumped name is a node of the graph, which names more than the dump keeps
    graph = set(meta["graph_tensors"])
    assert {n.split("#", 1)[0] for n in llamaref.dump_names(4)} <= graph
    assert len(graph) > len(llamaref.dump_names(4))
    with np.load(tmp_path / "d" / "step-005.npz") as z:
        names = z.files
        assert names == llamaref.dump_names(4)
        assert z["inp_scaled"].shape == (1, 160)
        assert z["Qcur-2"].shape == (1, 4, 64) and z["Kcur-2#1"].shape == (1, 1, 64)
        assert z["kq-3"].shape == (4, 1, 6)  # six positions seen, window 64
        assert np.allclose(z["kq_soft_max-3"].sum(axis=-1), 1, atol=1e-6)
        assert z["kqv_out-1"].shape == (1, 256)
        assert np.array_equal(z["result_output"][0], r.logits[-1])


def test_local_layers_see_only_the_window(built, small_window, tmp_path):
    r = llamaref.decode(small_window, PROMPT, 32, dump=tmp_path / "d")
    assert len(r.tokens) == 32
    for step in (3, 7, 8, 20, 34):
        with np.load(tmp_path / "d" / f"step-{step:03d}.npz") as z:
            for layer in range(4):  # 4 layers, pattern 6: all sliding-window layers
                assert z[f"kq-{layer}"].shape == (4, 1, min(step + 1, 8))
                assert z[f"kq_soft_max-{layer}"].shape[-1] == min(step + 1, 8)


@pytest.mark.slow
def test_functiongemma_shaped_decode_and_dump(built, tmp_path):
    """FunctionGemma-270M's shapes and quant mix (random weights, ~258 MB, cached)."""
    model = tg.cached_model(tg.FUNCTIONGEMMA, "functiongemma-shaped")
    prompt = [2, 105, 2364, 107]
    r = llamaref.decode(model, prompt, 32, dump=tmp_path / "d")
    assert len(r.tokens) == 32 and r.logits.shape == (32, 262144)
    assert all(np.isfinite(m) and m >= 0 for m in r.margins)
    with np.load(tmp_path / "d" / "step-034.npz") as z:
        assert z.files == llamaref.dump_names(18)
        assert z["Qcur-4"].shape == (1, 4, 256) and z["Vcur-4"].shape == (1, 1, 256)
        assert z["kq-5"].shape == (4, 1, 35)  # layer 5: global; layer 0: window 512 > 35
        assert z["kq-0"].shape == (4, 1, 35)
        assert z["ffn_out-17"].shape == (1, 640) and z["result_output"].shape == (1, 262144)
        assert np.array_equal(z["result_output"][0], r.logits[-1])


def test_f32_cache_is_an_option_and_moves_the_logits_slightly(built):
    f16 = llamaref.decode(TINY, PROMPT, 4)
    f32 = llamaref.decode(TINY, PROMPT, 4, kv="f32")
    assert f16.logits.shape == f32.logits.shape
    assert not np.array_equal(f16.logits, f32.logits)  # fp16 rounding of K/V is visible
    assert np.allclose(f16.logits, f32.logits, rtol=0, atol=0.05 * np.abs(f16.logits).max())


def test_cli_json_and_text(built):
    out = skoracle("llama-ref", str(TINY), "--tokens", "2,5,9,40", "--n", "5", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["engine"] == "llama.cpp" and len(got["tokens"]) == 5 and len(got["margins"]) == 5
    assert got["prompt_tokens"] == PROMPT
    text = skoracle("llama-ref", str(TINY), "--tokens", "2,5,9,40", "--n", "5")
    assert text.returncode == 0
    assert text.stdout.splitlines()[0] == ",".join(map(str, got["tokens"]))


def test_prompt_goes_through_llamas_tokenizer(built):
    out = skoracle("llama-ref", str(TINY), "--prompt", "the weather", "--n", "2", "--json")
    assert out.returncode == 0, out.stderr
    prompt = json.loads(out.stdout)["prompt_tokens"]
    assert prompt[0] == 2 and len(prompt) >= 2  # BOS then the pieces


@pytest.mark.parametrize("args, message", [
    (["missing.gguf", "--tokens", "2"], "cannot read the model"),
    (["README.md", "--tokens", "2"], "not a GGUF file"),
    ([str(TINY), "--tokens", "2,99999"], "outside the vocabulary"),
    ([str(TINY), "--tokens", "2,x"], "comma-separated ids"),
    ([str(TINY), "--tokens", "2", "--n", "0"], "positive number"),
])
def test_bad_input_is_one_message_and_exit_2(built, args, message):
    out = skoracle("llama-ref", *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_decode_names_its_parameters_and_the_cli_its_options(built, tmp_path):
    """The library speaks of `decode`'s parameters; `skoracle llama-ref` of its options, for
    a refusal made before the worker starts and one the worker makes (the vocabulary)."""
    for kwargs, param, words in [
        ({"tokens": [2], "n": 0}, "n", "need a positive number of tokens, got 0"),
        ({"tokens": [2], "kv": "q4"}, "kv", "one of "),
        ({"tokens": [2, 99999], "n": 1}, "tokens", "id 99999 is outside the vocabulary"),
    ]:
        with pytest.raises(llamaref.DecodeArgumentError) as err:
            llamaref.decode(TINY, **kwargs)
        assert err.value.param == param and str(err.value).startswith(f"{param}: {words}")
        assert "--" not in str(err.value)
    exists = tmp_path / "d"
    exists.mkdir()
    with pytest.raises(llamaref.DecodeArgumentError, match=rf"^dump {exists}: already exists"):
        llamaref.decode(TINY, [2], 1, dump=exists)
    out = skoracle("llama-ref", str(TINY), "--tokens", "2,99999", "--n", "1")
    assert out.returncode == 2
    assert "llama-ref: error: --tokens: id 99999 is outside the vocabulary" in out.stderr
    out = skoracle("llama-ref", str(TINY), "--tokens", "2", "--n", "0")
    assert out.returncode == 2 and "error: --n: need a positive number of tokens" in out.stderr


def test_existing_dump_dir_is_left_alone(built, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    out = skoracle("llama-ref", str(TINY), "--tokens", "2", "--n", "1", "--dump", str(d))
    assert out.returncode == 2 and "already exists" in out.stderr
    assert [p.name for p in d.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".llama-ref-")]


def test_a_truncated_model_is_an_error_not_a_crash(built, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(TINY.read_bytes()[:4096])
    with pytest.raises(HarnessError, match="cannot load"):
        llamaref.decode(bad, PROMPT, 1)


# ---------------------------------------------------------------------------------------
# held to the reference

N = 32


def reference(model: Path):
    """The reference forward (package refmodel) with the `ggml` semantics."""
    from refmodel import Gemma3Reference

    return Gemma3Reference(model, semantics="ggml")


def _compare(model, tmp_path, capsys, label: str) -> list[llamacmp.StepCheck]:
    lr = llamaref.decode(model, PROMPT, N, dump=tmp_path / "llama")
    ref = reference(model)
    fed = PROMPT + lr.tokens[:-1]
    steps = llamacmp.token_steps(ref, fed, len(PROMPT), lr.tokens, lr.logits, tmp_path / "llama")
    with capsys.disabled():
        print(f"\n{label}: {N} greedy steps, llama.cpp vs reference (ggml semantics)")
        print(llamacmp.STEP_HEADER)
        for s in steps:
            print(s.row())
    return steps


@pytest.mark.parametrize("which", ["tiny-gemma3", "tiny-gemma3 window 8"])
def test_greedy_tokens_agree_wherever_the_margin_exceeds_the_bound(built, small_window, which,
                                                                    tmp_path, capsys):
    model = TINY if which == "tiny-gemma3" else small_window
    steps = _compare(model, tmp_path, capsys, which)
    assert len(steps) == N
    bad = [s for s in steps if not s.ok]
    assert not bad, "\n".join(s.row() for s in bad)
    assert sum(s.decided for s in steps) >= N // 2  # the bound is tight enough to decide


@pytest.mark.parametrize("which", ["tiny-gemma3", "tiny-gemma3 window 8"])
def test_activations_per_tensor_and_layer(built, small_window, which, tmp_path, capsys):
    model = TINY if which == "tiny-gemma3" else small_window
    from refmodel.dump import DumpWriter

    lr = llamaref.decode(model, PROMPT, N, dump=tmp_path / "llama")
    ref = reference(model)
    fed = PROMPT + lr.tokens[:-1]
    writer = DumpWriter(tmp_path / "ref", {"model": str(model), "semantics": "ggml",
                                           "load": "packed", "tokens": fed})
    ref.reset()
    for pos, tok in enumerate(fed):
        ref.forward(tok, pos, dump=writer.step(pos))
    writer.finish()
    errors = llamacmp.activation_errors(tmp_path / "ref", tmp_path / "llama")
    with capsys.disabled():
        print(f"\n{which}: max relative difference per tensor and layer over {len(fed)} steps")
        print(llamacmp.error_table(errors))
    by = {(e.tensor, e.layer): e for e in errors}
    assert set(by) == {llamacmp.split_name(n) for n in llamaref.dump_names(4)}
    assert by[("inp_scaled", -1)].max_rel == 0.0  # the same dequantized row times sqrtf(n)
    assert by[("attn_norm", 0)].max_rel == 0.0  # ggml's RMSNorm order, followed exactly
    assert all(np.isfinite(e.max_rel) for e in errors)


def test_cached_build_renames_into_place_and_cleans_up_on_failure(tmp_path):
    from harness.ggml import build as cref  # the build API cref and llamacpp share

    final = tmp_path / "lib-1"
    stamp = {"flags": ["-DX=ON"]}

    def make(work: Path) -> None:
        (work / "lib").mkdir()
        (work / "lib" / "libx.so").write_bytes(b"x")

    def broken(work: Path) -> None:
        (work / "partial").write_text("half")
        raise HarnessError("compiler died")

    with pytest.raises(HarnessError, match="compiler died"):
        cref.cached_build(final, lambda: False, broken, stamp, "x", log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lib-1.lock"]
    done = lambda: cref.stamp_matches(final, stamp, ("libx.so",))  # noqa: E731
    assert cref.cached_build(final, done, make, stamp, "x", log=lambda m: None) == final / "lib"
    assert done() and json.loads((final / "stamp.json").read_text())["build"] == stamp
    calls = []
    cref.cached_build(final, done, lambda w: calls.append(w), stamp, "x", log=lambda m: None)
    assert calls == []  # cached: make is not run again
    assert not cref.stamp_matches(final, {"flags": []}, ("libx.so",))  # other flags: rebuild
