"""Text to token ids with the GGUF's own vocabulary, through SentencePiece.

Gemma's GGUF vocabulary is SentencePiece's (`tokenizer.ggml.model` "llama": llama.cpp's
SPM tokenizer, a score-ordered BPE with byte fallback). The pieces, scores and token types
stored in the file are turned into a SentencePiece ModelProto (BPE, byte fallback when the
vocabulary has <0xNN> pieces, identity normalization with whitespace escaped to U+2581,
dummy prefix as `tokenizer.ggml.add_space_prefix` says) and encoded by the sentencepiece
library; a BOS id is prepended when `tokenizer.ggml.add_bos_token` says so.
"""

from __future__ import annotations

import gguf

from refmodel.errors import RefmodelError
from refmodel.weights import string_array


def _field(r: gguf.GGUFReader, key: str, default: object = None) -> object:
    f = r.fields.get(key)
    return default if f is None else f.contents()


def encode(r: gguf.GGUFReader, text: str, path: str = "model") -> list[int]:
    """`text` as token ids of the GGUF behind reader `r` (BOS first when the file asks)."""
    try:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:
        raise RefmodelError("--prompt needs the sentencepiece package (pip install "
                           "sentencepiece protobuf; scripts/setup.sh installs it)") from None
    model = _field(r, "tokenizer.ggml.model")
    if model != "llama":
        raise RefmodelError(f"{path}: tokenizer.ggml.model is {model!r}; --prompt handles "
                           "SentencePiece ('llama') vocabularies; pass --tokens instead")
    tokens = string_array(r, "tokenizer.ggml.tokens")
    scores = _field(r, "tokenizer.ggml.scores")
    types = _field(r, "tokenizer.ggml.token_type")
    if not tokens or scores is None or types is None or not (
            len(tokens) == len(scores) == len(types)):
        raise RefmodelError(f"{path}: tokenizer.ggml.tokens/scores/token_type missing or of "
                           "different lengths")
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = any(int(t) == gguf.TokenType.BYTE for t in types)
    unk = int(_field(r, "tokenizer.ggml.unknown_token_id", 0))
    proto.trainer_spec.unk_id = unk
    for key, attr in (("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")):
        setattr(proto.trainer_spec, attr, int(_field(r, f"tokenizer.ggml.{key}_token_id", -1)))
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(_field(r, "tokenizer.ggml.add_space_prefix",
                                                         True))
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        p = proto.pieces.add()
        p.piece, p.score = str(piece), float(score)
        kind = int(kind)
        # gguf TokenType and SentencePiece's Type share their numbering (NORMAL 1 .. BYTE 6)
        p.type = pb.ModelProto.SentencePiece.UNKNOWN if i == unk else (
            kind if kind in (1, 3, 4, 5, 6) else 1)
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto.SerializeToString())
    except Exception as exc:
        raise RefmodelError(f"{path}: sentencepiece rejects the vocabulary ({exc})") from None
    ids = list(sp.EncodeAsIds(text))
    if _field(r, "tokenizer.ggml.add_bos_token", True):
        ids = [int(_field(r, "tokenizer.ggml.bos_token_id", 2))] + ids
    return ids
