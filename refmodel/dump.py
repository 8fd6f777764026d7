"""Activation dumps of the reference forward, named like llama.cpp's graph tensors.

Contract with the llama.cpp side of issue 14 (the comparison reads these files as is):

Layout of a dump directory DIR (written by `skoracle reference ... --dump DIR`):

- `DIR/meta.json`: {"model", "semantics", "load", "tokens" (the ids fed, one per step),
  "n_steps", "format": "skoracle-refdump-1"}.
- `DIR/step-NNN.npz` (NNN = 000, 001, ...): one file per decode step; step k feeds
  tokens[k] at position k (prompt tokens are fed one per step too; no batching). Each
  array is float32, C-contiguous, and its numpy shape is llama.cpp's ggml `ne` reversed,
  so the row-per-token axis comes first for every per-token tensor:
  `inp_scaled` (1, n_embd); `Qcur-L` (1, n_head, head_dim); `kq-L` (n_head, 1, n_kv);
  `result_output` (1, n_vocab).

Names are llama.cpp's `cb(cur, name, il)` names as its eval callback reports them
(`name-il` for il >= 0, bare `name` for il = -1), from src/models/gemma3.cpp and
src/llama-graph.cpp (build_qkv, build_attn_mha, build_ffn) of the llama.cpp vendored in
llama-cpp-python 0.3.36. Where llama.cpp names two tensors alike within a layer, the
n-th repeat carries `#n`: `Qcur-L` is the projection, `Qcur-L#1` the same after RoPE.
Per layer L, in compute order:

    attn_norm-L  Qcur-L  Kcur-L  Vcur-L  Qcur_normed-L  Kcur_normed-L  Qcur-L#1  Kcur-L#1
    kq-L  kq_soft_max-L  kqv_out-L  attn_post_norm-L  sa_out-L  ffn_norm-L
    ffn_up-L  ffn_gate-L  ffn_geglu-L  ffn_out-L  ffn_post_norm-L  l_out-L

framed by `inp_scaled` (first) and `result_norm`, `result_output` (last).
`kq-L` holds the raw scores of the keys the query may attend to after the query scaling
(llama.cpp scales Q by f_attention_scale before the product, kq_scale is 1), positions
max(0, pos-n_swa+1) .. pos on sliding-window layers and 0 .. pos on global layers, oldest
first; llama.cpp's padded, -inf-masked columns are absent (slice them off before
comparing). `kq_soft_max-L` is over the same columns. `Vcur-L` is the projection before
the KV cache (no fp16 rounding). `ffn_out-L` is ffn_down's output. `kqv_out-L` is the
attention output before attn_output (wo), shape (1, n_head*head_dim).
With flash attention on, llama.cpp has no kq/kq_soft_max: skip those names.
"""

FORMAT = "skoracle-refdump-1"
