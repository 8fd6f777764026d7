"""The C peers, built from the pinned llama-cpp-python sdist (`build`, one build API):

- `cref`: ggml's scalar C reference (quantizers, dequantizers, CPU dot products), the
  judge of every bit-exact claim; `python3 -m harness.ggml.cref build`.
- `llamacpp`: real llama.cpp (libllama + ggml) as users run it on x86;
  `python3 -m harness.ggml.llamacpp build`.
- `llamaref`: llama.cpp's greedy decode in a worker process (`skoracle llama-ref`).
- `llamacmp`: the reference held to llama.cpp, step by step (used by tests and bench).
"""
