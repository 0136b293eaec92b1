"""Hugging Face export of an lmforge SentencePiece model.

`AutoTokenizer.from_pretrained(tokenizer_dir)` must encode exactly like
`sentencepiece` does, so that evaluation (lm-evaluation-harness), serving (vLLM) and
chat see the very ids the model was trained on. Rather than rely on transformers'
generic converters (whose settings vary across versions), the `tokenizers` pipeline is
built here from the model's own protobuf, for the settings lmforge trains with:

- identity normalization, no dummy prefix and no whitespace collapsing: SentencePiece
  then only escapes each space as "▁", which a `Replace` normalizer reproduces chunk
  by chunk, so splitting around special tokens cannot change the result. (With NFKC,
  the `tokenizers` Precompiled normalizer was seen to drop a combining mark after a
  no-break space, so only identity is exported);
- BPE merges rebuilt from the piece scores: SentencePiece merges the adjacent pair
  whose union has the highest score; listing every (left, right) split of every piece,
  ranked by that piece's score, makes the `tokenizers` BPE pick the same pair;
- byte fallback for characters outside the vocabulary (emoji, rare scripts);
- `<|im_start|>` / `<|im_end|>` (SentencePiece user-defined symbols, always emitted
  whole) and `<s>`, `</s>`, `<pad>`, `<unk>` as added tokens.

One documented difference remains: like every Hugging Face tokenizer, the exported one
maps the literal text "<s>" (or "</s>", "<pad>", "<unk>") to the special id, where
SentencePiece spells it out character by character. lmforge never puts those strings
in text; it adds BOS/EOS as ids.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lmforge.artifacts import atomic_path
from lmforge.data.chatml import CHAT_TEMPLATE
from lmforge.errors import ArtifactError
from lmforge.tokenizer.format import (
    MODEL_FILE,
    PIECE_CONTROL,
    PIECE_NORMAL,
    PIECE_UNKNOWN,
    PIECE_USER_DEFINED,
    SPECIAL_TOKENS,
    parse_model_proto,
    verbatim_bpe_problems,
)


def load_proto(model_path: str | os.PathLike):
    """The ModelProto of a SentencePiece model file."""
    return parse_model_proto(Path(model_path).read_bytes())


def check_exportable(proto) -> None:
    """Refuse settings whose SentencePiece behaviour the exported pipeline would not match."""
    problems = verbatim_bpe_problems(proto)
    if problems:
        raise ArtifactError("cannot export this SentencePiece model to Hugging Face exactly: " + "; ".join(problems))


def bpe_merges(proto) -> list[tuple[str, str]]:
    """Every (left, right) split of every normal piece, best-scored piece first."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == PIECE_NORMAL}
    ranked = []
    for piece, (score, index) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, index, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def build_tokenizers_pipeline(model_path: str | os.PathLike):
    """A `tokenizers.Tokenizer` that encodes like the SentencePiece model at `model_path`."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    proto = load_proto(model_path)
    check_exportable(proto)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    model = BPE(vocab=vocab, merges=bpe_merges(proto), unk_token=proto.trainer_spec.unk_piece,
                fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback, dropout=None)
    tokenizer = Tokenizer(model)
    steps = []
    if proto.normalizer_spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    # Control and user-defined pieces are never merged: match them whole, before the model.
    added = [AddedToken(p.piece, special=True, normalized=False)
             for p in proto.pieces if p.type in (PIECE_CONTROL, PIECE_USER_DEFINED, PIECE_UNKNOWN)]
    tokenizer.add_special_tokens(added)
    return tokenizer


def hf_tokenizer_config_keys(model_max_length: int) -> dict:
    """The keys of tokenizer_config.json that Hugging Face reads."""
    names = {name: piece for name, (piece, _) in SPECIAL_TOKENS.items()}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": names["bos"],
        "eos_token": names["eos"],
        "unk_token": names["unk"],
        "pad_token": names["pad"],
        "additional_special_tokens": [names["im_start"], names["im_end"]],
        # Documents are packed as <s> ... </s> by lmforge itself; the harness adds BOS on its own.
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
        # The one ChatML template (BOS included), the SFT training rendering: lmforge.data.chatml.
        "chat_template": CHAT_TEMPLATE,
    }


def export_hf_files(tokenizer_dir: str | os.PathLike, model_max_length: int) -> tuple[list[str], dict]:
    """Write tokenizer.json (and any other file transformers saves) into `tokenizer_dir`.

    Returns the written file names and the Hugging Face keys that belong in
    tokenizer_config.json (the caller merges them with lmforge's own keys and writes it).
    """
    from transformers import PreTrainedTokenizerFast

    root = Path(tokenizer_dir)
    keys = hf_tokenizer_config_keys(model_max_length)
    pipeline = build_tokenizers_pipeline(root / MODEL_FILE)
    init = {k: v for k, v in keys.items() if k not in ("tokenizer_class",)}
    hf = PreTrainedTokenizerFast(tokenizer_object=pipeline, **init)
    written = []
    with tempfile.TemporaryDirectory(dir=root, prefix=".hf-export-") as tmp:
        hf.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            # tokenizer_config.json is lmforge's to write; the chat template lives in it.
            if path.name in ("tokenizer_config.json", "chat_template.jinja"):
                continue
            with atomic_path(root / path.name) as dest:
                os.replace(path, dest)
            written.append(path.name)
    if "tokenizer.json" not in written:
        raise ArtifactError(f"transformers did not write tokenizer.json into {root}")
    return written, keys


def load_hf_tokenizer(tokenizer_dir: str | os.PathLike):
    """`AutoTokenizer.from_pretrained(dir)`, as evaluation and chat load it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
