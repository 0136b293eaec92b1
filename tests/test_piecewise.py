"""Piece-wise SentencePiece encoding: exact ids, and only for models where that is proven."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm

from lmforge.tokenizer.piecewise import SPACE_SYMBOL, PiecewiseEncoder, cut, why_not_cuttable
from lmforge.tokenizer.hf_export import load_proto

# Characters that stress the cut rule: spaces and literal "▁" (both become "▁"), other
# whitespace that identity normalisation keeps, digits (split one per piece), accents,
# an emoji (byte fallback), and the ChatML markers (user-defined pieces).
ALPHABET = [" ", " ", " ", SPACE_SYMBOL, "\t", "\n", "\u00a0", "\u3000", "a", "e", "t", "s", "th", "in", "7",
            "é", "ß", "😀", "<|im_start|>", "<|im_end|>", ".", ","]


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 120))) for _ in range(count)]


@pytest.fixture(scope="module")
def sp(tiny_tokenizer):
    return spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "spm.model"))


def test_lmforge_tokenizer_is_proven_cuttable(tiny_tokenizer):
    assert why_not_cuttable(load_proto(tiny_tokenizer / "spm.model")) is None


@pytest.mark.parametrize("piece_chars", [1, 7, 256])
def test_pieces_give_the_ids_of_whole_texts(sp, tiny_texts, piece_chars):
    texts = tiny_texts + random_texts(400) + ["a" + " " * 40 + "b", f"x{SPACE_SYMBOL} y", "  lead", "trail  "]
    encoder = PiecewiseEncoder(sp, piece_chars)
    assert encoder.piece_chars == piece_chars
    assert encoder.encode(texts) == sp.encode(texts)


def test_a_naive_cut_would_be_caught(sp):
    """The exactness test above has teeth: cutting at every space (inside runs too) changes the ids."""
    assert any(p.startswith(SPACE_SYMBOL * 2) for p in map(sp.id_to_piece, range(sp.get_piece_size()))), \
        "the fixture tokenizer should hold whitespace-only pieces"
    texts = random_texts(400, seed=1)
    naive = [[i for part in _cut_at_every_space(t) for i in sp.encode(part)] for t in texts]
    assert naive != sp.encode(texts)


def _cut_at_every_space(text: str) -> list[str]:
    parts, start = [], 0
    for at in range(1, len(text)):
        if text[at] == " ":
            parts.append(text[start:at])
            start = at
    return parts + [text[start:]]


def test_cut_keeps_every_character_and_cuts_only_before_neutral_spaces():
    text = "alpha beta  gamma\u2581 delta\tepsilon zeta " * 20
    pieces = cut(text, 10)
    assert "".join(pieces) == text
    assert len(pieces) > 10
    for left, right in zip(pieces, pieces[1:]):
        assert right.startswith(" ") and left[-1] not in (" ", SPACE_SYMBOL)
        assert len(left) >= 10
    assert cut("short text", 100) == ["short text"]
    assert cut("no-spaces-at-all" * 50, 10) == ["no-spaces-at-all" * 50]
    assert cut(text, 0) == [text]


def _train(tmp_path, texts, **options) -> spm.SentencePieceProcessor:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / "m"), vocab_size=300,
                                   minloglevel=2, **options)
    return spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))


@pytest.mark.parametrize("options, reason", [
    ({"model_type": "bpe"}, "normalisation"),  # SentencePiece's defaults: nmt_nfkc, dummy prefix, collapsing
    ({"model_type": "unigram", "normalization_rule_name": "identity", "add_dummy_prefix": False,
      "remove_extra_whitespaces": False}, "not BPE"),
    ({"model_type": "bpe", "normalization_rule_name": "identity", "add_dummy_prefix": True,
      "remove_extra_whitespaces": False}, "dummy prefix"),
    ({"model_type": "bpe", "normalization_rule_name": "identity", "add_dummy_prefix": False,
      "remove_extra_whitespaces": False, "split_by_whitespace": False}, "spans a word boundary"),
])
def test_other_models_are_encoded_whole(tmp_path, tiny_texts, options, reason):
    sp = _train(tmp_path, [line for t in tiny_texts for line in t.splitlines() if line.strip()], **options)
    encoder = PiecewiseEncoder(sp, 64)
    assert encoder.piece_chars == 0 and reason in encoder.reason_whole
    texts = tiny_texts[:50]
    assert encoder.encode(texts) == sp.encode(texts)


def test_lmforge_tokenizer_encodes_in_exact_pieces(tiny_tokenizer, sp, tiny_texts):
    """Every stage's `Tokenizer.encode` (corpus token counts, ChatML, metrics) goes through the pieces."""
    from lmforge.tokenizer.piecewise import DEFAULT_PIECE_CHARS
    from lmforge.tokenizer.spm import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer)
    assert tok.pieces.piece_chars == DEFAULT_PIECE_CHARS
    book = "\n\n".join(tiny_texts)  # ~300K characters, about a thousand pieces
    assert tok.encode(book) == sp.encode(book)
    assert tok.encode(tiny_texts[:20]) == sp.encode(tiny_texts[:20])
