"""GGUF input is checked before gguf-py reads it; GGUF output holds only types SKaiNET reads."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from harness.errors import HarnessError
from harness.footprint import functiongemma_tensors, write_shaped_gguf
from harness.fuzz import gguf_seeds, measured_skoracle
from harness.gguffile import (
    SkainetGGUFWriter,
    check_gguf,
    open_gguf,
    skainet_unreadable,
)
from harness.golden import setdir, tinygemma
from harness.golden import spec as S
from harness.golden.generate import generate_set

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "fixtures" / "golden"
#: The issue's file: one KV 'a' declaring an array of 2^40 UINT8, then three bytes.
HUGE_ARRAY = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a"
              + struct.pack("<IIQ", 9, 0, 1 << 40) + b"\1\2\3")
HUGE_MESSAGE = "KV #0 'a': array of 1099511627776 UINT8 needs 1 TiB but 3 bytes remain"

def test_the_52_byte_file_is_refused_by_the_checker(tmp_path: Path) -> None:
    h = tmp_path / "h.gguf"
    h.write_bytes(HUGE_ARRAY)
    assert len(HUGE_ARRAY) == 52
    with pytest.raises(HarnessError, match=HUGE_MESSAGE) as err:
        check_gguf(h)
    assert err.value.exit_code == 2 and str(err.value).startswith(f"{h}: ")


@pytest.mark.parametrize("command", ["footprint", "fixtures", "run"])
def test_the_52_byte_file_through_every_command(tmp_path: Path, command: str) -> None:
    h = tmp_path / "h.gguf"
    h.write_bytes(HUGE_ARRAY)
    if command == "footprint":
        args = ["footprint", "h.gguf"]
    elif command == "run":
        args = ["run", "--only", "footprint", "--model", "h.gguf", "--out", "report"]
    else:
        user = tmp_path / "set"
        user.mkdir()
        shutil.copy(h, user / "h.gguf")
        manifest = {"schema": S.MANIFEST_SCHEMA, "generator_version": S.GENERATOR_VERSION,
                    "files": [setdir.file_entry(user / "h.gguf", "x", kind="case")],
                    "refusals": []}
        (user / S.MANIFEST).write_text(json.dumps(manifest))
        args = ["fixtures", "--verify", "set"]
    code, out, rss = measured_skoracle(*args, cwd=tmp_path)
    assert code == 2, out
    assert HUGE_MESSAGE in out and "Traceback" not in out
    assert rss < 400 << 20  # the interpreter, numpy and the report; not the 1 TiB array


def _small_case() -> Path:
    return min(GOLDEN.glob("*.gguf"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("which", ["golden", "every-kind"])
def test_truncated_at_every_offset(tmp_path: Path, which: str) -> None:
    """Every prefix of a real GGUF is refused with exit 2 naming the file, until the last
    tensor's data is complete; from there gguf-py reads it. The small file with every
    metadata shape the writer allows (harness.fuzz) is cut at every offset; the golden case
    file (5 ms per check) at every 7th offset of its header and tables, the first 64 of its
    data, every 97th after that and its last 4 bytes."""
    if which == "golden":
        src = _small_case()
    else:
        src = tmp_path / "kinds.gguf"
        src.write_bytes(gguf_seeds(tmp_path)[1])
    data = src.read_bytes()
    layout = check_gguf(src)
    needed = max(layout.data_offset + t.offset + t.n_bytes for t in layout.tensors)
    cuts = range(len(data)) if which != "golden" else sorted(
        set(range(0, layout.data_offset, 7)) | set(range(layout.data_offset - 8,
                                                         layout.data_offset + 64))
        | set(range(layout.data_offset, len(data), 97))
        | set(range(needed - 4, len(data))))
    path = tmp_path / "cut.gguf"
    for n in cuts:
        path.write_bytes(data[:n])
        if n < needed:
            with pytest.raises(HarnessError) as err:
                open_gguf(path)
            assert err.value.exit_code == 2 and str(err.value).startswith(str(path))
            assert "\n" not in str(err.value) and "not a readable GGUF file (" not in str(
                err.value)  # the checker refused it, not gguf-py
        else:
            open_gguf(path)


def test_counts_and_types_are_named(tmp_path: Path) -> None:
    def gguf_file(kv: bytes, n_kv: int = 1, n_tensors: int = 0) -> Path:
        p = tmp_path / "k.gguf"
        p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv)
        return p

    key = struct.pack("<Q", 3) + b"k.x"
    with pytest.raises(HarnessError, match=r"KV #0 'k.x': unknown value type 99"):
        check_gguf(gguf_file(key + struct.pack("<I", 99)))
    with pytest.raises(HarnessError, match=r"KV #0 'k.x': string of 4096 bytes needs"):
        check_gguf(gguf_file(key + struct.pack("<IQ", 8, 4096) + b"ab"))
    with pytest.raises(HarnessError, match=r"array of 1000 STRING needs"):
        check_gguf(gguf_file(key + struct.pack("<IIQ", 9, 8, 1000) + bytes(16)))
    with pytest.raises(HarnessError, match=r"KV count: 1000000 key/value pairs needs"):
        check_gguf(gguf_file(b"", n_kv=1_000_000))
    with pytest.raises(HarnessError, match=r"tensor count: 99999 tensor entries needs"):
        check_gguf(gguf_file(b"", n_kv=0, n_tensors=99_999))
    u32 = key + struct.pack("<II", 4, 7)
    with pytest.raises(HarnessError, match=r"KV #1 'k.x': duplicate key"):
        check_gguf(gguf_file(u32 + u32, n_kv=2))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGML" + bytes(20))
    with pytest.raises(HarnessError, match="junk.gguf: not a readable GGUF file: magic"):
        check_gguf(junk)


def test_reader_item_budget_bounds_gguf_py_memory(tmp_path: Path) -> None:
    """An honest array of 2^20 UINT8 in a 1 MiB file would cost gguf-py ~700 MB."""
    p = tmp_path / "many.gguf"
    n = 1 << 20
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a"
                  + struct.pack("<IIQ", 9, 0, n) + bytes(n))
    assert check_gguf(p).kvs[0].count == n  # the walk itself is fine
    with pytest.raises(HarnessError, match=r"exceeds the reader's limit"):
        open_gguf(p)


# --- issue 15: only types SKaiNET's GGUFReader reads --------------------------------------


@pytest.mark.parametrize(("add", "value", "named"), [
    ("add_int64", 5, "INT64"), ("add_float64", 0.5, "FLOAT64"), ("add_int8", 1, "INT8"),
    ("add_uint16", 1, "UINT16"), ("add_int16", 1, "INT16"),
    ("add_array", b"\1\2", "array of UINT8"), ("add_array", [True], "array of BOOL"),
])
def test_writer_refuses_types_skainet_cannot_read(tmp_path: Path, add: str, value: object,
                                                  named: str) -> None:
    w = SkainetGGUFWriter(tmp_path / "w.gguf", "skoracle")
    with pytest.raises(ValueError, match=rf"GGUF key 'bad.key': {named}"):
        getattr(w, add)("bad.key", value)
    w.add_uint32("ok.u32", 1)
    w.add_array("ok.ints", [1, 2])  # Python ints: INT32 items
    w.add_key_value("ok.floats", [0.5], gguf.GGUFValueType.ARRAY,
                    sub_type=gguf.GGUFValueType.FLOAT32)
    w.close()


def _all_project_ggufs(tmp: Path) -> list[Path]:
    """Committed fixtures, a fresh small set, both tiny models and the footprint's file."""
    fresh = tmp / "fresh"
    generate_set(fresh, seed=S.DEFAULT_SEED, set_name="small")
    for mix in tinygemma.MIXES:
        tinygemma.write(tmp / f"tiny-{mix}.gguf", tinygemma.TinyGemmaConfig(mix=mix))
    write_shaped_gguf(tmp / "shaped.gguf", functiongemma_tensors())
    return sorted(GOLDEN.rglob("*.gguf")) + sorted(fresh.glob("*.gguf")) + sorted(
        tmp.glob("*.gguf"))


