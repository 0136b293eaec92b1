"""Text cleaning, splitting, token counting and the built-in corpus."""

from __future__ import annotations

from collections import Counter

from lmforge.data.builtin_corpus import BUILTIN_CORPORA, stream_builtin
from lmforge.data.text_clean import (CleaningRules, TokenCounter, clean_record, dedup_key, estimate_tokens, normalize_text,
                                split_long_text, truncate_to_tokens)


def test_normalize_composes_unicode_and_removes_control_characters():
    decomposed = "Cafe\u0301\r\nna\u00efve\x00 text\x1b\ufeff\ud800  \n\n\n\nend"
    assert normalize_text(decomposed) == "Caf\u00e9\nna\u00efve text\n\nend"
    assert normalize_text("\ufb01ne", "NFKC") == "fine"  # ligature folded only under NFKC
    assert normalize_text("\ufb01ne", "NFC") == "\ufb01ne"
    assert normalize_text("keep\ttabs\n") == "keep\ttabs"


def test_dedup_key_ignores_whitespace_but_not_case():
    assert dedup_key("a  b\nc") == dedup_key(" a b c ")
    assert dedup_key("a b c") != dedup_key("A b c")


def test_estimator_is_ceil_chars_over_four():
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    counter = TokenCounter()
    assert counter("x" * 41) == 11 and not counter.exact
    assert counter.describe()["estimator"] == "chars/4"


def test_split_prefers_paragraphs_then_whitespace():
    paragraphs = ["word " * 30 + "end." for _ in range(6)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    pieces = split_long_text(text, 400)
    assert all(len(p) <= 400 for p in pieces)
    assert all(p.endswith("end.") for p in pieces)  # cut at paragraph breaks, not mid-paragraph
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())  # nothing lost
    assert split_long_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]  # no whitespace: hard cut


def test_truncate_lands_on_budget_at_a_word_boundary(tiny_tokenizer):
    from lmforge.tokenizer.spm import load_tokenizer

    text = "The quick brown fox jumps over the lazy dog. " * 40
    for counter in (TokenCounter(), TokenCounter(load_tokenizer(tiny_tokenizer))):
        cut = truncate_to_tokens(text, 100, counter)
        assert counter(cut) <= 100
        assert counter(cut) >= 90  # close to the budget, not far under it
        assert text.startswith(cut) and text[len(cut)] in " \n"
    assert truncate_to_tokens("short", 100, TokenCounter()) == "short"


def test_clean_record_counts_every_skip_reason():
    rules = CleaningRules(min_chars=10, max_document_chars=100, split_long_documents=False,
                          max_line_chars=60, max_record_chars=500)
    skips: Counter = Counter()
    records = [{"other": "x"}, {"text": None}, {"text": 42}, {"text": "   \x00 "}, {"text": "tiny"},
               {"text": "y" * 70}, {"text": ("word " * 10 + "\n") * 5}, {"text": "z" * 600},
               {"text": "A proper sentence of text."}]
    kept = [doc for r in records for doc in clean_record(r, "text", rules, skips)]
    assert kept == ["A proper sentence of text."]
    assert skips == Counter(missing_text_field=1, null_text=1, non_string_text=1, empty=1, too_short=1,
                            giant_line=1, too_long=1, giant_record=1)


def test_clean_record_splits_long_documents_when_asked():
    rules = CleaningRules(min_chars=20, max_document_chars=100, split_long_documents=True)
    text = ("A sentence that is long enough. " * 10).strip()
    pieces = clean_record({"body": text}, "body", rules, Counter())
    assert len(pieces) >= 3 and all(20 <= len(p) <= 100 for p in pieces)


def test_builtin_corpus_is_real_deterministic_text():
    first = list(stream_builtin("python_help_topics"))
    assert first == list(stream_builtin("python_help_topics"))
    assert len(first) > 20 and sum(len(r["text"]) for r in first) > 100_000
    assert any("assert" in r["text"] for r in first)
    docstrings = []
    for record in stream_builtin("python_docstrings"):
        docstrings.append(record)
        if len(docstrings) == 50:
            break
    assert len({r["id"] for r in docstrings}) == 50
    assert all(r["id"].startswith("docstrings:") for r in docstrings)
    assert set(BUILTIN_CORPORA) >= {"python_stdlib", "python_docstrings", "python_help_topics"}
