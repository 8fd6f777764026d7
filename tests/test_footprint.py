"""`skoracle footprint` on a GGUF with FunctionGemma 270M's tensor table (REFERENCE.md §4).

The file is written by gguf-py's GGUFWriter (header, metadata, tensor infos); the data area
is then extended to its full length as a sparse file, so the ~250 MB of zero blocks cost no
writing and GGUFReader sees a complete, valid file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.footprint import (
    N_EMBD,
    N_LAYER,
    VOCAB,
    nbytes,
    parse_size,
    read_footprint,
)
from harness.footprint import functiongemma_tensors as gemma_tensors
from harness.footprint import write_shaped_gguf as write_gguf
from oracle import qtype


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "functiongemma-shapes.gguf"
    write_gguf(path, gemma_tensors())
    return path


def test_functiongemma_drop(gemma: Path) -> None:
    fp = read_footprint(gemma)
    assert fp.tied_output
    emb_fp32 = VOCAB * N_EMBD * 4
    emb_q8 = VOCAB * qtype("Q8_0").row_bytes(N_EMBD)
    assert fp.embedding_output("dequant-fp32") == 2 * emb_fp32  # 1.342 GB
    assert fp.embedding_output("packed") == emb_q8  # 178.3 MB, stored once
    assert abs(2 * emb_fp32 / 1e9 - 1.34) < 0.01 and abs(emb_q8 / 1e6 - 178) < 1
    layers = sum(nbytes(s, t) for n, s, t in gemma_tensors() if n != "token_embd.weight")
    assert fp.total("packed") == emb_q8 + layers
    assert fp.total("dequant-fp32") == 2 * emb_fp32 + layers
    assert 240e6 < fp.total("packed") < 260e6  # the ~248 MB Q5_K_M file
    # the file's data area was never read: a sparse file has (almost) no blocks allocated
    assert os.stat(gemma).st_blocks * 512 < 4 * 2**20


def test_untied_output_counts_once_per_copy(tmp_path: Path) -> None:
    path = tmp_path / "untied.gguf"
    write_gguf(path, gemma_tensors(tied=False))
    fp = read_footprint(path)
    assert not fp.tied_output
    emb_q8 = VOCAB * qtype("Q8_0").row_bytes(N_EMBD)
    assert fp.embedding_output("packed") == 2 * emb_q8
    assert fp.embedding_output("dequant-fp32") == 2 * VOCAB * N_EMBD * 4


def test_cli_table_and_json(gemma: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["footprint", str(gemma)]) == 0
    out = capsys.readouterr().out
    assert "blk.17.ffn_down.weight" in out and "output.weight (tied" in out
    assert "1.34 GB -> 178.3 MB" in out
    assert main(["footprint", str(gemma), "--json"]) == 0  # default budget: the board's 1.9 GB
    doc = json.loads(capsys.readouterr().out)
    assert doc["tied_output"] is True and doc["budget_bytes"] == 1_900_000_000
    fp32, packed = doc["policies"]["dequant-fp32"], doc["policies"]["packed"]
    # dequant-fp32: 1.41 GB resident + the 0.67 GB transposed lm_head copy -> over 1.9 GB
    assert fp32["transient_bytes"] == VOCAB * N_EMBD * 4
    assert fp32["peak_bytes"] == fp32["total_bytes"] + VOCAB * N_EMBD * 4 > 1_900_000_000
    assert fp32["fits"] is False
    # packed: transpose is a marker; the transient is one relayout of the largest matrix
    assert packed["transient_bytes"] == VOCAB * qtype("Q8_0").row_bytes(N_EMBD)
    assert packed["fits"] is True and packed["peak_bytes"] < 500_000_000
    assert doc["verdict"] == {"claim": "packed fits", "ok": True, "exit_code": 0}
    assert main(["footprint", str(gemma), "--json", "--budget", "300MB"]) == 1
    small = json.loads(capsys.readouterr().out)
    assert small["policies"]["packed"]["fits"] is False and small["verdict"]["ok"] is False
    assert doc["policies"]["dequant-fp32"]["embedding_output_bytes"] == 2 * VOCAB * N_EMBD * 4
    assert len(doc["tensors"]) == 1 + 13 * N_LAYER + 1 + 1


@pytest.mark.parametrize("cut", [10, 200, -1000])
def test_truncated_or_corrupt_file_exits_2(gemma: Path, tmp_path: Path, cut: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gguf"
    size = gemma.stat().st_size
    keep = cut if cut > 0 else size + cut
    with open(gemma, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read(min(keep, 1 << 20)))
        if keep > 1 << 20:
            dst.truncate(keep)
    assert main(["footprint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.gguf" in err and ("truncated" in err or "not a readable GGUF" in err)
    assert "Traceback" not in err


def test_not_gguf_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGML" + bytes(100))
    assert main(["footprint", str(junk)]) == 2
    assert "junk.gguf: not a readable GGUF" in capsys.readouterr().err
    assert main(["footprint", str(tmp_path / "nope.gguf")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_budget_parsing() -> None:
    assert parse_size("1.9GB") == 1_900_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("2000") == 2000
    with pytest.raises(HarnessError, match="--budget"):
        parse_size("lots", "--budget")


ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "golden" / "tiny-gemma3.gguf"


def _leg(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["run", "--only", "footprint", "--out", str(out), *args])
    capsys.readouterr()
    leg = json.loads((out / "report.json").read_text())["legs"][0]
    return code, {r["case"].split(":")[0]: r["verdict"] for r in leg["rows"]}


@pytest.mark.parametrize("budget, model, code, fp32_fits", [
    ("1.9GB", None, 0, False),  # the board: packed fits, dequant-fp32 is the known problem
    ("4GB", None, 0, True),  # both fit: still a pass
    ("1.9GB", TINY, 0, True),  # a tiny model fits either way: a pass, not a FAIL
    ("300MB", None, 1, False),  # packed does not fit: the claim fails
])
def test_standalone_and_leg_give_one_verdict(gemma: Path, tmp_path: Path, budget: str,
                                             model: Path | None, code: int, fp32_fits: bool,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = model or gemma
    assert main(["footprint", str(path), "--budget", budget, "--json"]) == code
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"]["exit_code"] == code
    assert doc["policies"]["dequant-fp32"]["fits"] is fp32_fits
    leg_code, rows = _leg(["--budget", budget, "--model", str(path)], tmp_path / "r", capsys)
    assert leg_code == code
    assert rows["packed"] == ("pass" if code == 0 else "FAIL")
    assert rows["dequant-fp32"] == ("pass" if fp32_fits else "known-failure")


@pytest.mark.parametrize("budget, reserve", [("1MB", "2GB"), ("2GB", "2GB"), ("0", "0")])
def test_budget_that_leaves_nothing_is_refused(gemma: Path, tmp_path: Path, budget: str,
                                               reserve: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["footprint", str(gemma)], ["run", "--only", "footprint", "--out",
                                             str(tmp_path / "r")]):
        assert main([*argv, "--budget", budget, "--reserve", reserve]) == 2
        captured = capsys.readouterr()
        assert "leaves" in captured.err and "nothing" in captured.err
        assert "Traceback" not in captured.err and "exceeds" not in captured.out
    assert not (tmp_path / "r").exists()


def test_reserve_is_taken_from_the_budget(gemma: Path, capsys: pytest.CaptureFixture[str]):
    peak = read_footprint(gemma).peak("packed")
    assert main(["footprint", str(gemma), "--budget", str(peak), "--reserve", "0"]) == 0
    assert main(["footprint", str(gemma), "--budget", str(peak), "--reserve", "1"]) == 1
    out = capsys.readouterr().out
    assert "verdict: FAIL: packed does NOT fit budget" in out and "- reserve 1 B" in out
