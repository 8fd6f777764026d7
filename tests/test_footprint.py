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
    assert main(["footprint", str(gemma), "--json", "--budget", "300MB"]) == 0
    assert json.loads(capsys.readouterr().out)["policies"]["packed"]["fits"] is False
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
