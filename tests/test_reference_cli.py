"""`skoracle reference` and `llama-ref` as a user meets them: errors that name the file and
tensor, checks before any work, progress on long decodes, the semantics' own options, and a
`reference diff` that compares like with like (against the real llama.cpp too)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

from harness.ggml import llamacpp
from harness.golden import tinygemma
from harness.progress import DecodeProgress, progress_text
from kernels_ref import activations
from oracle.cfloat import f32_to_fp16
from refmodel import Gemma3Reference, semantics_options
from refmodel.dump import diff_dumps

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "golden" / "tiny-gemma3.gguf"


def skoracle(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess, command: str = "reference") -> str:
    """The single stderr line of a refused command (exit 2), without its prefix."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    prefix = f"skoracle {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


def patched(tmp_path: Path, name: str, tensor: str, offset: int, data: bytes) -> Path:
    """A copy of tiny-gemma3 with `data` written at byte `offset` of `tensor`'s data."""
    out = tmp_path / name
    shutil.copy(TINY, out)
    t = next(t for t in gguf.GGUFReader(out).tensors if t.name == tensor)
    with open(out, "r+b") as f:
        f.seek(int(t.data_offset) + offset)
        f.write(data)
    return out


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    nan = np.float32(np.nan).tobytes()
    inf16 = np.float16(np.inf).tobytes()
    models = {
        "nan-norm": patched(d, "nan-norm.gguf", "output_norm.weight", 4 * 3, nan),
        # Q8_0 rows of 160 = 5 blocks of 34 bytes: block 2 of row 0 (columns 64..95)
        "inf-embd-scale": patched(d, "inf-embd.gguf", "token_embd.weight", 34 * 2, inf16),
        "inf-q-scale": patched(d, "inf-q.gguf", "blk.1.attn_q.weight", 0, inf16),
    }
    models["negative-eps"] = d / "eps.gguf"
    tinygemma.write(models["negative-eps"], tinygemma.TinyGemmaConfig(rms_eps=-1e-6))
    models["context-1"] = d / "ctx1.gguf"
    tinygemma.write(models["context-1"], tinygemma.TinyGemmaConfig(context_length=1))
    return models


# ---------------------------------------------------------------------------------------
# refusals: one line naming the file and the field, exit 2, before any work


@pytest.mark.parametrize("which, words", [
    ("nan-norm", "tensor output_norm.weight holds nan at row 0, column 3 (step 0: result_norm"),
    ("inf-embd-scale", "tensor token_embd.weight holds nan at row 0, column 64"),
    ("inf-q-scale", "tensor blk.1.attn_q.weight holds inf at row 0, column 0 (step 0: Qcur-1"),
    ("negative-eps", "gemma3.attention.layer_norm_rms_epsilon is -1e-06; it must be a finite "
                     "number >= 0"),
])
def test_bad_weights_and_keys_name_the_file_and_tensor(bad_models, which, words):
    path = bad_models[which]
    r = skoracle("reference", str(path), "--tokens", "2,105", "--n", "2")
    line = one_error_line(r)
    assert line.startswith(f"{path}: ") and words in line, line
    assert "RuntimeWarning" not in r.stderr


def test_a_vocabulary_smaller_than_the_embedding_is_refused(tmp_path, monkeypatch):
    full = tinygemma.vocabulary
    monkeypatch.setattr(tinygemma, "vocabulary", lambda n: tuple(v[:1] for v in full(n)))
    path = tmp_path / "one-token.gguf"
    tinygemma.write(path)
    want = (f"{path}: tokenizer.ggml.tokens has 1 tokens but token_embd.weight has 512 rows "
            "(llama.cpp refuses a vocabulary that does not match the embedding)")
    assert one_error_line(skoracle("reference", str(path), "--tokens", "2", "--n", "2")) == want
    # llama-ref says the same before llama.cpp starts (it checks before any build too)
    r = skoracle("llama-ref", str(path), "--tokens", "2", "--n", "2")
    assert one_error_line(r, "llama-ref") == want


@pytest.mark.parametrize("args, words", [
    (["--n", "100000"], "prompt (1) + n (100000) exceeds the model's context length 2048"),
    (["--load", "dequant-fp32", "--n", "4000"], "exceeds the model's context length 2048"),
])
def test_reference_checks_the_context_before_loading(args, words):
    assert words in one_error_line(skoracle("reference", str(TINY), "--tokens", "2", *args))


def test_truncated_step_file_is_one_line(tmp_path):
    a = tmp_path / "a"
    assert skoracle("reference", str(TINY), "--tokens", "2,105", "--n", "2", "--dump",
                    str(a)).returncode == 0
    b = tmp_path / "b"
    shutil.copytree(a, b)
    step = b / "step-001.npz"
    step.write_bytes(step.read_bytes()[:3000])
    line = one_error_line(skoracle("reference", "diff", str(a), str(b)), "reference diff")
    assert line.startswith(f"{step}: unreadable, truncated or not an .npz")


def test_dump_where_nothing_can_be_written_is_one_line():
    line = one_error_line(skoracle("reference", str(TINY), "--tokens", "2", "--n", "1",
                                   "--dump", "/proc/foo"))
    assert line.startswith("--dump /proc/foo: cannot write in /proc")


def test_diff_has_its_own_help_and_refuses_the_decode_options(tmp_path):
    r = skoracle("reference", "diff", "--help")
    assert r.returncode == 0 and "usage: skoracle reference diff [-h] [--json] DUMP_A DUMP_B" \
        in r.stdout
    assert "--semantics" not in r.stdout and "exit codes:" in r.stdout
    for option in (["--semantics", "exact"], ["--n", "3"], ["--dump", str(tmp_path / "d")]):
        r = skoracle("reference", "diff", str(tmp_path), str(tmp_path), *option)
        assert r.returncode == 2 and f"unrecognized arguments: {option[0]}" in r.stderr


# ---------------------------------------------------------------------------------------
# semantics options


def test_panama_takes_lanes_and_reduction_and_prints_them():
    r = skoracle("reference", str(TINY), "--tokens", "2,105", "--n", "2", "--semantics",
                 "skainet_panama", "--lanes", "4", "--reduction", "pairwise", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["semantics_options"] == {"lanes": 4, "reduction": "pairwise"}
    assert rep["semantics_described"] == "skainet_panama(lanes=4, reduction=pairwise)"
    text = skoracle("reference", str(TINY), "--tokens", "2,105", "--n", "2", "--semantics",
                    "skainet_panama", "--lanes", "4")
    assert "(skainet_panama(lanes=4, reduction=sequential), load packed)" in text.stdout
    four = Gemma3Reference(TINY, "skainet_panama", options={"lanes": 4}).decode([2, 105], 2)
    eight = Gemma3Reference(TINY, "skainet_panama").decode([2, 105], 2)
    assert not np.array_equal(four.logits, eight.logits)  # the option reaches the matmuls


def test_an_option_of_another_semantics_is_refused():
    line = one_error_line(skoracle("reference", str(TINY), "--tokens", "2", "--lanes", "4"))
    assert line == "--lanes applies to --semantics skainet_panama, not exact"
    assert semantics_options("ggml", rounding="even") == {"rounding": "even"}
    assert semantics_options("skainet_panama") == {"lanes": 8, "reduction": "sequential"}


def test_decode_parity_expects_with_the_same_options():
    from harness.cli import build_parser
    from harness.reference.cli import expect_options

    args = build_parser().parse_args(
        ["board", "decode-parity", "--expect-from", str(TINY), "--tokens", "2",
         "--expect-semantics", "skainet_panama", "--expect-lanes", "4",
         "--expect-reduction", "halving", "prog"])
    assert expect_options(args) == {"lanes": 4, "reduction": "halving"}
    from harness.reference.cli import expected_ids

    ids, rep = expected_ids(TINY, "2,105", 2, "skainet_panama", **expect_options(args))
    assert rep["semantics_described"] == "skainet_panama(lanes=4, reduction=halving)"
    assert ids == Gemma3Reference(TINY, "skainet_panama", options=expect_options(args)
                                  ).decode([2, 105], 2).tokens


# ---------------------------------------------------------------------------------------
# end tokens: the decode stops at the GGUF's first one

PROMPT = [2, 105, 300]
#: a seed whose tiny-gemma3 decodes PROMPT as 300 300 300 203 ...: a token that first
#: appears mid-run (the default seed repeats its first token)
TURNING_SEED = 8


@dataclass
class EndModel:
    """A GGUF whose eos id is a token its greedy decode of PROMPT first makes at step `step`
    (counted from 1), and its `full` decode of 8 tokens with no stop."""

    path: Path
    full: list[int]
    step: int
    end: int
    piece: str


@pytest.fixture(scope="module")
def end_model(tmp_path_factory) -> EndModel:
    path = tmp_path_factory.mktemp("eos") / "eos-mid-run.gguf"
    tinygemma.write(path, seed=TURNING_SEED)
    full = Gemma3Reference(path, "exact").decode(PROMPT, 8).tokens
    k = next(i for i in range(1, len(full)) if full[i] not in full[:i])
    assert k >= 2, full  # mid-run, not at the first step
    reader = gguf.GGUFReader(path, "r+")  # a uint32 in place: the weights stay as they are
    eos = reader.fields["tokenizer.ggml.eos_token_id"]
    eos.parts[eos.data[0]][0] = full[k]
    reader.data.flush()
    del reader
    return EndModel(path, full, k + 1, full[k], tinygemma.vocabulary(512)[0][full[k]])


def test_reference_stops_at_the_ggufs_end_token(end_model):
    e = end_model
    args = ("reference", str(e.path), "--tokens", ",".join(map(str, PROMPT)), "--n", "8")
    rep = json.loads(skoracle(*args, "--json").stdout)
    assert rep["tokens"] == e.full[:e.step] and rep["tokens"][-1] == e.end
    assert rep["stop_reason"] == f"end token {e.end} {e.piece} at step {e.step}"
    assert rep["end_token"] == {"id": e.end, "piece": e.piece, "source": "eos_token_id",
                                "step": e.step, "stopped": True}
    # forward passes: the prompt's, then one per generated token up to the end token's
    assert rep["steps"] == len(PROMPT) - 1 + e.step and len(rep["margins"]) == e.step
    assert rep["end_tokens"] == {str(e.end): "eos_token_id", "6": "<end_of_turn>"}
    text = skoracle(*args)
    assert text.returncode == 0, text.stderr
    assert f"\nstopped: end token {e.end} {e.piece} at step {e.step}\n" in text.stdout
    assert f"{e.step} tokens generated" in text.stdout


def test_ignore_eos_decodes_the_full_n(end_model):
    e = end_model
    r = skoracle("reference", str(e.path), "--tokens", ",".join(map(str, PROMPT)), "--n", "8",
                 "--ignore-eos", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["tokens"] == e.full and rep["steps"] == len(PROMPT) - 1 + 8
    assert rep["stop_reason"] == (f"--n reached (--ignore-eos; first end token {e.end} "
                                  f"{e.piece} at step {e.step})")
    assert rep["ignore_eos"] and rep["end_token"]["stopped"] is False
    # no end token generated: --n reached, whether or not end tokens are ignored
    text = skoracle("reference", str(TINY), "--tokens", "2,105", "--n", "2")
    assert "\nstopped: --n reached\n" in text.stdout, text.stdout + text.stderr


def test_expected_ids_stop_at_the_given_end_tokens(end_model):
    """A 48-token expected run that ends at step `e.step` costs that many generated steps."""
    from harness.board.decode import end_token_ids
    from harness.reference.cli import expected_ids

    e = end_model
    ids, rep = expected_ids(e.path, PROMPT, 48, "exact", stop_ids=end_token_ids(e.path))
    assert ids == e.full[:e.step] and rep["steps"] == len(PROMPT) - 1 + e.step
    assert rep["stop_reason"] == f"end token {e.end} {e.piece} at step {e.step}"
    ids, rep = expected_ids(e.path, PROMPT, 8, "exact")  # without stop ids: all n, as before
    assert ids == e.full and rep["stop_reason"] == "--n reached"


# ---------------------------------------------------------------------------------------
# progress and tok/s


def test_piped_decode_prints_a_progress_line_every_8_steps():
    r = skoracle("reference", str(TINY), "--tokens", "2", "--n", "20", "--semantics", "fast")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["reference: step 8/20", "reference: step 16/20"]
    assert "tok/s" in lines[0] and "ETA" in lines[0]


def test_progress_text_and_piped_lines(tmp_path):
    assert progress_text(10, 50, 8, 2.0, 5.0) == \
        "step 10/50, 8 tokens generated, 4 tok/s, ETA 0m20s"
    with open(tmp_path / "log", "w") as log, DecodeProgress("x", stream=log, every=2) as p:
        for done in range(1, 6):
            p(done, 5, done, float(done), float(done))
    assert (tmp_path / "log").read_text().count("\n") == 2  # steps 2 and 4; 5 is the end


def test_tok_per_s_counts_generated_tokens_over_their_passes():
    r = Gemma3Reference(TINY, "fast").decode([2, 105, 300, 7], 3)
    assert r.prompt_steps == 3 and r.steps == 6
    assert r.tok_per_s == pytest.approx(3 / r.generate_seconds)
    assert r.generate_seconds + r.prompt_seconds <= r.seconds


# ---------------------------------------------------------------------------------------
# against llama.cpp


@pytest.fixture(scope="session")
def built() -> Path:
    """llama.cpp, built once (cached) if the set-up has not built it yet."""
    return llamacpp.build(log=lambda m: None)


QUANTIZE_IN_LLAMA = r"""
import ctypes, sys
import numpy as np
lib = sys.argv[1]
base = ctypes.CDLL(lib + "/libggml-base.so", mode=ctypes.RTLD_GLOBAL)
cpu = ctypes.CDLL(lib + "/libggml-cpu.so", mode=ctypes.RTLD_GLOBAL)
x = np.load(sys.argv[2])
for name, size in (("quantize_row_q8_0", 34), ("quantize_row_q8_1", 36)):
    out = np.zeros(x.size // 32 * size, np.uint8)
    getattr(cpu, name)(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                       ctypes.c_int64(x.size))
    np.save(sys.argv[3] + name + ".npy", out)
"""


@pytest.mark.llamacpp
def test_x86_quantizer_is_llamas_bit_for_bit(built, tmp_path):
    """ggml_q8_0/q8_1(rounding="x86") against the AVX2 quantize_row_q8_0/q8_1 of the
    llama.cpp build, on ties (x*id exactly k + 0.5) and on random blocks where 127/amax and
    1/(amax/127) differ."""
    rng = np.random.default_rng(7)
    ties = np.arange(-31, 33, dtype=np.float32) + np.float32(0.5)
    ties[31] = 127.0  # amax 127: id = 1 exactly, so every .5 is a tie
    ties[63] = -127.0
    rows = [ties, (rng.standard_normal(32 * 64) * 3).astype(np.float32),
            (rng.standard_normal(32 * 8) * 1e-3).astype(np.float32), np.zeros(32, np.float32)]
    x = np.concatenate(rows).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", QUANTIZE_IN_LLAMA,
                    str(llamacpp.build_dir() / "lib"), str(tmp_path / "x.npy"),
                    str(tmp_path) + "/"], check=True, timeout=120)
    ours = activations.ggml_q8_1(x[None], "x86")
    nb = x.size // 32
    q80 = np.load(tmp_path / "quantize_row_q8_0.npy").reshape(nb, 34)
    assert np.array_equal(q80[:, :2].copy().view(np.uint16)[:, 0], f32_to_fp16(ours["d32"][0]))
    assert np.array_equal(q80[:, 2:].view(np.int8), ours["qs"][0])
    q81 = np.load(tmp_path / "quantize_row_q8_1.npy").reshape(nb, 36)
    assert np.array_equal(q81[:, 4:].view(np.int8), ours["qs"][0])
    assert np.array_equal(q81[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32),
                          ours["s"][0])
    generic = activations.ggml_q8_0(x[None], "roundf")["qs"][0]
    assert not np.array_equal(generic, ours["qs"][0])  # the ties really are ties


def _dump(tmp_path: Path, name: str, *args: str) -> Path:
    d = tmp_path / name
    r = skoracle(*args, "--dump", str(d))
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.llamacpp
@pytest.mark.parametrize("window", [64, 8])
def test_ggml_dump_against_llama_ref_dump_is_like_for_like(built, tmp_path, window):
    model = TINY
    if window != 64:
        model = tmp_path / "swa8.gguf"
        tinygemma.write(model, tinygemma.TinyGemmaConfig(sliding_window=window), seed=0)
    prompt, n = "2,105,300", "16" if window == 64 else "24"
    ref = _dump(tmp_path, "ref", "reference", str(model), "--tokens", prompt, "--n", n,
                "--semantics", "ggml", "--rounding", "x86")
    llama = _dump(tmp_path, "llama", "llama-ref", str(model), "--tokens", prompt, "--n", n)
    r = skoracle("reference", "diff", str(ref), str(llama))
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0] == f"A: {ref}: ggml(rounding=x86), load packed"
    assert lines[1] == f"B: {llama}: llama.cpp (kv f16, quantizer x86)"
    assert lines[2] == "like for like"
    steps = 3 + int(n) - 1
    assert lines[3].startswith(f"tokens agree: both were fed the same {steps} tokens")
    assert f"(every dumped tensor of steps 0..{steps - 1})" in lines[3]
    # a different quantizer is a by-design difference, and said so
    generic = _dump(tmp_path, "generic", "reference", str(model), "--tokens", prompt, "--n",
                    n, "--semantics", "ggml", "--rounding", "roundf")
    r = skoracle("reference", "diff", str(generic), str(llama), "--json")
    doc = json.loads(r.stdout)
    assert doc["like_for_like"] is False
    assert doc["differ_by_design"] == "activation quantizer roundf vs x86 (Q8 codes differ)"


