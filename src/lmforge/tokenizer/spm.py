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

from lmforge.artifacts import MANIFEST_NAME, check_tokenizer_lineage, load_manifest, read_json
from lmforge.errors import ArtifactError, LineageError
from lmforge.tokenizer.format import CONFIG_FILE, MODEL_FILE, SPECIAL_TOKENS, tokenizer_sha256
from lmforge.tokenizer.hf_export import load_hf_tokenizer
from lmforge.tokenizer.piecewise import DEFAULT_PIECE_CHARS, PiecewiseEncoder


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

    load_tokenizer(tokenizer_dir)  # refuses a model whose bytes disagree with tokenizer_config.json
    return load_hf_tokenizer(tokenizer_dir)


def load_tokenizer_artifact(tokenizer_dir: str | os.PathLike) -> Tokenizer:
    """A tokenizer used as a stage input: its manifest must exist (a directory without
    one is never read as an input), its files pass their sha256 (cached by
    size/mtime/inode), and the manifest names this very spm.model."""

    root = Path(tokenizer_dir)
    tok = load_tokenizer(root)  # first: a replaced spm.model gets its precise lineage message
    manifest = load_manifest(root, "tokenizer", verify="cached")
    check_tokenizer_lineage(tok.sha256, str(root / MODEL_FILE), manifest.get("tokenizer_sha256"),
                            str(root / "manifest.json"))
    return tok
