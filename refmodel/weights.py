"""The model's weights: packed and memory-mapped, or loaded the way SKaiNET 0.30.0 did.

`packed`: every tensor stays a view into gguf-py's memory map of the file; nothing is
expanded (a matmul dequantizes at most one bounded chunk of rows at a time).
`dequant-fp32`: as SKaiNET 0.30.0's converter — token_embd expanded to an FP32 table, the
output projection expanded to a second FP32 table (a tied output is a second copy), plus
the transposed FP32 copy of the output that its `linearProject` materialized. The three
are really allocated, so the process's RSS shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from harness.errors import HarnessError
from oracle import dequantize, qtype
from refmodel.arch import Gemma3HParams

LOADS = ("packed", "dequant-fp32")
EMBEDDING, OUTPUT = "token_embd.weight", "output.weight"
LAYER_NORMS = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm",
               "post_ffw_norm")
LAYER_MATS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
#: rows per chunk when expanding a table to FP32 (bounds the transient of the expansion)
EXPAND_ROWS = 8192


@dataclass(frozen=True)
class Matrix:
    """A weight [rows, cols] as stored: packed bytes (rows, row_bytes) or float32."""

    name: str
    type: str
    rows: int
    cols: int
    data: np.ndarray


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """gguf-py's reader over a memory map of `path` (HarnessError on a bad file)."""
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"{p}: no such file")
    try:
        return gguf.GGUFReader(p, "r")
    except Exception as exc:  # a third-party parser on untrusted bytes: report, never trace
        raise HarnessError(f"{p}: not a readable GGUF file ({type(exc).__name__}: {exc})") \
            from None


def _matrix(path: str, t: gguf.ReaderTensor) -> Matrix:
    tname = gguf.GGMLQuantizationType(int(t.tensor_type)).name
    cols, rows = (int(v) for v in t.shape[:2]) if len(t.shape) > 1 else (int(t.shape[0]), 1)
    data = np.asarray(t.data)
    if tname not in ("F32",):
        try:
            qt = qtype(tname)
        except Exception:
            raise HarnessError(f"{path}: tensor {t.name}: type {tname} is not modelled") \
                from None
        data = data.reshape(rows, qt.row_bytes(cols))
    return Matrix(t.name, tname, rows, cols, data)


class Weights:
    """Name -> Matrix for one Gemma-3 GGUF, checked against its hyper-parameters."""

    def __init__(self, path: str | Path, load: str = "packed") -> None:
        if load not in LOADS:
            raise HarnessError(f"--load must be one of {', '.join(LOADS)}, got {load!r}")
        self.path, self.load = str(path), load
        self.reader = open_gguf(path)
        size = Path(path).stat().st_size
        self.tensors: dict[str, Matrix] = {}
        for t in self.reader.tensors:
            if int(t.data_offset) + int(t.n_bytes) > size:
                raise HarnessError(f"{path}: truncated: tensor {t.name!r} runs past the end")
            self.tensors[t.name] = _matrix(self.path, t)
        if EMBEDDING not in self.tensors:
            raise HarnessError(f"{path}: missing tensor {EMBEDDING}")
        emb = self.tensors[EMBEDDING]
        self.hp = Gemma3HParams.read(self.reader, self.path, emb.rows)
        self._check()
        self.tied = OUTPUT not in self.tensors
        self.fp32: dict[str, np.ndarray] = {}
        if load == "dequant-fp32":
            self.fp32[EMBEDDING] = self._expand(emb)
            out = self.output()
            self.fp32[OUTPUT] = self._expand(out)  # tied or not: a second FP32 table
            self.fp32["output.T"] = np.ascontiguousarray(self.fp32[OUTPUT].T)

    def _check(self) -> None:
        hp = self.hp
        q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        want = {EMBEDDING: (hp.n_vocab, hp.n_embd), "output_norm.weight": (1, hp.n_embd)}
        for i in range(hp.n_layer):
            b = f"blk.{i}."
            want.update({
                b + "attn_norm.weight": (1, hp.n_embd), b + "attn_q_norm.weight": (1, hp.head_dim),
                b + "attn_k_norm.weight": (1, hp.head_dim),
                b + "post_attention_norm.weight": (1, hp.n_embd),
                b + "ffn_norm.weight": (1, hp.n_embd), b + "post_ffw_norm.weight": (1, hp.n_embd),
                b + "attn_q.weight": (q, hp.n_embd), b + "attn_k.weight": (kv, hp.n_embd),
                b + "attn_v.weight": (kv, hp.n_embd), b + "attn_output.weight": (hp.n_embd, q),
                b + "ffn_gate.weight": (hp.n_ff, hp.n_embd),
                b + "ffn_up.weight": (hp.n_ff, hp.n_embd),
                b + "ffn_down.weight": (hp.n_embd, hp.n_ff),
            })
        if OUTPUT in self.tensors:
            want[OUTPUT] = (hp.n_vocab, hp.n_embd)
        for name, shape in want.items():
            m = self.tensors.get(name)
            if m is None:
                raise HarnessError(f"{self.path}: missing tensor {name}")
            if (m.rows, m.cols) != shape:
                raise HarnessError(f"{self.path}: tensor {name} is [{m.rows}, {m.cols}], the "
                                   f"gemma3 metadata gives [{shape[0]}, {shape[1]}]")
            if shape[0] == 1 and m.type != "F32":
                raise HarnessError(f"{self.path}: norm {name} is {m.type}, expected F32")

    @staticmethod
    def _expand(m: Matrix) -> np.ndarray:
        """The whole table as FP32, expanded a bounded chunk of rows at a time."""
        out = np.empty((m.rows, m.cols), np.float32)
        for start in range(0, m.rows, EXPAND_ROWS):
            stop = min(m.rows, start + EXPAND_ROWS)
            out[start:stop] = dequantize(m.type, m.data[start:stop])
        return out

    def output(self) -> Matrix:
        """The output projection (token_embd when tied)."""
        return self.tensors.get(OUTPUT, self.tensors[EMBEDDING])

    def norm(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name].data, np.float32).reshape(-1)

    def layer(self, i: int, short: str) -> Matrix:
        return self.tensors[f"blk.{i}.{short}.weight"]
