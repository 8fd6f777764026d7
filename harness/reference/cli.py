"""`skoracle reference`: the Gemma-3 reference decode from a GGUF, and dump diffs.

    skoracle reference MODEL.gguf --tokens 2,105,... | --prompt "..." [--n 32]
                       [--semantics S [--lanes L --reduction R | --rounding Q]]
                       [--load packed|dequant-fp32] [--dump DIR] [--json]
    skoracle reference diff DUMP_A DUMP_B [--json]     (`reference diff --help`)

Prints the greedy token ids, every step's top-2 logit margin, tok/s (generated tokens
over the wall time of the passes that chose them; the prompt steps are reported apart)
and the process's peak RSS; a long decode shows its progress on stderr. `--dump DIR`
writes every layer's and op's activations (refmodel.dump describes the format); `diff`
names the first tensor where two dumps differ beyond the derived bound.

exit codes:
  0  the decode ran
  2  usage or input error (a bad model file, weights that are not finite, ids outside the
     vocabulary, a decode longer than the model's context)
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
                     load: str = "packed", dump: str | Path | None = None,
                     options: dict | None = None, progress: bool = False) -> dict:
    """Run the reference decode and return the report dict the CLI prints (and the board
    and run legs reuse): prompt and generated ids, margins, tok/s, peak RSS. `options` are
    the semantics' (refmodel.semantics_options); `progress` draws it on stderr."""
    from harness.progress import DecodeProgress
    from refmodel import Gemma3Reference, describe_semantics, semantics_options
    from refmodel.arch import check_context, context_length
    from refmodel.dump import DumpWriter
    from refmodel.tokenizer import encode
    from refmodel.weights import open_gguf

    if (tokens is None) == (prompt is None):
        raise HarnessError("give exactly one of --tokens and --prompt")
    opts = semantics_options(semantics, **(options or {}))
    if tokens is not None:  # before any weight is loaded or expanded
        check_context(len(tokens), n, context_length(open_gguf(model)), str(model))
    m = Gemma3Reference(model, semantics=semantics, load=load, options=opts)
    ids = tokens if tokens is not None else encode(m.w.reader, prompt, str(model))
    writer = None
    if dump is not None:
        hp = m.hp
        writer = DumpWriter(dump, {"model": str(model), "semantics": semantics,
                                   "semantics_options": opts, "load": load,
                                   "n_embd": hp.n_embd, "n_ff": hp.n_ff,
                                   "head_dim": hp.head_dim, "n_swa": hp.n_swa})
    try:
        if progress:
            with DecodeProgress("reference") as show:
                r = m.decode(ids, n, dump=writer.step if writer else None, progress=show)
        else:
            r = m.decode(ids, n, dump=writer.step if writer else None)
        if writer:
            writer.finish(tokens=r.prompt + r.tokens[:-1])
    except BaseException:
        if writer:
            writer.abort()
        raise
    peak = peak_rss_bytes() or 0  # before the footprint planner parses the file in this process
    return {
        "model": str(model), "semantics": semantics, "semantics_options": opts,
        "semantics_described": describe_semantics(semantics, opts), "load": load,
        "prompt_tokens": r.prompt, "tokens": r.tokens,
        "margins": [float(v) for v in r.margins],
        "min_margin": float(min(r.margins)), "steps": r.steps,
        "seconds": r.seconds, "tok_per_s": r.tok_per_s,
        "generate_seconds": r.generate_seconds, "prompt_steps": r.prompt_steps,
        "prompt_seconds": r.prompt_seconds, "peak_rss_bytes": peak,
        "footprint_peak_bytes": read_footprint(model).peak(load),
        "dump": str(dump) if dump is not None else None,
    }


def semantics_args(args: argparse.Namespace, prefix: str = "") -> dict:
    """The semantics options given on a command line (`--lanes`, `--reduction`,
    `--rounding`, or with `prefix` e.g. `--expect-lanes`), only those given."""
    return {k: getattr(args, prefix + k) for k in ("lanes", "reduction", "rounding")
            if getattr(args, prefix + k, None) is not None}


