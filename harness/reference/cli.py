"""`skoracle reference`: the Gemma-3 reference decode from a GGUF, and dump diffs.

    skoracle reference MODEL.gguf --tokens 2,105,... | --prompt "..." [--n 32]
                       [--semantics S] [--load packed|dequant-fp32] [--dump DIR] [--json]
    skoracle reference diff A B [--json]

Prints the greedy token ids, every step's top-2 logit margin, tok/s and the process's peak
RSS. `--dump DIR` writes every layer's and op's activations (refmodel.dump describes the
format); `diff` names the first tensor where two dumps differ beyond the derived bound.
Exit codes: 0 ok; 1 `diff` found a divergence; 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.errors import HarnessError
from harness.footprint import human, read_footprint
from harness.procmem import peak_rss_bytes

DEFAULT_N = 32


def parse_tokens(text: str) -> list[int]:
    """'2,105, 300' -> [2, 105, 300]: the `--tokens` grammar of every subcommand that takes
    prompt ids (HarnessError naming the bad item)."""
    out = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise HarnessError(f"--tokens: {item!r} is not an integer token id (expected "
                               "comma-separated ids)") from None
        if out[-1] < 0:
            raise HarnessError(f"--tokens: {item} is not a token id (ids are >= 0)")
    if not out:
        raise HarnessError("--tokens: no token ids given")
    return out


def reference_decode(model: str | Path, tokens: list[int] | None = None,
                     prompt: str | None = None, n: int = DEFAULT_N, semantics: str = "exact",
                     load: str = "packed", dump: str | Path | None = None) -> dict:
    """Run the reference decode and return the report dict the CLI prints (and the board
    and run legs reuse): prompt and generated ids, margins, tok/s, peak RSS."""
    from refmodel import Gemma3Reference
    from refmodel.dump import DumpWriter
    from refmodel.tokenizer import encode

    if (tokens is None) == (prompt is None):
        raise HarnessError("give exactly one of --tokens and --prompt")
    m = Gemma3Reference(model, semantics=semantics, load=load)
    ids = tokens if tokens is not None else encode(m.w.reader, prompt, str(model))
    writer = None
    if dump is not None:
        hp = m.hp
        writer = DumpWriter(dump, {"model": str(model), "semantics": semantics, "load": load,
                                   "n_embd": hp.n_embd, "n_ff": hp.n_ff,
                                   "head_dim": hp.head_dim, "n_swa": hp.n_swa})
    try:
        r = m.decode(ids, n, dump=writer.step if writer else None)
        if writer:
            writer.finish(tokens=r.prompt + r.tokens[:-1])
    except BaseException:
        if writer:
            writer.abort()
        raise
    peak = peak_rss_bytes() or 0  # before the footprint planner parses the file in this process
    return {
        "model": str(model), "semantics": semantics, "load": load,
        "prompt_tokens": r.prompt, "tokens": r.tokens,
        "margins": [float(v) for v in r.margins],
        "min_margin": float(min(r.margins)), "steps": r.steps,
        "seconds": r.seconds, "tok_per_s": r.tok_per_s, "peak_rss_bytes": peak,
        "footprint_peak_bytes": read_footprint(model).peak(load),
        "dump": str(dump) if dump is not None else None,
    }


def cmd_reference(args: argparse.Namespace) -> int:
    if args.model == "diff":
        return cmd_diff(args)
    if args.paths:
        raise HarnessError(f"unexpected arguments {' '.join(args.paths)} (did you mean "
                           "`skoracle reference diff A B`?)")
    tokens = parse_tokens(args.tokens) if args.tokens is not None else None
    rep = reference_decode(args.model, tokens, args.prompt, args.n, args.semantics, args.load,
                           args.dump)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    print(f"prompt ids: {' '.join(map(str, rep['prompt_tokens']))}")
    print(f"greedy ids: {' '.join(map(str, rep['tokens']))}")
    print("top-2 margins: " + " ".join(f"{v:.4g}" for v in rep["margins"]))
    print(f"{rep['steps']} steps in {rep['seconds']:.2f} s = {rep['tok_per_s']:.2f} tok/s "
          f"({rep['semantics']}, load {rep['load']}); peak RSS {human(rep['peak_rss_bytes'])} "
          f"(`skoracle footprint` predicts a {human(rep['footprint_peak_bytes'])} weight peak "
          f"under {rep['load']})")
    if rep["dump"]:
        print(f"dump: {rep['dump']}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from refmodel.dump import common_steps, diff_dumps, read_meta

    if len(args.paths) != 2:
        raise HarnessError("usage: skoracle reference diff DUMP_A DUMP_B")
    a, b = args.paths
    first, rows = diff_dumps(a, b)
    fed = common_steps(read_meta(a), read_meta(b))
    total = max(read_meta(a)["n_steps"], read_meta(b)["n_steps"])
    if fed < total and not args.json:
        print(f"the two decodes were fed different tokens from step {fed} on: compared "
              f"steps 0..{fed - 1}")
    if args.json:
        print(json.dumps({"first_divergence": first.as_dict() if first else None,
                          "compared": len(rows), "common_steps": fed,
                          "max_rel_diff": max((r.rel for r in rows), default=0.0)}, indent=1))
    elif first is None:
        worst = max(rows, key=lambda r: r.rel, default=None)
        print(f"no divergence beyond the bound in {len(rows)} tensors"
              + (f"; largest relative difference {worst.rel:.3g} at step {worst.step} "
                 f"{worst.name}" if worst else ""))
    else:
        print(f"first divergence: step {first.step} tensor {first.name} at index "
              f"{list(first.index)}: |a-b| = {first.max_abs:.6g} > bound {first.bound:.3g} "
              f"(relative {first.rel:.3g} of max |value| {first.scale:.6g})")
    return 0 if first is None else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    from refmodel.gemma3 import SEMANTICS_NAMES
    from refmodel.weights import LOADS

    p = subparsers.add_parser(
        "reference", help="Gemma-3 reference decode from packed GGUF weights; dump diffs",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the .gguf file (or `diff` followed by two dump directories)")
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tokens", metavar="IDS", help="prompt token ids, comma separated "
                     "(default: none, give it or --prompt)")
    src.add_argument("--prompt", metavar="TEXT", help="prompt text, tokenized with the "
                     "GGUF's own vocabulary (SentencePiece; default: none, give it or --tokens)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="tokens to generate (default 32)")
    p.add_argument("--semantics", default="exact", choices=SEMANTICS_NAMES,
                   help="float order of every matmul (default exact; fast = BLAS)")
    p.add_argument("--load", default="packed", choices=LOADS,
                   help="packed (memory-mapped blocks) or dequant-fp32 (SKaiNET 0.30.0)")
    p.add_argument("--dump", metavar="DIR", help="write every step's activations to DIR (new; "
                   "default: no dump)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_reference)


#: the semantics whose greedy ids a SKaiNET board decode is held to (its native kernels)
BOARD_SEMANTICS = "skainet_neon"


def expected_ids(model: str | Path, tokens: str | list[int], n: int = DEFAULT_N,
                 semantics: str = BOARD_SEMANTICS) -> tuple[list[int], dict]:
    """The reference's greedy ids for a board decode parity run, and the full report
    (margins included, so a mismatch at a small margin can be told from a real one)."""
    ids = parse_tokens(tokens) if isinstance(tokens, str) else list(tokens)
    rep = reference_decode(model, ids, None, n, semantics)
    return rep["tokens"], rep


def add_expect_from(p: argparse.ArgumentParser, group: argparse._MutuallyExclusiveGroup) -> None:
    """--expect-from MODEL.gguf with its --tokens/--expect-n/--expect-semantics."""
    from refmodel.gemma3 import SEMANTICS_NAMES

    group.add_argument("--expect-from", metavar="MODEL.gguf",
                       help="take the expected ids from the reference decode of this model "
                            "(default: none, give it or --expect)")
    p.add_argument("--tokens", metavar="IDS",
                   help="prompt ids for --expect-from (default: none; required with it)")
    p.add_argument("--expect-n", type=int, default=DEFAULT_N,
                   help="tokens the reference generates (default 32)")
    p.add_argument("--expect-semantics", default=BOARD_SEMANTICS, choices=SEMANTICS_NAMES,
                   help="float order of the reference's matmuls (default skainet_neon)")


def board_reference_ids(work: Path, n: int = 8) -> tuple[list[int], str]:
    """Expected ids for the run report's board leg: the reference decode (skainet_neon) of
    the tiny Gemma-3 model, written fresh into `work`; and a note saying so."""
    from harness.golden import tinygemma

    model = Path(work) / "tiny-gemma3.gguf"
    if not model.is_file():
        tinygemma.write(model)
    prompt = [2, 105, 300]
    ids, rep = expected_ids(model, prompt, n)
    return ids, (f"expected ids from `skoracle reference` ({BOARD_SEMANTICS}) on tiny-gemma3, "
                 f"prompt {prompt}, smallest margin {rep['min_margin']:.3g}")
