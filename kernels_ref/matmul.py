"""y = x . W^T straight from packed blocks, and embedding rows gathered from a packed table.

Neither ever expands the whole matrix: `matmul_wt` walks bounded chunks of output rows,
`gather_rows` dequantizes only the distinct rows it is asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels_ref import chunks, semantics
from oracle import ROW_MAJOR, OracleError, dequantize, native, unpack
from oracle.cfloat import F32


def _activations(x: object, in_dim: int, fmt: str) -> tuple[np.ndarray, bool]:
    """x as float32 (batch, in_dim) and whether it was 1-D; OracleError on bad input."""
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise OracleError(f"{fmt}: x must be float32, got dtype {a.dtype}")
    if a.ndim not in (1, 2) or a.shape[-1] != in_dim:
        raise OracleError(f"{fmt}: x must have shape (in_dim,) or (batch, in_dim) with "
                          f"in_dim={in_dim}, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise OracleError(f"{fmt}: x must be finite, found {a[where]} at index {where}")
    return np.ascontiguousarray(a.reshape(-1, in_dim)), a.ndim == 1


def matmul_wt(x: np.ndarray, w_raw: object, qtype: str, out_dim: int, in_dim: int,
              order: str = ROW_MAJOR, semantics: str = "exact", *,
              chunk_elements: int = chunks.CHUNK_ELEMENTS, **opts: Any) -> np.ndarray:
    """x . W^T for a packed weight W [out_dim, in_dim], in the float order of `semantics`.

    x: float32 (in_dim,) or (batch, in_dim); batch may be 0 (an empty (0, out_dim) result).
    w_raw: the packed bytes (any uint8 shape, bytes or memoryview) in `order` ("row_major" =
    GGUF file order, "input_block_major" = SKaiNET's kernel order). Returns float32
    (out_dim,) for 1-D x, else (batch, out_dim).
    `semantics` is a key of SEMANTICS; `opts` are its parameters (e.g. fused_final=False,
    lanes=4, rounding="even"). Output rows are processed `chunk_elements // (in_dim*batch)`
    at a time, so extra memory stays bounded whatever out_dim is.
    """
    qt = chunks.packed_type(qtype)
    chunks.checked_order(order)
    flat = chunks.as_packed_bytes(w_raw, qt, out_dim, in_dim)
    out_dim, in_dim = int(out_dim), int(in_dim)
    sem = semantics_obj(semantics, **opts)
    sem.check_format(qt.name)
    xb, was_1d = _activations(x, in_dim, qt.name)
    if not xb.shape[0]:  # a batch of no rows: no outputs (the semantics need a row to run)
        return np.empty((0, out_dim), F32)
    prep = sem.prepare(qt.name, xb)
    y = np.empty((xb.shape[0], out_dim), F32)
    rows = chunks.rows_per_chunk(in_dim, xb.shape[0], chunk_elements)
    compiled = native_options(sem, qt.name, prep)
    if compiled is not None and order == ROW_MAJOR:
        # row-major chunks are views, and the compiled twin's own memory is a tile of rows:
        # one call for the whole matrix saves the per-call cost
        rows = out_dim
    for start, stop, raw_rows in chunks.iter_row_chunks(flat, qt, out_dim, in_dim, order, rows):
        got = None
        if compiled is not None:
            got = _native_chunk(sem, qt.name, xb, raw_rows, prep, compiled, start, out_dim)
        if got is None:
            got = _model_chunk(sem, qt.name, xb, raw_rows, prep, start, out_dim)
        y[:, start:stop] = got
    return y[0] if was_1d else y


def _model_chunk(sem: semantics.Semantics, fmt: str, xb: np.ndarray, raw_rows: np.ndarray,
                 prep: Any, start: int, out_dim: int) -> np.ndarray:
    """The NumPy definition of `sem` on one chunk of rows (the first is row `start`)."""
    parts = unpack(fmt, raw_rows) if sem.needs_parts else None
    sem.window = (start, out_dim)
    return sem.run(fmt, xb, raw_rows, parts, prep)


def native_options(sem: semantics.Semantics, fmt: str, prep: Any) -> dict | None:
    """The compiled twin's arguments for `sem` on `fmt`, or None where only the NumPy
    definition runs (ggml's order, a library that is not built, a disabled twin)."""
    if not native.available() or fmt not in native.FORMAT_IDS:
        return None
    kind = type(sem)
    if kind in (semantics.Exact, semantics.SkainetScalar):
        return {}
    if kind is semantics.SkainetPanama:
        return {"lanes": sem.opts["lanes"], "reduction": sem.opts["reduction"]}
    if kind is semantics.SkainetNeon:
        q8 = prep if fmt in sem.quantizes_activations else None
        return {"fused": sem.fused, "row_major": sem.opts["kernel_order"] == "rm", "q8": q8}
    return None


def _native_chunk(sem: semantics.Semantics, fmt: str, xb: np.ndarray, raw_rows: np.ndarray,
                  prep: Any, opts: dict, start: int, out_dim: int) -> np.ndarray | None:
    """One chunk through the compiled twin. SKaiNET's 4-lane Panama K-quant kernel treats
    the last row of the whole matrix differently (`SkainetPanama._array_end_terms`): that
    one row runs through the NumPy definition."""
    last = out_dim - 1 - start
    special = (type(sem) is semantics.SkainetPanama and fmt in ("Q4_K", "Q5_K")
               and sem._byte_load() > sem.opts["lanes"] and last < raw_rows.shape[0])
    body = raw_rows[:last] if special else raw_rows
    y = native.gemv(sem.name, fmt, xb, body, **opts) if body.shape[0] else \
        np.empty((xb.shape[0], 0), np.float32)
    if y is None or not special:
        return y
    tail = _model_chunk(sem, fmt, xb, raw_rows[last:], prep, out_dim - 1, out_dim)
    return np.concatenate([y, tail], axis=1)


def semantics_obj(name: str, **opts: Any) -> semantics.Semantics:
    """The semantics instance for `name` with options `opts` (OracleError if unknown)."""
    return semantics.make(name, **opts)


def gather_rows(table_raw: object, qtype: str, rows: int, cols: int, ids: object,
                scale: float | np.floating | None = None, order: str = ROW_MAJOR) -> np.ndarray:
    """Embedding lookup on a packed [rows, cols] table: float32 (*ids.shape, cols).

    Only the distinct requested rows are dequantized (each once), exactly as `dequantize`
    of the full table would give them; `scale` (e.g. Gemma's float32 sqrt(n_embd)) is then
    applied as one float32 multiply per element.
    """
    qt = chunks.packed_type(qtype)
    chunks.checked_order(order)
    flat = chunks.as_packed_bytes(table_raw, qt, rows, cols)
    rows, cols = int(rows), int(cols)
    idx = np.asarray(ids)
    if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
        raise OracleError(f"{qt.name}: ids must be integers, got dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= rows):
        bad = idx[(idx < 0) | (idx >= rows)].reshape(-1)[0]
        raise OracleError(f"{qt.name}: id {int(bad)} is out of range for a table of {rows} rows")
    uniq, inverse = np.unique(idx.reshape(-1), return_inverse=True)
    packed = np.empty((uniq.size, qt.row_bytes(cols)), np.uint8)
    for i, r in enumerate(uniq):
        packed[i] = chunks.row_chunk(flat, qt, rows, cols, order, int(r), int(r) + 1)[0]
    table = dequantize(qt.name, packed)
    if scale is not None:
        s = np.asarray(scale)
        if s.dtype != np.float32 and not isinstance(scale, float | int):
            raise OracleError(f"{qt.name}: scale must be a float32 (or Python float), "
                              f"got {s.dtype}")
        s32 = F32(scale)
        if not np.isfinite(s32):
            raise OracleError(f"{qt.name}: scale must be finite, got {scale!r}")
        with np.errstate(all="ignore"):
            table = table * s32
    return table[inverse].reshape(idx.shape + (cols,))
