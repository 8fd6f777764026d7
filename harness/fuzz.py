"""Seeded mutation fuzzing of every input parser, in a subprocess with a memory cap.

Parsers: `gguf` (harness.gguffile.check_gguf, then gguf-py through open_gguf), `elf`
(harness.gate.elfscan.scan_elf), `ar` (harness.gate.arfile.iter_members), `zip`
(harness.gate.ziputil.zip_members) and `klib` (the whole gate walker: zip → ar → ELF).
Each case is a small valid seed with seeded mutations (bit flips, truncations, length
fields overwritten with large or boundary values, inserted bytes); half the klib cases
mutate one member and rebuild the zip, so the mutation gets past the CRC to the archive
and ELF readers inside. A case passes when the
parser returns or raises the project's own error (HarnessError and its subclasses); any
other exception, a case over `case_seconds` or a worker over `memory_cap` fails.

`run_parser` runs the cases in a child process (RLIMIT_AS = memory_cap) and returns the
counts; tests/test_fuzz.py runs a few hundred per parser, bench/bench_fuzz.py ten thousand.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.gate.testbins import Built
from harness.procmem import peak_rss_bytes

PARSERS = ("gguf", "elf", "ar", "zip", "klib")
DEFAULT_MEMORY_CAP = 1536 << 20
_BOUNDARY = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40,
             (1 << 63) - 1, (1 << 64) - 1)


@dataclass
class FuzzResult:
    """What one parser's run found."""

    parser: str
    cases: int = 0
    accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # project error class -> count
    unexpected: list[str] = field(default_factory=list)  # "case N: Type: message"
    max_case_seconds: float = 0.0
    max_rss_bytes: int = 0
    seconds: float = 0.0


