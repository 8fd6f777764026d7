"""Golden fixtures: determinism, the committed set, the file layout, the verifier, tampering,
and the write-to-temp-then-rename discipline."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import kernels_ref
import oracle
from harness.errors import HarnessError
from harness.golden import casefile, compute, setdir
from harness.golden import spec as S
from harness.golden.generate import generate_set
from harness.golden.tinygemma import LLAMA_FALLBACK
from harness.golden.verify import MISMATCH, OK, UNREADABLE, verify_set
from kernels_ref import ulp_distance

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden"
README = ROOT / "fixtures" / "README.md"
MATMUL_Q8 = "matmul_wt-q8_0-random-o7-i256-b1.gguf"


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fixtures") / "small"
    return out, generate_set(out, seed=S.DEFAULT_SEED, set_name="small")


@pytest.fixture
def copy_of_set(small_set, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(small_set[0], dst)
    return dst


def flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x01
    path.write_bytes(bytes(b))


def tensor_offset(path: Path, name: str) -> int:
    r = gguf.GGUFReader(path)
    return int(next(t for t in r.tensors if t.name == name).data_offset)


# --- determinism and the committed set ----------------------------------------------------

def test_generating_twice_gives_identical_bytes(small_set, tmp_path):
    again = tmp_path / "again"
    generate_set(again, seed=S.DEFAULT_SEED, set_name="small")
    assert digests(again) == digests(small_set[0])


def test_committed_golden_set_is_exactly_what_the_generator_writes(small_set):
    want, have = digests(small_set[0]), digests(GOLDEN)
    drift = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
    assert not drift, (f"fixtures/golden drifted from the generator in {len(drift)} files "
                       f"(e.g. {drift[:5]}); regenerate with "
                       "`python3 -m harness fixtures --out fixtures/golden --set small`")


def test_golden_set_is_small_and_lists_every_file():
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 3_000_000
    manifest = json.loads((GOLDEN / S.MANIFEST).read_text())
    listed = {f["name"] for f in manifest["files"]}
    assert listed | {S.MANIFEST} == {p.name for p in GOLDEN.iterdir()}


def test_another_seed_gives_other_bytes_for_the_same_case():
    case = S.Case("matmul_wt", "Q8_0", 7, 256, 1)
    a, b = casefile.build(case, 0), casefile.build(case, 1)
    assert not np.array_equal(a.tensors[S.T_WEIGHT], b.tensors[S.T_WEIGHT])
    assert not np.array_equal(a.tensors[S.T_INPUT], b.tensors[S.T_INPUT])


def test_small_set_is_a_subset_of_the_full_set():
    small, full = S.catalogue("small"), S.catalogue("full")
    assert set(small) < set(full)
    assert len({c.id for c in full}) == len(full)  # ids are unique file names


def test_random_numbers_come_only_from_raw_bits():
    """The streams are defined by PCG64's raw output, which NumPy keeps stable; pin a few
    values so a change in how they are derived is noticed."""
    rng = S.case_rng(0, "pin")
    u = S.uniform(rng, (3,))
    assert u.dtype == np.float64 and np.all((u >= 0) & (u < 1))
    rng2 = S.case_rng(0, "pin")
    raw = rng2.bit_generator.random_raw(3)
    assert np.array_equal(u, (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53)


# --- the manifest and the catalogue --------------------------------------------------------

def test_manifest_rows_match_the_files(small_set):
    root, manifest = small_set
    assert (root / S.MANIFEST).read_text() == setdir.manifest_text(manifest)
    assert manifest["schema"] == S.MANIFEST_SCHEMA
    assert manifest["generator_version"] == S.GENERATOR_VERSION
    for f in manifest["files"]:
        path = root / f["name"]
        assert f["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert f["size"] == path.stat().st_size
        assert f["description"] and f["generator_version"] == S.GENERATOR_VERSION
    assert "timestamp" not in (root / S.MANIFEST).read_text().lower()


def test_every_format_and_kind_is_covered_with_the_shapes_that_matter(small_set):
    _, manifest = small_set
    cases = [f for f in manifest["files"] if f["kind"] != "model"]
    for fmt in oracle.PACKED_TYPES:
        mine = [f for f in cases if f["format"] == fmt]
        for kind in S.KINDS:
            of_kind = [f for f in mine if f["kind"] == kind]
            assert {f["weights"] for f in of_kind} == {"random", "edge"}, (fmt, kind)
        mm = [f for f in mine if f["kind"] == "matmul_wt"]
        assert any(f["shape"]["out"] % 4 for f in mm)
        assert {f["shape"]["batch"] == 1 for f in mm} == {True, False}
        at640 = [f for f in mine if f["shape"]["in"] == 640]
        refused = [r for r in manifest["refusals"] if r["format"] == fmt]
        if oracle.qtype(fmt).kquant:
            assert not at640 and {r["kind"] for r in refused} == set(S.KINDS)
        else:
            assert {f["kind"] for f in at640} == set(S.KINDS) and not refused


def test_refusals_carry_the_oracles_error(small_set):
    _, manifest = small_set
    assert manifest["refusals"]
    for r in manifest["refusals"]:
        with pytest.raises(oracle.OracleError) as exc:
            oracle.quantize(r["format"], np.zeros((1, r["shape"]["in"]), np.float32))
        assert r["message"] == str(exc.value)
        assert r["expected_error"] == "OracleError"
        assert r["llama_cpp_fallback"] == LLAMA_FALLBACK[r["format"]]


# --- one case file, read back -------------------------------------------------------------

def test_matmul_case_layout(small_set):
    path = small_set[0] / MATMUL_Q8
    r = gguf.GGUFReader(path)
    t = {x.name: x for x in r.tensors}
    meta = {k: f.contents() for k, f in r.fields.items()}
    assert meta["general.alignment"] == S.ALIGNMENT
    assert meta[S.K_FORMAT] == "Q8_0" and meta[S.K_KIND] == "matmul_wt"
    assert (meta[S.K_OUT], meta[S.K_IN], meta[S.K_BATCH]) == (7, 256, 1)
    assert meta[S.K_ORDER] == "ROW_MAJOR"
    keys = [k for k in r.fields if k.startswith("skoracle.")]
    assert keys == sorted(keys)
    w = t[S.T_WEIGHT]
    assert w.tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert [int(d) for d in w.shape] == [256, 7]  # GGUF ne: fastest dimension first
    assert [int(d) for d in t[S.T_INPUT].shape] == [256, 1]
    ibm = t[S.T_WEIGHT_IBM]
    assert ibm.tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert [int(d) for d in ibm.shape] == [7 * 32, 256 // 32]
    assert np.array_equal(np.asarray(ibm.data).reshape(-1),
                          oracle.to_input_block_major(np.asarray(w.data), "Q8_0"))
    for vid in meta[S.K_SEMANTICS]:
        e = t[S.T_EXPECTED + vid]
        assert e.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(d) for d in e.shape] == [7, 1]
        assert meta[S.K_COMPARE + vid] == "bit_exact"
        if vid != "exact":
            assert meta[S.K_BOUND + vid] == pytest.approx(float(np.max(t[S.T_BOUND + vid].data)))


def test_expected_outputs_are_kernels_ref_bit_for_bit(small_set):
    """Independently of the verifier: call kernels_ref on the stored bytes."""
    for name in (MATMUL_Q8, "matmul_wt-q4_k-edge-o9-i256-b2.gguf",
                 "matmul_wt-q5_1-random-o5-i640-b2.gguf"):
        meta, tensors = casefile.read(small_set[0] / name)
        w, x = tensors[S.T_WEIGHT][1], tensors[S.T_INPUT][1]
        for v in compute.VARIANTS:
            if v.id not in meta[S.K_SEMANTICS]:
                assert v.semantics in meta[S.K_ABSENT]
                continue
            y = kernels_ref.matmul_wt(x, w, meta[S.K_FORMAT], meta[S.K_OUT], meta[S.K_IN],
                                      semantics=v.semantics, **dict(v.opts))
            assert np.array_equal(y.view(np.uint32),
                                  tensors[S.T_EXPECTED + v.id][1].view(np.uint32)), (name, v.id)


def test_neon_q4_0_is_stored_bit_exact(small_set):
    """SKaiNET's q4_0_matmul.c has a NEON body now: skainet_neon models it, so its Q4_0
    outputs are stored for bit-exact comparison, not as an absent kernel."""
    meta, tensors = casefile.read(small_set[0] / "matmul_wt-q4_0-random-o7-i256-b1.gguf")
    assert "skainet_neon" not in meta.get(S.K_ABSENT, [])
    assert any(n.startswith(S.T_EXPECTED + "skainet_neon") for n in tensors)


def test_absent_kernel_is_recorded_with_its_bound(tmp_path, monkeypatch):
    """A semantics that refuses a format is stored as absent, with its reason and bound."""
    from kernels_ref.semantics import SkainetNeon

    monkeypatch.setattr(SkainetNeon, "refused", {"Q4_0": "no kernel for this test"})
    generate_set(tmp_path / "set", seed=S.DEFAULT_SEED, set_name="small")
    meta, tensors = casefile.read(tmp_path / "set" / "matmul_wt-q4_0-random-o7-i256-b1.gguf")
    assert "skainet_neon" in meta[S.K_ABSENT]
    assert "no kernel for Q4_0" in meta[S.K_ABSENT_WHY + "skainet_neon"]
    assert meta[S.K_COMPARE + "skainet_neon"] == "bound"
    assert S.T_BOUND + "skainet_neon" in tensors
    assert not any(n.startswith(S.T_EXPECTED + "skainet_neon") for n in tensors)


def test_gather_and_dequantize_cases(small_set):
    root = small_set[0]
    meta, t = casefile.read(root / "gather_rows-q6_k-random-o16-i256-b6.gguf")
    ids = t[S.T_IDS][1]
    assert ids.dtype == np.int32 and ids[0] == 0 and ids[1] == 15 and ids[2] == ids[3]
    table = oracle.dequantize("Q6_K", t[S.T_WEIGHT][1])
    assert np.array_equal(t[S.T_EXPECTED + "exact"][1], table[ids])
    scale = np.float32(meta[S.K_SCALE])
    assert scale == np.sqrt(np.float32(256))
    assert np.array_equal(t[S.T_SCALED][1], table[ids] * scale)
    meta, t = casefile.read(root / "dequantize-q5_1-edge-o9-i256.gguf")
    assert meta[S.K_EDGE_ROWS] == list(S.EDGE_ROWS)
    assert np.array_equal(oracle.quantize("Q5_1", t[S.T_SOURCE][1]), t[S.T_WEIGHT][1])


@pytest.mark.parametrize("fmt", oracle.PACKED_TYPES)
def test_edge_rows_reach_their_targets(fmt):
    q = oracle.qtype(fmt)
    w, kinds = S.edge_weights(fmt, len(S.EDGE_ROWS), 2 * oracle.QK_K, S.case_rng(0, fmt))
    raw = oracle.quantize(fmt, w)
    p = oracle.unpack(fmt, raw)
    d = np.abs(p["d"].astype(np.float64))
    deq = oracle.dequantize(fmt, raw)
    row = {k: i for i, k in enumerate(kinds)}
    assert np.all(d[row["zero"]] == 0) and np.all(deq[row["zero"]] == 0)
    assert np.all((d[row["subnormal"]] > 0) & (d[row["subnormal"]] < 2.0**-14))
    assert np.all(d[row["underflow"]] == 0) and np.any(p["qs"][row["underflow"]] != 0)
    assert np.all((d[row["max_scale"]] >= 2.0**15) & (d[row["max_scale"]] <= 65504))
    assert np.all(np.isfinite(deq))
    # ({"m"} or {"dmin"}) & keys: the formats whose minimum is an fp16 of its own
    assert (fmt in S.MIN_FORMATS) == bool({"m", "dmin"} & set(p))
    c = w[row["constant"]]
    assert np.all(c == c[0])
    if not q.kquant:  # the anchors pin d = 1: every value lands exactly on .5
        assert np.all(p["d"][row["ties"]] == 1.0)
        ties = w[row["ties"]].astype(np.float64)
        anchored = np.isin(ties, TIE_ANCHORS[fmt])
        assert np.all(np.abs(ties[~anchored] - np.floor(ties[~anchored])) == 0.5)


TIE_ANCHORS = {fmt: np.array(S.TIE_GRID[fmt][0]) for fmt in S.TIE_GRID}


# --- the verifier ----------------------------------------------------------------------------

def test_verify_passes_on_a_fresh_set(small_set):
    report = verify_set(small_set[0])
    assert report.exit_code == OK
    assert all(r.bit_exact for r in report.rows if r.bit_exact is not None)
    checked = {r.file for r in report.rows}
    assert {f["name"] for f in small_set[1]["files"]} <= checked
    assert any(r.check.startswith("|skainet_scalar - exact| <= bound") for r in report.rows)


def test_flipped_byte_in_tensor_data_is_caught_and_named(copy_of_set):
    path = copy_of_set / MATMUL_Q8
    flip(path, tensor_offset(path, S.T_EXPECTED + "skainet_scalar") + 1)
    report = verify_set(copy_of_set)
    assert report.exit_code == MISMATCH
    bad = {(r.file, r.check) for r in report.rows if r.status != OK}
    assert (MATMUL_Q8, "sha256") in bad
    assert (MATMUL_Q8, "expected.skainet_scalar") in bad
    assert {f for f, _ in bad} == {MATMUL_Q8}
    row = next(r for r in report.rows if r.check == "expected.skainet_scalar"
               and r.file == MATMUL_Q8)
    assert row.bit_exact is False and row.max_ulp > 0 and row.max_abs > 0


def test_flipped_byte_in_the_header_is_unreadable_and_named(copy_of_set):
    flip(copy_of_set / MATMUL_Q8, 0)  # the GGUF magic
    report = verify_set(copy_of_set)
    assert report.exit_code == UNREADABLE
    parse = next(r for r in report.rows if r.file == MATMUL_Q8 and r.check == "parse")
    assert MATMUL_Q8 in parse.detail and "not a readable GGUF" in parse.detail


def test_any_flipped_byte_is_caught_without_a_traceback(small_set, tmp_path):
    name = "gather_rows-q8_0-random-o16-i256-b6.gguf"
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(small_set[0] / name, one / name)
    m = dict(small_set[1], files=[f for f in small_set[1]["files"] if f["name"] == name],
             refusals=[])
    (one / S.MANIFEST).write_text(setdir.manifest_text(m))
    assert verify_set(one).exit_code == OK
    path = one / name
    pristine = path.read_bytes()
    for off in np.linspace(0, len(pristine) - 1, 64).astype(int):
        path.write_bytes(pristine)
        flip(path, int(off))
        report = verify_set(one)
        assert report.exit_code in (MISMATCH, UNREADABLE), off
        assert any(r.check == "sha256" and r.status == MISMATCH for r in report.rows), off


def test_recomputation_catches_a_changed_output_even_with_a_matching_manifest(copy_of_set):
    path = copy_of_set / MATMUL_Q8
    flip(path, tensor_offset(path, S.T_EXPECTED + "exact"))  # lowest mantissa bit
    m = json.loads((copy_of_set / S.MANIFEST).read_text())
    entry = next(f for f in m["files"] if f["name"] == MATMUL_Q8)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy_of_set / S.MANIFEST).write_text(setdir.manifest_text(m))
    report = verify_set(copy_of_set)
    assert report.exit_code == MISMATCH
    row = next(r for r in report.rows if r.file == MATMUL_Q8 and r.check == "expected.exact")
    assert row.max_ulp == 1 and row.bit_exact is False


def test_missing_truncated_and_unlisted_files(copy_of_set):
    (copy_of_set / MATMUL_Q8).unlink()
    tiny = copy_of_set / "tiny-gemma3.gguf"
    tiny.write_bytes(tiny.read_bytes()[:100])
    (copy_of_set / "stray.txt").write_text("x")
    report = verify_set(copy_of_set)
    assert report.exit_code == UNREADABLE
    bad = {r.file: r for r in report.rows if r.status == UNREADABLE}
    assert MATMUL_Q8 in bad and "missing" in bad[MATMUL_Q8].detail
    assert "tiny-gemma3.gguf" in bad
    assert any("stray.txt" in n for n in report.notes)


@pytest.mark.parametrize("content", ["{", '{"schema": "other"}', '{"schema": "skoracle-'
                                     'fixtures/1", "files": [{"name": "../x"}]}'])
def test_unusable_manifest_is_an_input_error(copy_of_set, content):
    (copy_of_set / S.MANIFEST).write_text(content)
    with pytest.raises(HarnessError) as exc:
        verify_set(copy_of_set)
    assert exc.value.exit_code == 2 and S.MANIFEST in str(exc.value)


def test_ulp_distance():
    one = np.float32(1.0)
    up = np.nextafter(one, np.float32(2))
    tiny = np.float32(1e-45)
    assert ulp_distance(np.array([one]), np.array([up]))[0] == 1
    assert ulp_distance(np.array([0.0], np.float32), np.array([-0.0], np.float32))[0] == 0
    assert ulp_distance(np.array([tiny]), np.array([-tiny]))[0] == 2
    assert ulp_distance(np.array([-one]), np.array([-up]))[0] == 1


# --- writing: temp dir + rename, refusal of foreign directories -----------------------------

def test_refuses_a_directory_that_is_not_a_fixture_set(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HarnessError) as exc:
        generate_set(out, set_name="small")
    assert exc.value.exit_code == 2 and "not a fixture set" in str(exc.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(HarnessError):
        generate_set(afile, set_name="small")
    assert afile.read_text() == "x"


def test_replaces_an_existing_set_and_fills_an_empty_directory(small_set, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    generate_set(out, set_name="small")
    (out / "stale.gguf").write_text("old")
    generate_set(out, set_name="small")
    assert digests(out) == digests(small_set[0])
    assert not [p for p in tmp_path.iterdir() if "skoracle-" in p.name]


def test_an_interrupted_run_leaves_no_half_set(small_set, tmp_path, monkeypatch):
    real_write = casefile.write
    calls = []

    def dying_write(data, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(data, path)

    monkeypatch.setattr(casefile, "write", dying_write)
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        generate_set(fresh, set_name="small")
    assert not fresh.exists()
    old = tmp_path / "old"
    shutil.copytree(small_set[0], old)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        generate_set(old, set_name="small")
    assert digests(old) == digests(small_set[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# --- the command line, end to end ------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "fixtures", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_cli_writes_verifies_and_names_a_tampered_file(tmp_path):
    out = tmp_path / "set"
    p = run_cli("--out", str(out), "--set", "small", "--seed", "0")
    assert p.returncode == 0, p.stderr
    assert re.search(r"wrote \d+ files .* set small, seed 0", p.stdout)
    p = run_cli("--verify", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"\d+/\d+ bit-exact, 0 with problems", p.stdout)
    assert MATMUL_Q8 in p.stdout  # one line per case
    path = out / MATMUL_Q8
    flip(path, os.path.getsize(path) - 3)
    p = run_cli("--verify", str(out))
    assert p.returncode == 1
    assert f"MISMATCH   {MATMUL_Q8}" in p.stdout and "sha256" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_cli_usage_and_input_errors(tmp_path):
    p = run_cli()
    assert p.returncode == 2 and "exactly one of --out DIR or --verify DIR" in p.stderr
    p = run_cli("--verify", str(tmp_path / "nope"))
    assert p.returncode == 2 and "nope" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("--out", str(tmp_path / "x"), "--seed", "-1")
    assert p.returncode == 2 and "--seed" in p.stderr


# --- the README the Kotlin side reads --------------------------------------------------------

def test_readme_documents_every_key_tensor_and_variant():
    text = README.read_text()
    names = [v for k, v in vars(S).items() if k.startswith(("K_", "T_"))]
    names += [v.id for v in compute.VARIANTS]
    missing = [n for n in names if n.rstrip(".") not in text]
    assert not missing, f"fixtures/README.md does not mention {missing}"
