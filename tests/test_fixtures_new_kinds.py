"""Golden cases of the read-only block formats, the dense GEMM and the BitNet GEMV: present
in the committed set, readable under SKaiNET's type rule, recomputed bit-exact, and a
corrupted one fails `verify` naming the case."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

import oracle
from harness.golden import casefile, dense, setdir
from harness.golden import spec as S
from harness.golden.verify import MISMATCH, OK, verify_set

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden"
Q8_1 = "dequantize-q8_1-edge-o9-i256.gguf"
GEMM_BF16 = "gemm-bf16-random-o9-i37-b3.gguf"
BITNET = "bitnet_gemv-tq2_0-random-o9-i1024-b4.gguf"
TERNARY = "ternary_gemv-ternary-random-o9-i100-b3.gguf"
LMHEAD = "ternary_lmhead-ternary-random-o11-i100-b2.gguf"
NEW_KINDS = ("gemm", "bitnet_gemv", "ternary_gemv", "ternary_lmhead")


def manifest() -> dict:
    return json.loads((GOLDEN / S.MANIFEST).read_text())


def new_kind_files() -> list[str]:
    return [f["name"] for f in manifest()["files"]
            if f.get("format") in oracle.READ_TYPES or f.get("kind") in NEW_KINDS]


def test_every_new_kind_has_its_cases():
    files = [f for f in manifest()["files"] if f["kind"] != "model"]
    for fmt in oracle.READ_TYPES:
        mine = {f["weights"] for f in files if f["format"] == fmt and f["kind"] == "dequantize"}
        assert mine == {"random", "edge"}, fmt
    for fmt in S.DENSE_FORMATS:
        gemm = [f for f in files if f["kind"] == "gemm" and f["format"] == fmt]
        assert len(gemm) == 2, fmt
        assert all(f["semantics"] == [v.id for v in dense.VARIANTS] for f in gemm)
        assert {f["shape"]["batch"] == 1 for f in gemm} == {True, False}
    bitnet = [f for f in files if f["kind"] == "bitnet_gemv"]
    assert bitnet and all(f["format"] == "TQ2_0" for f in bitnet)
    ternary = [f for f in files if f["kind"] == "ternary_gemv"]
    assert ternary and all(f["semantics"] == ["exact", "skainet_neon"] for f in ternary)
    assert any(f["shape"]["in"] % 16 for f in ternary)
    assert [f["name"] for f in files if f["kind"] == "ternary_lmhead"] == [LMHEAD]


def test_committed_new_cases_recompute_bit_exact():
    report = verify_set(GOLDEN)
    assert report.exit_code == OK
    for name in new_kind_files():
        rows = [r for r in report.rows if r.file == name and r.check.startswith("expected.")]
        assert rows and all(r.status == OK and r.bit_exact for r in rows), name


def test_q8_1_blocks_are_stored_as_bytes_the_readers_size_right():
    r = gguf.GGUFReader(GOLDEN / Q8_1)
    t = next(t for t in r.tensors if t.name == S.T_WEIGHT)
    assert int(t.tensor_type) == S.GGML_I8
    assert [int(n) for n in t.shape] == [oracle.qtype("Q8_1").row_bytes(256), 9]
    meta, tensors = casefile.read(GOLDEN / Q8_1)
    assert meta[S.K_WEIGHT_TYPE] == "I8"
    src = tensors[S.T_SOURCE][1]
    assert np.array_equal(tensors[S.T_WEIGHT][1], oracle.quantize("Q8_1", src))


def test_dense_and_bitnet_cases_tell_the_orders_apart():
    _, t = casefile.read(GOLDEN / GEMM_BF16)
    bits = {v.id: t[S.T_EXPECTED + v.id][1].view(np.uint32).tobytes() for v in dense.VARIANTS}
    assert len(set(bits.values())) > 4
    _, t = casefile.read(GOLDEN / BITNET)
    fused, unfused = (t[S.T_EXPECTED + f"skainet_neon.{k}"][1] for k in ("fused", "unfused"))
    assert not np.array_equal(fused.view(np.uint32), unfused.view(np.uint32))
    _, t = casefile.read(GOLDEN / TERNARY)
    assert t[S.T_WEIGHT][0] == S.GGML_I8
    exact, lut = (t[S.T_EXPECTED + k][1] for k in ("exact", "skainet_neon"))
    assert not np.array_equal(exact.view(np.uint32), lut.view(np.uint32))


def test_lmhead_case_holds_four_planes_and_adversarial_row_scales():
    _, t = casefile.read(GOLDEN / LMHEAD)
    assert t[S.T_WEIGHT][1].shape == (4 * 11, 100 // 4)
    bits = t[S.T_ROW_SCALE][1].view(np.uint16)
    assert bits[1] & 0x8000 and not bits[2] & 0x7C00  # a negative and a subnormal scale
    exact, lut = (t[S.T_EXPECTED + k][1] for k in ("exact", "skainet_neon"))
    assert not np.array_equal(exact.view(np.uint32), lut.view(np.uint32))


def _tensor_offset(path: Path, name: str) -> int:
    r = gguf.GGUFReader(path)
    return int(next(t for t in r.tensors if t.name == name).data_offset)


@pytest.mark.parametrize(("name", "tensor"), [
    ("dequantize-q3_k-edge-o9-i256.gguf", "expected.exact"),
    (Q8_1, "expected.exact"),
    ("dequantize-tq1_0-random-o4-i512.gguf", "expected.exact"),
    (GEMM_BF16, "expected.skainet_panama_outer.lanes4"),
    ("gemm-f16-random-o17-i64-b1.gguf", "expected.skainet_neon.fused"),
    (BITNET, "expected.skainet_neon.unfused"),
    (TERNARY, "expected.skainet_neon"),
    (LMHEAD, "expected.exact"),
])
def test_a_corrupted_new_case_fails_verify_naming_it(tmp_path, name, tensor):
    root = tmp_path / "set"
    shutil.copytree(GOLDEN, root)
    path = root / name
    b = bytearray(path.read_bytes())
    b[_tensor_offset(path, tensor)] ^= 0x01  # the lowest mantissa bit of the first output
    path.write_bytes(bytes(b))
    m = json.loads((root / S.MANIFEST).read_text())
    next(f for f in m["files"] if f["name"] == name)["sha256"] = hashlib.sha256(b).hexdigest()
    (root / S.MANIFEST).write_text(setdir.manifest_text(m))
    report = verify_set(root)
    assert report.exit_code == MISMATCH
    bad = [(r.file, r.check) for r in report.rows if r.status != OK]
    assert (name, tensor) in bad
    assert {f for f, _ in bad} == {name}


@pytest.mark.parametrize("fmt", oracle.READ_TYPES)
def test_edge_rows_of_the_read_formats_reach_their_targets(fmt):
    """The adversarial rows are adversarial for every read-only format too: fp16-subnormal
    and underflowing scales (Q8_K's d is a float32: neither happens there), top-binade
    scales, all-zero blocks, finite dequantized values."""
    w, kinds = S.edge_weights(fmt, len(S.EDGE_ROWS), 2 * oracle.QK_K, S.case_rng(0, fmt))
    raw = oracle.quantize(fmt, w)
    p = oracle.unpack(fmt, raw.reshape(-1, oracle.qtype(fmt).nbytes))
    d = np.abs(np.asarray(p["d"], np.float64)).reshape(len(kinds), -1)
    deq = oracle.dequantize(fmt, raw).reshape(len(kinds), -1)
    row = {k: i for i, k in enumerate(kinds)}
    assert np.all(d[row["zero"]] == 0) and np.all(deq[row["zero"]] == 0)
    assert np.all((d[row["max_scale"]] >= 2.0**15) & (d[row["max_scale"]] <= 65504))
    assert np.all(np.isfinite(deq))
    if fmt != "Q8_K":
        assert np.all((d[row["subnormal"]] > 0) & (d[row["subnormal"]] < 2.0**-14))
        assert np.all(d[row["underflow"]] == 0)
    assert (fmt in S.MIN_FORMATS) == bool({"m", "dmin"} & set(p))