def mutate(data: bytes, rng: random.Random, header: int = 512) -> bytes:
    """One to four edits; half land in the first `header` bytes, where tables live."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        span = min(len(out), header) if rng.random() < 0.5 else len(out)
        pos = rng.randrange(span)
        kind = rng.choice(("flip", "cut", "u32", "u64", "insert", "byte"))
        if kind == "flip":
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            del out[pos:]
        elif kind == "byte":
            out[pos] = rng.randrange(256)
        elif kind == "insert":
            out[pos:pos] = bytes([rng.randrange(256)])
        else:
            size = 4 if kind == "u32" else 8
            value = rng.choice(_BOUNDARY) if rng.random() < 0.7 else rng.getrandbits(size * 8)
            if rng.random() < 0.3:
                value = int.from_bytes(out[pos:pos + size].ljust(size, b"\0"), "little") \
                    + rng.choice((-1, 1, 2, 64, 4096))
            out[pos:pos + size] = (value % (1 << (size * 8))).to_bytes(size, "little")
    return bytes(out)


def mutate_member(data: bytes, rng: random.Random, depth: int = 0) -> bytes:
    """A zip rebuilt with one member mutated (a nested zip is entered): the CRCs stay valid,
    so the mutation reaches the archive and ELF readers inside a klib."""
    zin = zipfile.ZipFile(io.BytesIO(data))
    infos = [i for i in zin.infolist() if not i.is_dir()]
    target = rng.choice(infos)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for info in infos:
            body = zin.read(info)
            if info is target:
                nested = body[:4] == b"PK\x03\x04" and depth < 2
                body = mutate_member(body, rng, depth + 1) if nested else mutate(body, rng)
            zout.writestr(info.filename, body)
    return out.getvalue()


# --- seeds ---------------------------------------------------------------------------------


def gguf_seeds(root: Path) -> list[bytes]:
    """A golden case file and a small GGUF using every metadata shape the writer allows."""
    import numpy as np

    from harness.gguffile import SkainetGGUFWriter

    golden = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
    case = min(golden.glob("matmul_wt-*.gguf"), key=lambda p: p.stat().st_size)
    path = root / "seed.gguf"
    w = SkainetGGUFWriter(path, "skoracle")
    w.add_custom_alignment(32)
    w.add_uint32("a.u32", 7)
    w.add_uint64("a.u64", 1 << 40)
    w.add_float32("a.f32", 0.5)
    w.add_bool("a.bool", True)
    w.add_string("a.str", "text")
    w.add_array("a.strs", ["x", "yy", ""])
    w.add_array("a.ints", [1, 2, 3])
    w.add_array("a.floats", [0.25, 0.5])
    w.add_tensor("t.f32", np.arange(8, dtype=np.float32))
    w.add_tensor("t.i32", np.arange(4, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [case.read_bytes(), path.read_bytes()]


def gate_seeds(built: Built) -> dict[str, list[bytes]]:
    """ELF programs, archives (GNU, BSD) and klib/jar zips from the gate's test build (the
    same files tests/test_elfgate_malformed.py mutates)."""
    x, progs = built.extra, built.programs
    return {
        "elf": [progs["i8mm"].read_bytes(), progs["litpool"].read_bytes(),
                x["kernels.so"].read_bytes()],
        "ar": [x["kernels_i8mm.a"].read_bytes(), x["kernels_bsd.a"].read_bytes(),
               x["empty_bsd.a"].read_bytes()],
        "zip": [x["good.klib"].read_bytes(), x["jvm.jar"].read_bytes()],
        "klib": [x["good.klib"].read_bytes(), x["nested.zip"].read_bytes()],
    }


# --- the parsers ---------------------------------------------------------------------------


def _parse_gguf(data: bytes, scratch: Path) -> None:
    from harness.gguffile import open_gguf

    path = scratch / "case.gguf"
    path.write_bytes(data)
    reader, _ = open_gguf(path)
    for t in reader.tensors:
        t.data.sum()


def _parse_elf(data: bytes, scratch: Path) -> None:
    from harness.gate.elfscan import scan_elf

    scan_elf("fuzz.o", data, frozenset({"skainet_q8_0_matmul"}))


def _parse_ar(data: bytes, scratch: Path) -> None:
    from harness.gate.arfile import iter_members

    for _ in iter_members(data, "fuzz.a"):
        pass


def _parse_zip(data: bytes, scratch: Path) -> None:
    from harness.gate.ziputil import UnpackBudget, zip_members

    for _ in zip_members("fuzz.zip", data, UnpackBudget(64 << 20)):
        pass


def _parse_klib(data: bytes, scratch: Path) -> None:
    from harness.gate import profile
    from harness.gate.check import check_bytes

    rep = check_bytes("fuzz.klib", data, profile("cortex-a55"), marker="skainet-build",
                      symbols=("skainet_q8_0_matmul",), max_unpacked=64 << 20)
    if rep.error is not None:
        raise HarnessError(rep.error)


_PARSE: dict[str, Callable[[bytes, Path], None]] = {
    "gguf": _parse_gguf, "elf": _parse_elf, "ar": _parse_ar, "zip": _parse_zip,
    "klib": _parse_klib,
}


class _CaseTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _CaseTimeout()


def run_cases(parser: str, seeds: list[bytes], cases: int, seed: int,
              case_seconds: float) -> FuzzResult:
    """Run `cases` mutated inputs through one parser in this process."""
    parse = _PARSE[parser]
    rng = random.Random(f"{parser}/{seed}")
    result = FuzzResult(parser)
    signal.signal(signal.SIGALRM, _alarm)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skoracle-fuzz-") as tmp:
        scratch = Path(tmp)
        for i in range(cases):
            base = rng.choice(seeds)
            data = (mutate_member(base, rng) if parser == "klib" and rng.random() < 0.5
                    else mutate(base, rng))
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, case_seconds)
            try:
                parse(data, scratch)
                result.accepted += 1
            except HarnessError as exc:
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
                if "\n" in str(exc):
                    result.unexpected.append(f"case {i}: {name} message has several lines")
            except _CaseTimeout:
                result.unexpected.append(f"case {i}: over {case_seconds} s")
            except Exception as exc:  # what the fuzzer looks for
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                result.unexpected.append(f"case {i}: {last[:300]}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            result.max_case_seconds = max(result.max_case_seconds, time.perf_counter() - t0)
            result.cases += 1
    result.seconds = time.perf_counter() - t_all
    result.max_rss_bytes = peak_rss_bytes() or 0
    return result


def run_parser(parser: str, seeds: list[bytes], cases: int, seed: int = 0,
               case_seconds: float = 5.0, memory_cap: int = DEFAULT_MEMORY_CAP,
               timeout: float | None = None) -> FuzzResult:
    """`run_cases` in a child process limited to `memory_cap` bytes of address space."""
    with tempfile.TemporaryDirectory(prefix="skoracle-fuzz-seeds-") as tmp:
        seed_files = []
        for i, blob in enumerate(seeds):
            p = Path(tmp) / f"seed{i}"
            p.write_bytes(blob)
            seed_files.append(str(p))
        spec = json.dumps({"parser": parser, "seeds": seed_files, "cases": cases,
                           "seed": seed, "case_seconds": case_seconds})
        proc = subprocess.run(
            [sys.executable, "-m", "harness.fuzz", spec], capture_output=True, text=True,
            timeout=timeout or max(60.0, cases * case_seconds),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS,
                                                  (memory_cap, memory_cap)),
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        result = FuzzResult(parser)
        result.unexpected.append(f"worker exited {proc.returncode} (memory cap "
                                 f"{memory_cap >> 20} MiB?): {proc.stderr.strip()[-500:]}")
        return result
    return FuzzResult(**json.loads(proc.stdout))


def _worker(spec_text: str) -> None:
    spec = json.loads(spec_text)
    seeds = [Path(p).read_bytes() for p in spec["seeds"]]
    result = run_cases(spec["parser"], seeds, spec["cases"], spec["seed"],
                       spec["case_seconds"])
    print(json.dumps(result.__dict__))


_MEASURED_MAIN = """
import runpy, sys
from harness.procmem import peak_rss_bytes
sys.argv = ["skoracle"] + sys.argv[1:]
try:
    runpy.run_module("harness", run_name="__main__")
