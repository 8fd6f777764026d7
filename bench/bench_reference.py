"""Benchmark: the whole-model reference decode on a FunctionGemma-shaped GGUF, memory first
(packed against SKaiNET 0.30.0's dequant-fp32 loading; the speed goals are judged by
bench/bench_speed.py).

The model (FunctionGemma-270M's shapes, metadata and Q5_K_M quant mix, deterministic
random weights, ~258 MB) is generated once into the cache (harness.golden.tinygemma
FUNCTIONGEMMA, `cached_model`). Measured in one run, each decode in its own process so
its peak RSS is its own:

  - peak RSS of an N-token decode (`fast`) loaded `packed` vs `dequant-fp32` (SKaiNET
    0.30.0's loading), beside `skoracle footprint`'s predicted peak for each policy and a
    baseline process that only imports the reference (goal: packed under 450 MB);
  - tok/s of the `fast` semantics (llama.cpp's tok/s on the same model is added by the
    llama.cpp comparison);
  - wall time of an N-token `exact` decode, and whether its greedy ids equal fast's.

    python3 bench/bench_reference.py [--model M.gguf] [--n 32] [--skip-exact]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.footprint import human, read_footprint  # noqa: E402
from harness.golden import tinygemma  # noqa: E402

BASELINE = ("import json, refmodel, harness.reference.cli, harness.procmem as c; "
            "print(json.dumps({'peak_rss_bytes': c.peak_rss_bytes()}))")


def decode(model: Path, n: int, semantics: str, load: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "harness", "reference", str(model), "--tokens",
                        "2", "--n", str(n), "--semantics", semantics, "--load", load, "--json"],
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"reference decode failed ({semantics}, {load}):\n{r.stderr}")
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a Gemma-3 GGUF (default: FunctionGemma-shaped)")
    ap.add_argument("--n", type=int, default=32, help="tokens to decode (default 32)")
    ap.add_argument("--skip-exact", action="store_true", help="skip the exact decode")
    args = ap.parse_args()
    model = args.model or tinygemma.cached_model(tinygemma.FUNCTIONGEMMA, "functiongemma-shaped")
    fp = read_footprint(model)
    base = json.loads(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True,
                                     text=True, cwd=ROOT, check=True).stdout)["peak_rss_bytes"]
    print(f"model: {model} ({human(model.stat().st_size)}); {args.n}-token greedy decode "
          f"from <bos>, one process per row")
    print(f"{'load':>13} {'semantics':>9} {'peak RSS':>10} {'footprint peak':>15} "
          f"{'seconds':>8} {'tok/s':>6}")
    print(f"{'(baseline)':>13} {'':>9} {human(base):>10} {'':>15} (python + numpy + imports)")
    runs = {}
    for load in ("packed", "dequant-fp32"):
        rep = runs[load] = decode(model, args.n, "fast", load)
        print(f"{load:>13} {'fast':>9} {human(rep['peak_rss_bytes']):>10} "
              f"{human(fp.peak(load)):>15} {rep['seconds']:8.1f} {rep['tok_per_s']:6.2f}")
    if not args.skip_exact:
        ex = decode(model, args.n, "exact", "packed")
        print(f"{'packed':>13} {'exact':>9} {human(ex['peak_rss_bytes']):>10} "
              f"{human(fp.peak('packed')):>15} {ex['seconds']:8.1f} {ex['tok_per_s']:6.2f}")
        same = ex["tokens"] == runs["packed"]["tokens"]
        print(f"exact vs fast greedy ids: {'identical' if same else 'DIFFER'}; smallest top-2 "
              f"margin {ex['min_margin']:.4g}")
    packed = runs["packed"]["peak_rss_bytes"]
    print(f"packed peak {human(packed)} ({'under' if packed < 450e6 else 'OVER'} the 450 MB "
          f"goal); dequant-fp32 / packed = "
          f"{runs['dequant-fp32']['peak_rss_bytes'] / packed:.2f}x "
          f"(footprint predicts {fp.peak('dequant-fp32') / fp.peak('packed'):.2f}x)")
    print("tok/s counts every forward pass (prompt and generated tokens), one token each")


if __name__ == "__main__":
    main()