def test_every_gguf_the_project_writes_holds_only_types_skainet_reads(tmp_path: Path) -> None:
    files = _all_project_ggufs(tmp_path)
    assert len(files) > 2 * len(list(GOLDEN.glob("*.gguf")))
    found = {f.name: skainet_unreadable(check_gguf(f)) for f in files}
    assert {name: p for name, p in found.items() if p} == {}
    kinds = {kv.type for f in files[:1] + files[-3:] for kv in check_gguf(f).kvs}
    assert gguf.GGUFValueType.ARRAY in kinds and gguf.GGUFValueType.UINT32 in kinds


def _set_with_int64_seed(tmp_path: Path) -> tuple[Path, str]:
    """A one-file copy of the committed set whose skoracle.seed is stored as INT64."""
    user = tmp_path / "user"
    user.mkdir()
    manifest = json.loads((GOLDEN / S.MANIFEST).read_text())
    entry = next(f for f in manifest["files"] if f["name"].startswith("dequantize-"))
    data = bytearray((GOLDEN / entry["name"]).read_bytes())
    key = S.K_SEED.encode()
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<I", data, at)[0] == gguf.GGUFValueType.UINT64
    struct.pack_into("<I", data, at, gguf.GGUFValueType.INT64)  # same size, other type
    (user / entry["name"]).write_bytes(bytes(data))
    entry = setdir.file_entry(user / entry["name"], entry["description"],
                              **{k: v for k, v in entry.items()
                                 if k not in ("name", "sha256", "size", "description",
                                              "generator_version")})
    manifest.update(files=[entry], refusals=[])
    (user / S.MANIFEST).write_text(setdir.manifest_text(manifest))
    return user, entry["name"]