def cmd_reference(args: argparse.Namespace) -> int:
    if args.model == "diff":
        raise HarnessError("usage: skoracle reference diff DUMP_A DUMP_B [--json]")
    if args.paths:
        raise HarnessError(f"unexpected arguments {' '.join(args.paths)} (did you mean "
                           "`skoracle reference diff A B`?)")
    tokens = parse_tokens(args.tokens) if args.tokens is not None else None
    rep = reference_decode(args.model, tokens, args.prompt, args.n, args.semantics, args.load,
                           args.dump, semantics_args(args), progress=True)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    print(f"prompt ids: {' '.join(map(str, rep['prompt_tokens']))}")
    print(f"greedy ids: {' '.join(map(str, rep['tokens']))}")
    print("top-2 margins: " + " ".join(f"{v:.4g}" for v in rep["margins"]))
    print(f"{len(rep['tokens'])} tokens generated in {rep['generate_seconds']:.2f} s = "
          f"{rep['tok_per_s']:.2f} tok/s; prompt: {rep['prompt_steps']} step"
          f"{'s' if rep['prompt_steps'] != 1 else ''} in {rep['prompt_seconds']:.2f} s before "
          f"them ({rep['semantics_described']}, load {rep['load']}); peak RSS "
          f"{human(rep['peak_rss_bytes'])} (`skoracle footprint` predicts a "
          f"{human(rep['footprint_peak_bytes'])} weight peak under {rep['load']})")
    if rep["dump"]:
        print(f"dump: {rep['dump']}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from refmodel.dump import by_design, common_steps, describe, diff_dumps, read_meta

    a, b = args.dump_a, args.dump_b
    ma, mb = read_meta(a), read_meta(b)
    first, rows = diff_dumps(a, b)
    fed = common_steps(ma, mb)
    total = max(ma["n_steps"], mb["n_steps"])
    steps = len({r.step for r in rows})
    design = by_design(ma, mb)
    shorter = min(ma["n_steps"], mb["n_steps"])
    if fed == total:
        tokens = f"agree: both were fed the same {fed} tokens (prompt and greedy picks)"
    elif fed == shorter:
        longer = "A" if ma["n_steps"] > mb["n_steps"] else "B"
        tokens = (f"agree over the {fed} steps both have ({longer} has {total - fed} more, "
                  "not compared)")
    else:
        tokens = (f"differ: fed the same tokens for steps 0..{fed - 1}, different ones from "
                  f"step {fed} on (of {total}); only steps 0..{fed - 1} are compared")
    compared = (f"{len(rows)} tensors compared (every dumped tensor of steps 0..{steps - 1}"
                + (", up to the first divergence" if first else "") + ")")
    skipped = [r for r in rows if r.flipped]
    if args.json:
        print(json.dumps({"a": {"dump": str(a), "computed_by": describe(ma)},
                          "b": {"dump": str(b), "computed_by": describe(mb)},
                          "like_for_like": design is None, "differ_by_design": design,
                          "first_divergence": first.as_dict() if first else None,
                          "compared": len(rows), "compared_steps": steps,
                          "common_steps": fed, "n_steps": total,
                          "not_judged": [r.as_dict() for r in skipped],
                          "max_rel_diff": max((r.rel for r in rows), default=0.0)}, indent=1))
        return 0 if first is None else 1
    print(f"A: {a}: {describe(ma)}")
    print(f"B: {b}: {describe(mb)}")
    print("like for like" if design is None else
          f"these differ by design ({design}): a divergence shows where the two orders part")
    print(f"tokens {tokens}; {compared}")
    if skipped:
        print(f"{len(skipped)} of them not judged by the bound: their op rounds an input that "
              "lands on another Q8 code or fp16 value in the two dumps (float-order "
              f"differences crossing a rounding boundary), first step {skipped[0].step} "
              f"{skipped[0].name}: {skipped[0].flipped}")
    if first is None:
        worst = max(rows, key=lambda r: r.rel, default=None)
        print("no divergence beyond the bound"
              + (f"; largest relative difference {worst.rel:.3g} at step {worst.step} "
                 f"{worst.name}" if worst else ""))
    else:
        print(f"first divergence: step {first.step} tensor {first.name} at index "
              f"{list(first.index)}: |a-b| = {first.max_abs:.6g} > bound {first.bound:.3g} "
              f"(relative {first.rel:.3g} of max |value| {first.scale:.6g})")
    return 0 if first is None else 1


DIFF_DOC = """`skoracle reference diff DUMP_A DUMP_B`: the first tensor where two activation dumps
differ beyond the derived bound.

Reads two dump directories (`reference --dump`, `llama-ref --dump`), says what computed
each, whether they compute like for like or differ by design, over how many steps both
were fed the same tokens, and walks their tensors in compute order. Bound on a tensor's
largest difference: (gamma_{2K+8} + 4 r) * max|value|, K the op's reduction length, r the
largest relative difference upstream (refmodel/dump.py).

exit codes:
  0  no tensor differs beyond its bound
  1  a divergence (named: step, tensor, index)
  2  usage or input error (not a dump, a truncated or unreadable step file)
"""


def build_diff_parser() -> argparse.ArgumentParser:
    """`reference diff`'s own parser: only its own arguments (the decode's --semantics,
    --n, --dump ... are refused as unrecognized)."""
    p = argparse.ArgumentParser(prog="skoracle reference diff", description=DIFF_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dump_a", metavar="DUMP_A", help="first dump directory (A)")
    p.add_argument("dump_b", metavar="DUMP_B", help="second dump directory (B)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_diff, command="reference diff")
    return p


def add_semantics_options(p: argparse.ArgumentParser, prefix: str = "",
                          what: str = "the reference's") -> None:
    """--lanes/--reduction (skainet_panama) and --rounding (ggml), or with a prefix
    (`--expect-lanes` ...): the kernels_ref options of the chosen semantics."""
    from kernels_ref.activations import ROUNDINGS
    from kernels_ref.semantics import PANAMA_REDUCTIONS, SkainetPanama

    p.add_argument(f"--{prefix}lanes", type=int, choices=(2, 4, 8, 16), metavar="LANES",
                   help=f"skainet_panama only: {what} FloatVector lanes, 2/4/8/16 (default "
                        f"{SkainetPanama.params['lanes']}; the board's NEON has 4)")
    p.add_argument(f"--{prefix}reduction", choices=tuple(PANAMA_REDUCTIONS), metavar="ORDER",
                   help=f"skainet_panama only: {what} reduceLanes(ADD) order, one of "
                        f"{', '.join(PANAMA_REDUCTIONS)} (default "
                        f"{SkainetPanama.params['reduction']})")
    if not prefix:
        p.add_argument("--rounding", choices=ROUNDINGS, metavar="QUANTIZER",
                       help="ggml only: the Q8 activation quantizer, one of "
                            f"{', '.join(ROUNDINGS)} (default: llama.cpp's on this CPU, "
                            "x86 on x86-64, even on AArch64)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from refmodel.gemma3 import SEMANTICS_NAMES
    from refmodel.weights import LOADS

    p = subparsers.add_parser(
        "reference", help="Gemma-3 reference decode from packed GGUF weights; dump diffs",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.gguf",
                   help="the .gguf file (`reference diff --help`: the dump diff)")
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tokens", metavar="IDS", help="prompt token ids, comma separated "
                     "(default: none, give it or --prompt)")
    src.add_argument("--prompt", metavar="TEXT", help="prompt text, tokenized with the "
                     "GGUF's own vocabulary (SentencePiece; default: none, give it or --tokens)")
    p.add_argument("--n", type=int, default=DEFAULT_N, metavar="N",
                   help="tokens to generate (default 32)")
    p.add_argument("--semantics", default="exact", choices=SEMANTICS_NAMES, metavar="S",
                   help=f"float order of every matmul, one of {', '.join(SEMANTICS_NAMES)} "
                        "(default exact; fast = float32 in 16 lanes then a pair tree)")
    add_semantics_options(p)
    p.add_argument("--load", default="packed", choices=LOADS, metavar="LOAD",
                   help="packed (memory-mapped blocks) or dequant-fp32 (SKaiNET 0.30.0) "
                        "(default packed)")
    p.add_argument("--dump", metavar="DIR", help="write every step's activations to DIR (new; "
                   "default: no dump)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_reference)


#: the semantics whose greedy ids a SKaiNET board decode is held to (its native kernels)
BOARD_SEMANTICS = "skainet_neon"


def expected_ids(model: str | Path, tokens: str | list[int], n: int = DEFAULT_N,
                 semantics: str = BOARD_SEMANTICS, **options: object) -> tuple[list[int], dict]:
    """The reference's greedy ids for a board decode parity run, and the full report
    (margins included, so a mismatch at a small margin can be told from a real one).
    `options`: the semantics' (lanes, reduction, rounding; refmodel.semantics_options)."""
    ids = parse_tokens(tokens) if isinstance(tokens, str) else list(tokens)
    rep = reference_decode(model, ids, None, n, semantics, options=dict(options))
    return rep["tokens"], rep


def expect_options(args: argparse.Namespace) -> dict:
    """decode-parity's --expect-lanes/--expect-reduction, as expected_ids' options."""
    return semantics_args(args, prefix="expect_")


def add_expect_from(p: argparse.ArgumentParser, group: argparse._MutuallyExclusiveGroup) -> None:
    """--expect-from MODEL.gguf with its --tokens/--expect-n/--expect-semantics."""
    from refmodel.gemma3 import SEMANTICS_NAMES

    group.add_argument("--expect-from", metavar="MODEL.gguf",
                       help="take the expected ids from the reference decode of this model "
                            "(default: none, give it or --expect)")
    p.add_argument("--tokens", metavar="IDS",
                   help="prompt ids for --expect-from (default: none; required with it)")
    p.add_argument("--expect-n", type=int, default=DEFAULT_N, metavar="COUNT",
                   help="tokens the reference generates (default 32)")
    p.add_argument("--expect-semantics", default=BOARD_SEMANTICS, choices=SEMANTICS_NAMES,
                   metavar="SEMANTICS", help="float order of the reference's matmuls, one of "
                   f"{', '.join(SEMANTICS_NAMES)} (default skainet_neon)")
    add_semantics_options(p, prefix="expect-")


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
