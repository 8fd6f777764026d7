"""A whole-model reference: the Gemma-3 text forward from a GGUF's packed weights.

    m = Gemma3Reference("model.gguf", semantics="exact", load="packed")
    r = m.decode([2, 105], n=32)          # greedy ids, logits, top-2 margins
    m.forward(token, pos, dump=callback)  # one step, every tensor named like llama.cpp's

See refmodel.gemma3 (the graph), refmodel.ops (float orders), refmodel.arch (constants),
refmodel.dump (the activation dump format).
"""

__all__ = ["SEMANTICS_NAMES", "DecodeResult", "Gemma3Reference", "describe_semantics",
           "semantics_options"]


def __getattr__(name: str) -> object:
    """The model's names, imported on first use: `refmodel.errors` alone stays light."""
    if name in __all__:
        from refmodel import gemma3

        return getattr(gemma3, name)
    raise AttributeError(f"module 'refmodel' has no attribute {name!r}")
