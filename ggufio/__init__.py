"""GGUF input and output below every other package: `ggufio.checked` checks every count and
length of a file before gguf-py reads it and writes only what SKaiNET's reader reads;
`ggufio.errors.GGUFError` is what it raises. It imports nothing of this project."""
