"""Text cleaning for corpus documents: normalisation, filters, splitting, token counts.

Everything here is pure and deterministic, so the corpus stage can apply it record
by record while streaming. A record either becomes one or more clean documents or
is skipped with a reason that the caller counts (never silently dropped).

Token counting has two modes:
- before a tokenizer exists: an estimate of ceil(characters / 4), the usual ratio
  for English SentencePiece/BPE vocabularies of 32K (our 32K tokenizer measures
  about 4.1 characters per token on the plan's mix);
- with a trained tokenizer: the exact number of SentencePiece ids of the text
  (without the BOS/EOS that packing adds around each document).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable

CHARS_PER_TOKEN = 4
ESTIMATOR_NAME = "chars/4"

# C0/C1 control characters except tab and newline, lone surrogates (json.loads can
# produce them from "\ud800" escapes and they cannot be written as UTF-8), the BOM
# and non-characters. Carriage returns are folded into newlines before this runs.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufeff\ufffe\uffff]")
_MANY_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")

NORMALIZATION_FORMS = ("NFC", "NFKC", "none")


def normalize_text(text: str, form: str = "NFC") -> str:
    """Unicode-normalise, drop control characters, tidy line ends and blank runs."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    return text.strip()


def dedup_key(text: str) -> int:
    """64-bit hash of a document with whitespace runs collapsed.

    Exact dedup compares these keys, so memory grows with the number of
    documents (a Python int per document), never with their text.
    """
    collapsed = " ".join(text.split())
    return int.from_bytes(hashlib.blake2b(collapsed.encode("utf-8"), digest_size=8).digest(), "little")


def estimate_tokens(text: str) -> int:
    """The documented estimator: ceil(characters / 4), at least 1 for non-empty text."""
    return -(-len(text) // CHARS_PER_TOKEN)


def longest_line(text: str) -> int:
    return max((len(line) for line in text.split("\n")), default=0)


# ---------------------------------------------------------------- splitting

def split_long_text(text: str, max_chars: int) -> list[str]:
    """Cut `text` into pieces of at most `max_chars`, at the best boundary available.

    Boundaries, in order of preference: paragraph break, line break, sentence end,
    any whitespace; a hard cut only for a run without whitespace.
    """
    pieces: list[str] = []
    rest = text
    while len(rest) > max_chars:
        cut = _best_cut(rest, max_chars)
        head, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if head:
            pieces.append(head)
    if rest:
        pieces.append(rest)
    return pieces


def _best_cut(text: str, limit: int) -> int:
    window = text[:limit]
    floor = limit // 2  # never produce a piece shorter than half the limit when avoidable
    for sep in ("\n\n", "\n", ". ", " "):
        at = window.rfind(sep, floor)
        if at > 0:
            return at + len(sep)
    return limit


def truncate_to_tokens(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """The longest whitespace-bounded prefix of `text` with at most `max_tokens` tokens.

    Used for the last document of a source so the source lands on its budget.
    Binary search on the character length, then back off to a word boundary.
    """
    if max_tokens <= 0:
        return ""
    if count(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)  # invariant: prefix of length lo fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid
    prefix = text[:lo]
    space = max(prefix.rfind(" "), prefix.rfind("\n"))
    prefix = prefix[:space] if space > 0 else prefix
    return prefix.rstrip()


# ---------------------------------------------------------------- per-record cleaning

@dataclass
class CleaningRules:
    """The processing parameters that decide what a record becomes."""

    normalization: str = "NFC"
    min_chars: int = 50
    max_document_chars: int = 1_000_000
    split_long_documents: bool = True
    max_line_chars: int = 100_000
    max_record_chars: int = 50_000_000


def clean_record(record: dict, text_field: str, rules: CleaningRules, skips: Counter) -> list[str]:
    """Turn one source record into zero or more clean documents.

    Every record that yields nothing adds one to `skips[reason]`; pieces of a split
    document that are too short are counted as `too_short_piece`.
    """
    if text_field not in record:
        skips["missing_text_field"] += 1
        return []
    raw = record[text_field]
    if raw is None:
        skips["null_text"] += 1
        return []
    if not isinstance(raw, str):
        skips["non_string_text"] += 1
        return []
    if len(raw) > rules.max_record_chars:
        skips["giant_record"] += 1  # refuse before paying for normalising it
        return []
    text = normalize_text(raw, rules.normalization)
    if not text:
        skips["empty"] += 1
        return []
    if longest_line(text) > rules.max_line_chars:
        skips["giant_line"] += 1  # minified code, base64 blobs, tables flattened to one line
        return []
    if len(text) < rules.min_chars:
        skips["too_short"] += 1
        return []
    if len(text) <= rules.max_document_chars:
        return [text]
    if not rules.split_long_documents:
        skips["too_long"] += 1
        return []
    pieces = []
    for piece in split_long_text(text, rules.max_document_chars):
        if len(piece) >= rules.min_chars:
            pieces.append(piece)
        else:
            skips["too_short_piece"] += 1
    return pieces


# ---------------------------------------------------------------- token counters

class TokenCounter:
    """Counts tokens of a text, by the estimator or exactly with a tokenizer."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            return estimate_tokens(text)
        return len(self.tokenizer.encode(text))

    def describe(self) -> dict:
        """What the manifest records about how tokens were counted."""
        if self.tokenizer is None:
            return {"method": "estimate", "estimator": ESTIMATOR_NAME,
                    "note": "ceil(characters / 4); pass --tokenizer-dir for exact counts"}
        return {"method": "exact", "tokenizer_sha256": self.tokenizer.sha256,
                "tokenizer_dir": str(self.tokenizer.path), "note": "SentencePiece ids, without BOS/EOS"}