finally:
    print("MAXRSS", (peak_rss_bytes() or 0) // 1024, file=sys.stderr)
"""


def measured_skoracle(*args: str, cwd: Path | None = None, timeout: float = 120
                      ) -> tuple[int, str, int]:
    """Exit code, stdout + stderr and peak RSS in bytes of `skoracle ARGS` run in a child
    (so a hang is a timeout and memory is the child's own)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", _MEASURED_MAIN, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or root, env=env)
    rss = int(proc.stderr.rsplit("MAXRSS", 1)[1].split()[0]) * 1024
    return proc.returncode, proc.stdout + proc.stderr, rss


#: the README block bench/bench_fuzz.py writes (between these two lines, nothing by hand)
README_BEGIN = "<!-- bench_fuzz: begin (written by `python3 bench/bench_fuzz.py --readme`) -->"
README_END = "<!-- bench_fuzz: end -->"


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def readme_table(doc: dict) -> str:
    """The README's fuzz figures from the benchmark's output document (bench_fuzz.py
    --json-out): when and how it ran, then one row per parser."""
    rows = [FuzzResult(**{k: v for k, v in r.items() if k in FuzzResult.__dataclass_fields__})
            for r in doc["results"]]
    out = [f"Measured {doc['measured']} on {doc['machine']} (seed {doc['seed']}; errors are "
           "the project's own, by class):", "",
           "| parser | cases | accepted | project errors | unexpected | slowest case | "
           "worker peak RSS |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        errors = ", ".join(f"{_thousands(v)} {k}" for k, v in
                           sorted(r.errors.items(), key=lambda kv: -kv[1])) or "none"
        out.append(f"| {r.parser} | {_thousands(r.cases)} | {_thousands(r.accepted)} | "
                   f"{errors} | {len(r.unexpected)} | {r.max_case_seconds * 1e3:.0f} ms | "
                   f"{r.max_rss_bytes / 2**20:.0f} MiB |")
    return "\n".join(out)


def replace_readme_block(text: str, table: str) -> str:
    """`text` with the block between README_BEGIN and README_END replaced by `table`."""
    try:
        head, rest = text.split(README_BEGIN + "\n", 1)
        _, tail = rest.split(README_END, 1)
    except ValueError:
        raise HarnessError(f"README has no {README_BEGIN!r} ... {README_END!r} block") from None
    return f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}"


def readme_block(text: str) -> str:
    """What the README holds between the markers."""
    return text.split(README_BEGIN + "\n", 1)[1].split("\n" + README_END, 1)[0]


def format_result(r: FuzzResult) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "none"
    return (f"{r.parser:<5} {r.cases:>6} cases  {r.accepted:>6} accepted  errors: {errors}  "
            f"unexpected {len(r.unexpected)}  max {r.max_case_seconds * 1e3:.1f} ms/case  "
            f"max RSS {r.max_rss_bytes / 2**20:.0f} MiB  {r.seconds:.1f} s")


if __name__ == "__main__":
    _worker(sys.argv[1])
