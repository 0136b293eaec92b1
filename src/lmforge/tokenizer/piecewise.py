"""Exact SentencePiece encoding of long texts in short pieces (faster, same ids).

SentencePiece's BPE encoder costs more per token the longer its input: on the real
documents of the packing bench, encoding each one whole costs about 1.6 times as much
CPU as encoding the same text cut into ~256-character pieces, and a 2.5M-character
Gutenberg book about 2.9 times as much (docs/BENCHMARKS.md). Cutting is exact only at
a point that no vocabulary piece can straddle, which this module proves from the model
itself:

- the model is BPE: every symbol it forms by merging is a vocabulary piece, so a
  boundary that no piece straddles is never crossed, and merges on either side of it
  happen in the same relative order whether or not the other side is present;
- normalisation is the identity, with no dummy prefix, no whitespace collapsing and
  whitespace escaped as a prefix "▁": the normalised text is the input with each space
  turned into "▁", character for character, so cutting the input cuts the normalised
  text at the same place;
- no piece holds a character other than "▁" directly followed by "▁" (lmforge's
  tokenizers are trained with whitespace as a word prefix, and whitespace-only pieces
  hold nothing else).

Under those conditions, the boundary between a character that is not a space (nor a
literal "▁") and a following space is never straddled, so encoding the pieces on either
side and concatenating their ids gives exactly the ids of the whole text. Models that
fail the proof (other normalisations, unigram, foreign vocabularies) are encoded whole.
"""

from __future__ import annotations

from itertools import chain

from lmforge.tokenizer.format import PIECE_BYTE, parse_model_proto, verbatim_bpe_problems

SPACE_SYMBOL = "\u2581"  # SentencePiece's "▁"
# Characters per piece: the gain flattens out below a few hundred (docs/BENCHMARKS.md).
DEFAULT_PIECE_CHARS = 256


def why_not_cuttable(proto) -> str | None:
    """None if cutting before a space that follows a non-space is exact for this ModelProto; else why not."""
    problems = verbatim_bpe_problems(proto)
    if not proto.normalizer_spec.escape_whitespaces:
        problems.append("whitespace is not escaped as '▁'")
    if problems:
        return "; ".join(problems)
    for piece in proto.pieces:
        if piece.type == PIECE_BYTE:
            continue
        text = piece.piece
        if " " in text or any(a != SPACE_SYMBOL and b == SPACE_SYMBOL for a, b in zip(text, text[1:])):
            return f"piece {text!r} spans a word boundary"
    return None


def cut(text: str, piece_chars: int) -> list[str]:
    """`text` in consecutive pieces of at least `piece_chars` characters, each cut before a neutral space.

    A neutral space is one whose previous character is neither a space nor a literal
    "▁" (both normalise to "▁", and whitespace-only pieces may join them). Texts with no
    such space past `piece_chars` stay whole.
    """
    if piece_chars <= 0 or len(text) <= piece_chars:
        return [text]
    pieces, start = [], 0
    while True:
        at = text.find(" ", start + piece_chars)
        while at > 0 and text[at - 1] in (" ", SPACE_SYMBOL):
            at = text.find(" ", at + 1)
        if at < 0:
            pieces.append(text[start:])
            return pieces
        pieces.append(text[start:at])
        start = at


class PiecewiseEncoder:
    """Encode many texts with one SentencePiece model, in pieces when that is proven exact."""

    def __init__(self, sp, piece_chars: int):
        """`sp`: a loaded SentencePieceProcessor; `piece_chars`: target piece length (0 = whole texts)."""
        self.sp = sp
        self.reason_whole = (why_not_cuttable(parse_model_proto(sp.serialized_model_proto())) if piece_chars > 0
                             else "piece_chars is 0")
        self.piece_chars = piece_chars if self.reason_whole is None else 0

    def encode_flat(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """(ids of every piece, in order; number of pieces of each text) for `texts`."""
        if not self.piece_chars:
            return self.sp.encode(texts, num_threads=1), [1] * len(texts)
        pieces: list[str] = []
        counts = []
        for text in texts:
            before = len(pieces)
            pieces.extend(cut(text, self.piece_chars))
            counts.append(len(pieces) - before)
        return self.sp.encode(pieces, num_threads=1), counts

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text, exactly as `sp.encode(texts)` gives them."""
        ids, counts = self.encode_flat(texts)
        out, at = [], 0
        for n in counts:
            out.append(ids[at] if n == 1 else list(chain.from_iterable(ids[at:at + n])))
            at += n
        return out
