"""Perplexity arithmetic with lm-evaluation-harness semantics (its `wikitext` task).

A document is scored as a whole: its token list is cut into disjoint rolling windows
of the model's context length; the first window is preceded by one prefix token (BOS
when the tokenizer has one, else EOS) so that its first token is predicted too; each
later window is fed the `max_length` tokens that precede its last predicted token,
so every token after the first window is predicted with as much context as fits.
The log-likelihoods of all tokens of all documents are summed and normalised at the
corpus level (not averaged per document):

    word_perplexity = exp(-sum(loglik) / sum(words))
    byte_perplexity = exp(-sum(loglik) / sum(bytes))
    bits_per_byte   = -sum(loglik) / sum(bytes) / ln 2
    token_perplexity = exp(-sum(loglik) / sum(tokens))   (tokenizer-dependent; reference only)

Words and bytes are counted on the ORIGINAL page text, before detokenisation, while the
model scores the detokenised text: that is what the harness does, and it makes word
and byte perplexity comparable across tokenizers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The harness's WikiText detokeniser, as an ordered table of rewrites. WikiText stores
# text tokenised ("Teddy 's Story", "1 @,@ 000"); the model should see normal text.
# Each entry is (kind, pattern, replacement); order matters and is the harness's.
_WIKITEXT_REWRITES: tuple[tuple[str, str, str], ...] = (
    # contractions
    ("str", "s '", "s'"),
    # Kept for exactness: the harness's pattern matches the literal text "/' 7/" and
    # writes the literal "/'[0-9]/" (a quirk of the original code; it never fires on WikiText).
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    # number separators
    ("str", " @-@ ", "-"),
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    # punctuation
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " . ", ". "),
    ("str", " ! ", "! "),
    ("str", " ? ", "? "),
    ("str", " , ", ", "),
    # spaces just inside brackets and quotes
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    # headings, degrees, line edges, numbers, possessives
    ("str", "= = = =", "===="),
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " \u00b0 ", "\u00b0"),
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
)


def detokenize_wikitext(text: str) -> str:
    """WikiText's tokenised text back to ordinary text (the harness's rules, in order)."""
    for kind, pattern, replacement in _WIKITEXT_REWRITES:
        text = text.replace(pattern, replacement) if kind == "str" else re.sub(pattern, replacement, text)
    return text


def count_words(text: str) -> int:
    """Words as the harness counts them: pieces between runs of whitespace.

    A leading or trailing space yields an empty piece that is counted too; this is the
    harness's definition and keeps word perplexity comparable with published numbers.
    """
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """UTF-8 bytes of the text."""
    return len(text.encode("utf-8"))


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) pairs covering every token of `tokens` once.

    Window 1: context [prefix_token], continuation tokens[:max_length].
    Later windows predict up to `max_length` new tokens each; their context is the
    tokens just before, so that context + continuation minus its last token is exactly
    the `max_length` tokens fed to the model (fewer only at the document start).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_token], tokens[:first])]
    done = first
    while done < len(tokens):
        end = min(len(tokens), done + max_length)
        # The model input ends at end-1 and holds max_length tokens: start = end-1-max_length.
        start = max(0, end - 1 - max_length)
        windows.append((tokens[start:done], tokens[done:end]))
        done = end
    return windows


@dataclass
class CorpusLikelihood:
    """Corpus-level sums from which every perplexity figure derives."""

    loglikelihood: float = 0.0  # natural log, summed over all scored tokens
    tokens: int = 0
    words: int = 0
    bytes: int = 0
    documents: int = 0

    def add(self, loglikelihood: float, tokens: int, words: int, nbytes: int) -> None:
        self.loglikelihood += loglikelihood
        self.tokens += tokens
        self.words += words
        self.bytes += nbytes
        self.documents += 1

    def metrics(self) -> dict[str, float]:
        return perplexity_metrics(self.loglikelihood, words=self.words, nbytes=self.bytes, tokens=self.tokens)


def perplexity_metrics(loglikelihood: float, *, words: int, nbytes: int, tokens: int) -> dict[str, float]:
    """word_perplexity, byte_perplexity, bits_per_byte and token_perplexity from corpus sums."""
    if min(words, nbytes, tokens) <= 0:
        raise ValueError("perplexity needs at least one word, byte and token")
    return {
        "word_perplexity": _safe_exp(-loglikelihood / words),
        "byte_perplexity": _safe_exp(-loglikelihood / nbytes),
        "bits_per_byte": -loglikelihood / nbytes / math.log(2),
        "token_perplexity": _safe_exp(-loglikelihood / tokens),
    }


def _safe_exp(x: float) -> float:
    # A random model on a long text can overflow exp(); report infinity, not a crash.
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
