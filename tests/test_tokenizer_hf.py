"""The Hugging Face export encodes exactly like SentencePiece, and metrics count right."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm

from conftest import stdlib_texts
from lmforge.errors import ArtifactError
from lmforge.tokenizer.spm import hf_tokenizer
from lmforge.tokenizer.hf_export import build_tokenizers_pipeline, check_exportable, load_proto
from lmforge.tokenizer.metrics import TextStats, measure, measure_by_source

VARIED = [
    "Hello world",
    "naïve café, Ærøskøbing, Straße, Ελληνικά, русский, 日本語の文, 한국어",
    "emoji 😀👍🏽 and flags 🇫🇷 fall back to bytes",
    "  leading spaces", "trailing spaces   ", "runs    of     spaces", " ",
    "line one\nline two\n\n\nafter blank lines\n", "\ttabs\tand\r\nCRLF",
    "digits 0123456789, 3.14159, 1,000,000 and 2026-11-26",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "inline<|im_start|>markers<|im_end|>without spaces",
    "literal <0x41> byte-piece spelling and <|im_startX|> near-misses",
    "", "\n", "a", "ﬁ ligature and ① circled",
]


@pytest.fixture(scope="module")
def pair(tiny_tokenizer):
    return spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "spm.model")), hf_tokenizer(tiny_tokenizer)


def fuzz_strings(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(stdlib_texts(40)).split(" ")
    alphabet = list("abcdefghijklmnopqrstuvwxyz ETAOIN.,;:!?'\"()-0123456789\n\t") + [
        "é", "ß", "中", "😀", "<|im_start|>", "<|im_end|>", "  ", "\u00a0", "ﬁ", "\u0301"]
    out = []
    for i in range(count):
        if i % 2:
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))))
        else:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))))
    return out


def test_auto_tokenizer_matches_sentencepiece_on_varied_text(pair):
    sp, hf = pair
    for text in VARIED:
        assert hf.encode(text) == sp.encode(text), text
        assert hf.decode(hf.encode(text)) == sp.decode(sp.encode(text)) == text


def test_auto_tokenizer_matches_sentencepiece_on_fuzzed_text(pair):
    sp, hf = pair
    texts = fuzz_strings(0, 1500)
    assert [hf.encode(t) for t in texts] == sp.encode(texts)


def test_auto_tokenizer_matches_on_whole_documents(pair, tiny_texts):
    sp, hf = pair
    document = "\n\n".join(tiny_texts[:60])
    assert hf.encode(document) == sp.encode(document)


def test_no_bos_or_eos_is_added_and_special_ids_are_fixed(pair):
    _, hf = pair
    ids = hf("plain text")["input_ids"]
    assert 1 not in ids and 2 not in ids
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2, 3)
    assert hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [4, 5]
    assert len(hf) == 400


def test_chat_template_renders_chatml_with_the_same_ids(pair):
    sp, hf = pair
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    text = hf.apply_chat_template(messages, tokenize=False)
    # One template everywhere: the SFT training rendering, <s> first.
    assert text == "<s><|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"
    ids = hf.apply_chat_template(messages[:1], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids == [1] + sp.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert hf.decode(ids, skip_special_tokens=True) == "user\nWhat is 2+2?\nassistant\n"


def test_export_refuses_settings_it_cannot_reproduce(tmp_path):
    from lmforge.tokenizer.format import spm_special_token_args

    spm.SentencePieceTrainer.train(sentence_iterator=iter(stdlib_texts(80)), model_prefix=str(tmp_path / "m"),
                                   vocab_size=350, model_type="unigram", byte_fallback=True, minloglevel=2,
                                   **spm_special_token_args())
    with pytest.raises(ArtifactError, match="'nmt_nfkc', not 'identity'.*add_dummy_prefix is on.*not BPE"):
        check_exportable(load_proto(tmp_path / "m.model"))
    with pytest.raises(ArtifactError):
        build_tokenizers_pipeline(tmp_path / "m.model")


# ---------------------------------------------------------------- metrics

def test_metrics_count_characters_tokens_words_and_fallback(pair):
    sp, _ = pair
    texts = ["the quick fox\njumps", "emoji 😀 here"]
    stats = measure(sp, texts)
    tokens = sum(len(ids) for ids in sp.encode(texts))
    assert (stats.passages, stats.characters, stats.words, stats.tokens) == (2, 31, 7, tokens)
    assert stats.layout_characters == 1           # the newline, a byte piece by design
    assert stats.uncovered_characters == 1        # the emoji: four byte pieces, one character
    assert stats.coverage == pytest.approx(100 * (1 - 1 / 30))
    assert stats.compression == pytest.approx(31 / tokens) and stats.fertility == pytest.approx(tokens / 7)


def test_metrics_per_source_sum_to_overall(pair):
    sp, _ = pair
    result = measure_by_source(sp, {"a": ["alpha beta"], "b": ["gamma", "delta 😀"]})
    assert list(result) == ["a", "b", "overall"]
    assert result["overall"].tokens == result["a"].tokens + result["b"].tokens
    assert result["overall"].passages == 3
    assert TextStats().compression is None and TextStats().coverage is None
