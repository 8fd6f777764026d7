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
from typing import Any

import gguf
import numpy as np

from ggufio.checked import open_gguf as checked_open
from oracle import dequantize, qtype
from refmodel.arch import ARCH, Gemma3HParams
from refmodel.errors import RefmodelError

LOADS = ("packed", "dequant-fp32")
EMBEDDING, OUTPUT = "token_embd.weight", "output.weight"
VOCABULARY = "tokenizer.ggml.tokens"
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


class LeanGGUFReader(gguf.GGUFReader):
    """gguf-py's reader, minus one numpy view per metadata array element.

    GGUFReader keeps every element of a metadata array as its own memmap view: for
    Gemma's 262144-token vocabulary (tokens, scores, types) that is ~720 MB of Python
    objects, more than the packed weights. Here a scalar array is one view (`contents()`
    works as before) and a string array one byte range, read by `string_array`; slices are
    plain ndarray views of the same memory map. Tensors and scalar keys are unchanged.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1,
             override_order: Any = None) -> np.ndarray:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self._plain = self.data.view(np.ndarray)
        count = int(count)
        arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None
                                               else override_order))

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple:
        if raw_type != gguf.GGUFValueType.ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        offs, n = orig_offs + 12, int(alen[0])
        sub = gguf.GGUFValueType(int(itype[0]))
        np_type = self.gguf_scalar_to_np.get(sub)
        if np_type is not None:
            values = self._get(offs, np_type, n)
            return 12 + int(values.nbytes), [itype, alen, values], [2], \
                [gguf.GGUFValueType.ARRAY, sub]
        if sub != gguf.GGUFValueType.STRING:
            return super()._get_field_parts(orig_offs, raw_type)
        mv, end = memoryview(self._plain), offs
        for _ in range(n):  # walk the length prefixes to find the array's end
            end += 8 + int.from_bytes(mv[end:end + 8], "little")
        blob = self._get(offs, np.uint8, end - offs)
        return end - orig_offs, [itype, alen, blob], [], [gguf.GGUFValueType.ARRAY, sub]


def string_array(r: gguf.GGUFReader, key: str) -> list[str] | None:
    """A metadata string array (None when absent), from either reader."""
    f = r.fields.get(key)
    if f is None:
        return None
    if f.data or not isinstance(r, LeanGGUFReader):
        return f.contents()
    blob, n = bytes(f.parts[-1]), int(f.parts[-2][0])  # parts: key, type, itype, n, blob
    out, at = [], 0
    for _ in range(n):
        size = int.from_bytes(blob[at:at + 8], "little")
        out.append(blob[at + 8:at + 8 + size].decode("utf-8"))
        at += 8 + size
    return out


def array_length(r: gguf.GGUFReader, key: str, path: str = "model") -> int | None:
    """How many items a metadata array holds (None when the key is absent), without
    decoding them."""
    f = r.fields.get(key)
    if f is None:
        return None
    if not f.types or f.types[0] != gguf.GGUFValueType.ARRAY:
        raise RefmodelError(f"{path}: {key} is a "
                           f"{f.types[0].name if f.types else '?'}, not an array")
    return int(f.parts[4][0])  # parts: key length, key, value type, item type, item count


def check_vocabulary(r: gguf.GGUFReader, rows: int, path: str) -> None:
    """The tokenizer's vocabulary must have exactly token_embd's `rows`, as llama.cpp's
    loader demands (it sizes token_embd from the vocabulary and refuses any other shape):
    a smaller vocabulary would let the decode emit ids no token stands for. RefmodelError
    (exit 2) naming the file, the key and both sizes."""
    n = array_length(r, VOCABULARY, path)
    if n is None:
        raise RefmodelError(f"{path}: missing metadata {VOCABULARY} (llama.cpp refuses a "
                           "model without a tokenizer vocabulary)")
    if n != rows:
        raise RefmodelError(f"{path}: {VOCABULARY} has {n} tokens but {EMBEDDING} has {rows} "
                           "rows (llama.cpp refuses a vocabulary that does not match the "
                           "embedding)")


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """The lean reader over a memory map of `path`, after ggufio.checked has checked every
    count and length in the file against its size (RefmodelError, exit 2, on a bad file)."""
    p = Path(path)
    if not p.is_file():
        raise RefmodelError(f"{p}: no such file")
    return checked_open(p, reader=LeanGGUFReader)[0]


def _matrix(path: str, t: gguf.ReaderTensor) -> Matrix:
    tname = gguf.GGMLQuantizationType(int(t.tensor_type)).name
    cols, rows = (int(v) for v in t.shape[:2]) if len(t.shape) > 1 else (int(t.shape[0]), 1)
    data = np.asarray(t.data)
    if tname not in ("F32",):
        try:
            qt = qtype(tname)
        except Exception:
            raise RefmodelError(f"{path}: tensor {t.name}: type {tname} is not modelled") \
                from None
        data = data.reshape(rows, qt.row_bytes(cols))
    return Matrix(t.name, tname, rows, cols, data)


class Weights:
    """Name -> Matrix for one Gemma-3 GGUF, checked against its hyper-parameters."""

    def __init__(self, path: str | Path, load: str = "packed") -> None:
        if load not in LOADS:
            raise RefmodelError(f"--load must be one of {', '.join(LOADS)}, got {load!r}")
        self.path, self.load = str(path), load
        self.reader = open_gguf(path)
        size = Path(path).stat().st_size
        self.tensors: dict[str, Matrix] = {}
        for t in self.reader.tensors:
            if int(t.data_offset) + int(t.n_bytes) > size:
                raise RefmodelError(f"{path}: truncated: tensor {t.name!r} runs past the end")
            self.tensors[t.name] = _matrix(self.path, t)
        arch = self.reader.fields.get("general.architecture")
        if arch is None or arch.contents() != ARCH:
            raise RefmodelError(f"{path}: general.architecture is "
                               f"{None if arch is None else arch.contents()!r}, the reference "
                               f"forward models {ARCH!r}")
        if EMBEDDING not in self.tensors:
            raise RefmodelError(f"{path}: missing tensor {EMBEDDING}")
        emb = self.tensors[EMBEDDING]
        self._check_vocabulary(emb.rows)
        self.hp = Gemma3HParams.read(self.reader, self.path, emb.rows)
        self._check()
        self.tied = OUTPUT not in self.tensors
        self.fp32: dict[str, np.ndarray] = {}
        if load == "dequant-fp32":
            self.fp32[EMBEDDING] = self._expand(emb)
            out = self.output()
            self.fp32[OUTPUT] = self._expand(out)  # tied or not: a second FP32 table
            self.fp32["output.T"] = np.ascontiguousarray(self.fp32[OUTPUT].T)

    def _check_vocabulary(self, rows: int) -> None:
        check_vocabulary(self.reader, rows, self.path)

    def first_non_finite(self, name: str) -> tuple[int, int, float] | None:
        """(row, column, value) of the first non-finite weight of tensor `name`
        (dequantized a bounded chunk of rows at a time), or None when all are finite."""
        m = self.tensors[name]
        step = max(1, EXPAND_ROWS * 64 // max(m.cols, 1))
        for start in range(0, m.rows, step):
            rows = m.data[start:start + step]
            with np.errstate(all="ignore"):
                w = (np.asarray(rows, np.float32).reshape(-1, m.cols) if m.type == "F32"
                     else dequantize(m.type, rows))
            bad = np.argwhere(~np.isfinite(w))
            if len(bad):
                r, c = (int(v) for v in bad[0])
                return r + start, c, float(w[r, c])
        return None

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
                raise RefmodelError(f"{self.path}: missing tensor {name}")
            if (m.rows, m.cols) != shape:
                raise RefmodelError(f"{self.path}: tensor {name} is [{m.rows}, {m.cols}], the "
                                   f"gemma3 metadata gives [{shape[0]}, {shape[1]}]")
            if shape[0] == 1 and m.type != "F32":
                raise RefmodelError(f"{self.path}: norm {name} is {m.type}, expected F32")

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
