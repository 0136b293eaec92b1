"""Loading a trained lmforge tokenizer, with its sha256 checked.

A tokenizer directory holds `spm.model` and `tokenizer_config.json`, whose
`sha256_hash` is the sha256 of the `spm.model` bytes: the identity that every later
artifact records as `tokenizer_sha256`. Loading fails if the two disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lmforge.artifacts import read_json, sha256_file
from lmforge.errors import ArtifactError, LineageError

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


@dataclass
class Tokenizer:
    """A SentencePiece model plus lmforge's special-token ids and identity."""

    path: Path
    sha256: str
    config: dict
    sp: object  # sentencepiece.SentencePieceProcessor

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def token_id(self, name: str) -> int:
        return SPECIAL_TOKENS[name][1]

    @property
    def bos_id(self) -> int:
        return self.token_id("bos")

    @property
    def eos_id(self) -> int:
        return self.token_id("eos")

    @property
    def pad_id(self) -> int:
        return self.token_id("pad")

    @property
    def im_start_id(self) -> int:
        return self.token_id("im_start")

    @property
    def im_end_id(self) -> int:
        return self.token_id("im_end")

    @cached_property
    def pieces(self):
        """The encoder behind `encode`: SentencePiece's ids, computed in exact short pieces when proven."""
        from lmforge.tokenizer.piecewise import DEFAULT_PIECE_CHARS, PiecewiseEncoder

        return PiecewiseEncoder(self.sp, DEFAULT_PIECE_CHARS)

    def encode(self, text: str | list[str]):
        """Token ids of one text, or a list of id lists for a batch (no BOS/EOS added)."""
        return self.pieces.encode(text) if isinstance(text, list) else self.pieces.encode([text])[0]

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def load_tokenizer(tokenizer_dir: str | os.PathLike) -> Tokenizer:
    """Load `spm.model`, checking its bytes against `tokenizer_config.json`'s sha256_hash."""
    import sentencepiece as spm

    root = Path(tokenizer_dir)
    digest = tokenizer_sha256(root)
    config = read_json(root / CONFIG_FILE, "tokenizer config")
    recorded = config.get("sha256_hash")
    if recorded != digest:
        raise LineageError(
            f"{root / MODEL_FILE} has sha256 {digest} but {root / CONFIG_FILE} records {recorded}: "
            "the model file was replaced or corrupted after training"
        )
    sp = spm.SentencePieceProcessor(model_file=str(root / MODEL_FILE))
    for name, (piece, expected_id) in SPECIAL_TOKENS.items():
        if sp.piece_to_id(piece) != expected_id:
            raise ArtifactError(f"{root / MODEL_FILE}: special token {piece} has id {sp.piece_to_id(piece)}, lmforge expects {expected_id}")
    return Tokenizer(path=root, sha256=digest, config=config, sp=sp)


def copy_tokenizer_files(tokenizer_dir: str | os.PathLike, dest_dir: str | os.PathLike) -> list[str]:
    """Copy a tokenizer's files (not its manifest) into a model directory, so that
    `AutoTokenizer.from_pretrained(model_dir)` works there. Returns the copied names."""
    import shutil

    from lmforge.artifacts import MANIFEST_NAME

    src, dest = Path(tokenizer_dir), Path(dest_dir)
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith("."):
            shutil.copy2(path, dest / path.name)
            copied.append(path.name)
    return copied


def hf_tokenizer(tokenizer_dir: str | os.PathLike):
    """The directory's Hugging Face tokenizer (`AutoTokenizer.from_pretrained`), with the
    same sha256 check as `load_tokenizer`. It encodes exactly like `spm.model` and adds
    no BOS/EOS on encode (see lmforge.tokenizer.hf_export)."""
    from lmforge.tokenizer.hf_export import load_hf_tokenizer

    load_tokenizer(tokenizer_dir)  # refuses a model whose bytes disagree with tokenizer_config.json
    return load_hf_tokenizer(tokenizer_dir)


def load_tokenizer_artifact(tokenizer_dir: str | os.PathLike) -> Tokenizer:
    """A tokenizer used as a stage input: its manifest must exist (a directory without
    one is never read as an input), its files pass their sha256 (cached by
    size/mtime/inode), and the manifest names this very spm.model."""
    from lmforge.artifacts import check_tokenizer_lineage, load_manifest

    root = Path(tokenizer_dir)
    tok = load_tokenizer(root)  # first: a replaced spm.model gets its precise lineage message
    manifest = load_manifest(root, "tokenizer", verify="cached")
    check_tokenizer_lineage(tok.sha256, str(root / MODEL_FILE), manifest.get("tokenizer_sha256"),
                            str(root / "manifest.json"))
    return tok