def test_verify_reports_a_forbidden_type_as_a_finding(tmp_path: Path) -> None:
    user, name = _set_with_int64_seed(tmp_path)
    code, out, _ = measured_skoracle("fixtures", "--verify", str(user), cwd=tmp_path)
    assert code == 1, out
    line = next(x for x in out.splitlines() if "metadata types SKaiNET reads:" in x)
    assert f"'{S.K_SEED}': INT64: SKaiNET's GGUFReader throws on it" in line
    assert name in out and "MISMATCH" in out


def test_footprint_of_a_truncated_tensor_table_names_the_tensor(tmp_path: Path) -> None:
    p = tmp_path / "t.gguf"
    w = SkainetGGUFWriter(p, "gemma3")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(HarnessError, match=r"tensor #0 'token_embd.weight': data of 512 "
                                           r"bytes .* needs bytes up to"):
        check_gguf(p)


def test_big_endian_files_are_walked_in_their_byte_order(tmp_path: Path) -> None:
    p = tmp_path / "be.gguf"
    w = SkainetGGUFWriter(p, "skoracle", endianess=gguf.GGUFEndian.BIG)
    w.add_array("k.strs", ["a", "bc"])
    w.add_tensor("t", np.arange(8, dtype=np.float32).byteswap())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    layout = check_gguf(p)
    assert layout.byte_order == ">" and layout.version == 3
    assert [(t.name, t.dims, t.n_bytes) for t in layout.tensors] == [("t", (8,), 32)]
    reader, _ = open_gguf(p)
    assert [bytes(reader.fields["k.strs"].parts[i]) for i in reader.fields["k.strs"].data] \
        == [b"a", b"bc"]


def test_every_gguf_writer_and_reader_in_the_project_goes_through_gguffile() -> None:
    """The type rule and the input check live in one place: no other module constructs
    gguf-py's writer or reader itself."""
    direct = []
    packages = ("harness", "kernels_ref", "oracle", "refmodel")
    for path in sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py")):
        if path.name == "gguffile.py":
            continue
        text = path.read_text()
        for name in ("GGUFWriter(", "GGUFReader("):
            if name in text.replace("SkainetGGUFWriter(", "").replace("LeanGGUFReader(", ""):
                direct.append(f"{path.relative_to(ROOT)}: {name}")
    assert direct == []
