"""Decode speed of the real llama.cpp on the FunctionGemma-shaped GGUF, the reference's `fast`
semantics beside it, same model, same run. Prints tok/s of each and their ratio, and whether
their greedy tokens agree. (The speed goals of every semantics are judged by
bench/bench_speed.py; this one is for the token agreement and `--compare`.)

    python3 bench/bench_llamaref.py [--n 32] [--threads 1] [--model PATH] [--compare]

The model is FunctionGemma-270M's shapes, metadata and Q5_K_M quant mix with deterministic
random weights (harness.golden.tinygemma.FUNCTIONGEMMA, generated once into the cache).
Both figures are counted one way: generated tokens over the wall time of the forward
passes that chose them (llama-ref's LlamaDecode.tok_per_s, the reference's
DecodeResult.tok_per_s); the prompt steps before them are not in either.

`--compare` also teacher-forces the reference (`fast`) with llama.cpp's tokens and prints
every step's margin, the derived logit bound and the tokens (harness.ggml.llamacmp.token_steps).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness.ggml import llamacmp, llamaref

PROMPT = [2, 105, 2364, 107]


def functiongemma_model() -> Path:
    from harness.golden import tinygemma

    return tinygemma.cached_model(tinygemma.FUNCTIONGEMMA, "functiongemma-shaped")


def reference_tok_per_s(model: Path, n: int) -> tuple[float, list[int]] | None:
    """The reference's `fast` decode, or None when refmodel is not available here."""
    try:
        from refmodel import Gemma3Reference
    except ImportError:
        return None
    r = Gemma3Reference(model, semantics="fast").decode(PROMPT, n)
    return r.tok_per_s, r.tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, choices=(1, 2))
    ap.add_argument("--model", type=Path, help="default: the FunctionGemma-shaped GGUF")
    ap.add_argument("--compare", action="store_true",
                    help="per-step tokens, margins and bounds against the reference (slow)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = args.model or functiongemma_model()
    print(f"model: {model} ({model.stat().st_size / 1e6:.0f} MB, ready in "
          f"{time.perf_counter() - t0:.1f} s)")
    lr = llamaref.decode(model, PROMPT, args.n, threads=args.threads)
    print(f"llama.cpp ({args.threads} thread{'s' if args.threads > 1 else ''}, AVX2, F16 KV): "
          f"{lr.tok_per_s:8.2f} tok/s over {len(lr.tokens)} tokens")
    ref = reference_tok_per_s(model, args.n)
    if ref is None:
        print("reference fast: not available (refmodel not importable)")
        return 0
    rate, tokens = ref
    print(f"reference fast:                        {rate:8.2f} tok/s")
    print(f"fast / llama.cpp: {rate / lr.tok_per_s:.3f}")
    same = next((i for i, (a, b) in enumerate(zip(tokens, lr.tokens, strict=True)) if a != b),
                None)
    print("greedy tokens: " + ("identical" if same is None else f"first differ at step {same}")
          + f" (llama.cpp min top-2 margin {min(lr.margins):.4g})")
    if args.compare:
        compare(model, args.n)
    return 0


def compare(model: Path, n: int) -> None:
    """Every step: llama.cpp's token, the teacher-forced reference's, margin and bound."""
    from refmodel import Gemma3Reference

    with tempfile.TemporaryDirectory() as tmp:
        lr = llamaref.decode(model, PROMPT, n, dump=Path(tmp) / "llama")
        steps = llamacmp.token_steps(Gemma3Reference(model, semantics="fast"),
                                     PROMPT + lr.tokens[:-1], len(PROMPT), lr.tokens,
                                     lr.logits, Path(tmp) / "llama")
    print("llama.cpp vs reference (fast, teacher-forced):")
    print(llamacmp.STEP_HEADER)
    for s in steps:
        print(s.row())
    print(f"{sum(s.decided for s in steps)}/{len(steps)} steps decided by the bound, "
          f"{sum(not s.ok for s in steps)} failing")


if __name__ == "__main__":
    raise SystemExit(main())