@pytest.mark.llamacpp
def test_like_for_like_diff_still_catches_a_perturbation_without_a_rounding_flip(built,
                                                                              tmp_path):
    ref = _dump(tmp_path, "ref", "reference", str(TINY), "--tokens", "2,105", "--n", "2",
                "--semantics", "ggml", "--rounding", "x86")
    llama = _dump(tmp_path, "llama", "llama-ref", str(TINY), "--tokens", "2,105", "--n", "2")
    with np.load(llama / "step-000.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["l_out-0"] = arrays["l_out-0"].copy()
    arrays["l_out-0"][0, 5] *= np.float32(1.001)  # a residual add: no rounding to flip
    np.savez(llama / "step-000.npz", **arrays)
    first, _ = diff_dumps(ref, llama)
    assert first is not None and first.name == "l_out-0" and first.flipped is None


@pytest.mark.llamacpp
@pytest.mark.parametrize("which, tensor", [("nan-norm", "result_norm"),
                                           ("inf-embd-scale", "result_output")])
def test_llama_ref_non_finite_is_a_finding(built, bad_models, which, tensor):
    r = skoracle("llama-ref", str(bad_models[which]), "--tokens", "2,105", "--n", "3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"FINDING: step 0 computes values that are not finite: its first non-finite "
            f"tensor is {tensor} (nan)") in r.stdout
    doc = json.loads(skoracle("llama-ref", str(bad_models[which]), "--tokens", "2,105", "--n",
                              "3", "--json").stdout)
    assert doc["non_finite"]["tensor"] == tensor and doc["non_finite"]["step"] == 0


@pytest.mark.llamacpp
def test_llama_ref_checks_the_context_first(built, bad_models):
    line = one_error_line(skoracle("llama-ref", str(TINY), "--tokens", "2", "--n", "100000"),
                          "llama-ref")
    assert line.endswith("prompt (1) + n (100000) exceeds the model's context length 2048")
    line = one_error_line(skoracle("llama-ref", str(bad_models["context-1"]), "--tokens", "2",
                                   "--n", "1"), "llama-ref")
    assert line.endswith("prompt (1) + n (1) exceeds the model's context length 1")
    line = one_error_line(skoracle("llama-ref", str(TINY), "--prompt", "hello", "--n",
                                   "100000"), "llama-ref")
    assert "exceeds the model's context length 2048" in line


@pytest.mark.llamacpp
def test_llama_ref_counts_tok_per_s_as_reference_does(built):
    from harness.ggml import llamaref

    lr = llamaref.decode(TINY, [2, 105, 300], 4)
    assert lr.tok_per_s == 4 / lr.seconds and lr.summary()["prompt_steps"] == 2
    assert 0 < lr.prompt_seconds
    rep = json.loads(skoracle("reference", str(TINY), "--tokens", "2,105,300", "--n", "4",
                              "--json").stdout)
    assert rep["prompt_steps"] == 2
    assert rep["tok_per_s"] == pytest.approx(4 / rep["generate_seconds"])



def test_llama_ref_draws_the_progress_its_worker_writes(tmp_path, capsys):
    from harness.ggml import llamaref

    with llamaref._ProgressFile(tmp_path / llamaref.PROGRESS_FILE, enabled=True):
        llamaref._write_progress(tmp_path, 9, 20, 8, 2.0, 3.0)
    err = capsys.readouterr().err
    assert err == "llama-ref: step 9/20, 8 tokens generated, 4 tok/s, ETA 0m04s\n"


def test_diff_of_a_shorter_decode_says_the_tokens_agree(tmp_path):
    short = _dump(tmp_path, "short", "reference", str(TINY), "--tokens", "2,105", "--n", "2")
    long = _dump(tmp_path, "long", "reference", str(TINY), "--tokens", "2,105", "--n", "4")
    r = skoracle("reference", "diff", str(short), str(long))
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("tokens agree over the 3 steps both have (B has 2 more, not compared); "
            "249 tensors compared (every dumped tensor of steps 0..2)") in r.stdout
    assert "like for like" in r.stdout
