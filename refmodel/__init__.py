"""A whole-model reference: the Gemma-3 text forward from a GGUF's packed weights.

    m = Gemma3Reference("model.gguf", semantics="exact", load="packed")
    r = m.decode([2, 105], n=32)          # greedy ids, logits, top-2 margins
    m.forward(token, pos, dump=callback)  # one step, every tensor named like llama.cpp's

See refmodel.gemma3 (the graph), refmodel.ops (float orders), refmodel.arch (constants),
refmodel.dump (the activation dump format).
"""

from refmodel.gemma3 import (
    SEMANTICS_NAMES,
    DecodeResult,
    Gemma3Reference,
    describe_semantics,
    semantics_options,
)

__all__ = ["SEMANTICS_NAMES", "DecodeResult", "Gemma3Reference", "describe_semantics",
           "semantics_options"]
