"""ChatML rendering and tokenization: masks cover exactly the assistant replies and their <|im_end|>."""

from __future__ import annotations

import pytest

from lmforge.data.chatml import encode_conversation, encode_prompt, format_chatml, spans, validate_messages
from lmforge.tokenizer.spm import load_tokenizer

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Eleven."},
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return load_tokenizer(tiny_tokenizer)


def test_format_matches_the_plan_template():
    text = format_chatml(CONV[1:3])
    assert text == "<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\nSeven is prime.<|im_end|>\n"
    assert format_chatml(CONV[1:2], add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_mask_covers_exactly_assistant_content_and_im_end(tok):
    enc = encode_conversation(tok, CONV)
    assert len(enc.ids) == len(enc.mask) and enc.ids[0] == tok.bos_id and enc.mask[0] == 0
    found = spans(enc.mask)
    assert len(found) == 2
    for (start, end), reply in zip(found, ["Seven is prime.", "Eleven."]):
        # the span is the reply's tokens followed by <|im_end|>, preceded by the assistant header
        assert enc.ids[start:end] == tok.encode(reply) + [tok.im_end_id]
        header = [tok.im_start_id, *tok.encode("assistant\n")]
        assert enc.ids[start - len(header):start] == header
    # no user/system token and no <|im_start|> is ever learned
    learned = [i for i, m in zip(enc.ids, enc.mask) if m]
    assert tok.im_start_id not in learned
    assert learned.count(tok.im_end_id) == 2
    assert tok.decode([i for i, m in zip(enc.ids, enc.mask) if m and i != tok.im_end_id]).replace(" ", "") \
        == "Sevenisprime.Eleven."


def test_truncation_keeps_whole_turns_or_drops(tok):
    full = encode_conversation(tok, CONV)
    # a turn ends after <|im_end|> and its newline
    first_reply_end = spans(full.mask)[0][1] + len(tok.encode("\n"))
    cut = encode_conversation(tok, CONV, max_length=len(full.ids) - 1)
    assert cut.truncated and cut.ids == full.ids[:first_reply_end] and cut.mask == full.mask[:first_reply_end]
    assert encode_conversation(tok, CONV, max_length=len(full.ids) - 1, truncation="drop") is None
    assert encode_conversation(tok, CONV, max_length=first_reply_end - 1) is None  # first exchange cannot fit
    assert not encode_conversation(tok, CONV, max_length=len(full.ids)).truncated


def test_prompt_is_the_training_prefix(tok):
    enc = encode_conversation(tok, CONV[:3])
    prompt = encode_prompt(tok, CONV[:2])
    assert enc.ids[:len(prompt)] == prompt
    assert enc.mask[len(prompt)] == 1 and enc.mask[len(prompt) - 1] == 0


def test_validate_messages_reasons():
    assert validate_messages(CONV) is None
    assert validate_messages([]) == "empty"
    assert validate_messages([{"role": "user", "content": "hi"}]) == "no_assistant_turn"
    assert validate_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]) == "empty_message"
    assert validate_messages([{"role": "bot", "content": "hi"}]) == "bad_role"
