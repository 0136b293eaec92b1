"""The on-disk format of an lmforge tokenizer: file names, fixed special-token ids, and the
SentencePiece model proto (what makes a model "verbatim BPE", which the exact Hugging Face
export and piece-wise encoding rely on). No loading here, so every tokenizer module can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.artifacts import sha256_file
from lmforge.errors import ArtifactError

MODEL_FILE = "spm.model"
VOCAB_FILE = "spm.vocab"
CONFIG_FILE = "tokenizer_config.json"

# Fixed ids: the same in every lmforge tokenizer, so ChatML and padding never move.
SPECIAL_TOKENS = {
    "unk": ("<unk>", 0),
    "bos": ("<s>", 1),
    "eos": ("</s>", 2),
    "pad": ("<pad>", 3),
    "im_start": ("<|im_start|>", 4),
    "im_end": ("<|im_end|>", 5),
}


# SentencePiece piece and model types (sentencepiece_model.proto).
PIECE_NORMAL, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_BYTE = 1, 2, 3, 4, 6
MODEL_BPE = 2


def parse_model_proto(data: bytes):
    """The ModelProto of a serialized SentencePiece model (the bytes of spm.model)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    return proto


def verbatim_bpe_problems(proto) -> list[str]:
    """Why a model is not BPE over text kept as written (lmforge's kind); empty when it is.

    Both the exact Hugging Face export and exact piece-wise encoding rest on these
    settings: identity normalisation, no dummy prefix, no whitespace collapsing,
    whitespace as a word prefix, and BPE.
    """
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    problems = []
    if norm.precompiled_charsmap or norm.name not in ("identity", ""):
        problems.append(f"normalisation is {norm.name!r}, not 'identity'")
    if norm.add_dummy_prefix:
        problems.append("add_dummy_prefix is on (a dummy prefix before the first word)")
    if norm.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces is on")
    if trainer.model_type != MODEL_BPE:
        problems.append(f"model type {trainer.model_type} is not BPE")
    if trainer.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix is on")
    return problems


def spm_special_token_args() -> dict:
    """SentencePiece trainer arguments that place the special tokens above."""
    return {
        "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3,
        "unk_piece": "<unk>", "bos_piece": "<s>", "eos_piece": "</s>", "pad_piece": "<pad>",
        "user_defined_symbols": ["<|im_start|>", "<|im_end|>"],
    }


def tokenizer_sha256(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 of `spm.model` in a tokenizer directory."""
    path = Path(tokenizer_dir) / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"{tokenizer_dir} has no {MODEL_FILE}: not a tokenizer directory (run `lmforge tokenizer`)")
    return sha256_file(path)
