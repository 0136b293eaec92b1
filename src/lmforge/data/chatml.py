"""ChatML: conversations as text and as token ids with a loss mask.

A conversation is a list of messages `{"role": "system"|"user"|"assistant", "content": str}`
rendered as

    <|im_start|>user
    {content}<|im_end|>
    <|im_start|>assistant
    {content}<|im_end|>

Token ids are built piece by piece rather than by tokenizing the rendered string, so
the boundaries of every message are exact:

    <s> | <|im_start|> enc(role + "\\n") enc(content) <|im_end|> enc("\\n") | ...

`<s>` opens each conversation as it opens each pretraining document. The loss mask is
1 on the content tokens of assistant messages and on their `<|im_end|>` (so the model
learns to stop), 0 everywhere else: BOS, headers, system and user turns, separators.
Prompts for generation are built with the same function, so training and inference
see the same ids.

Truncation policy (`truncation` argument), for conversations longer than `max_length`:
- "turns" (default): keep the longest prefix of whole turns that fits and ends with an
  assistant message; nothing is ever cut mid-message. If even the first exchange does
  not fit, the example is dropped (counted as too long).
- "drop": drop every conversation that does not fit whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TRUNCATION_POLICIES = ("turns", "drop")

# Hugging Face chat template (Jinja) equivalent to `format_chatml`, saved in model dirs.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Message = dict  # {"role": str, "content": str}


def format_chatml(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The ChatML text of a conversation (without the leading <s>)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def validate_messages(messages: Sequence[Message]) -> str | None:
    """Why a conversation is unusable for SFT, or None when it is fine."""
    if not messages:
        return "empty"
    for m in messages:
        if m.get("role") not in ROLES:
            return "bad_role"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return "empty_message"
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant_turn"
    return None


@dataclass
class Encoded:
    """Token ids of a conversation and its loss mask (same length)."""

    ids: list[int]
    mask: list[int]
    truncated: bool = False

    @property
    def assistant_tokens(self) -> int:
        return sum(self.mask)


def _message_pieces(tokenizer, message: Message) -> tuple[list[int], list[int]]:
    """Ids and mask of one message: header, content, <|im_end|>, newline."""
    header = [tokenizer.im_start_id, *tokenizer.encode(f"{message['role']}\n")]
    content = list(tokenizer.encode(message["content"]))
    tail = list(tokenizer.encode("\n"))
    learn = 1 if message["role"] == "assistant" else 0
    ids = header + content + [tokenizer.im_end_id] + tail
    mask = [0] * len(header) + [learn] * (len(content) + 1) + [0] * len(tail)
    return ids, mask


def encode_conversation(tokenizer, messages: Sequence[Message], max_length: int | None = None,
                        truncation: str = "turns") -> Encoded | None:
    """Ids and loss mask of a conversation; None when it cannot fit `max_length`.

    `tokenizer` is an `lmforge.tokenizer.spm.Tokenizer` (or anything with encode,
    bos_id, im_start_id, im_end_id).
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
    ids, mask = ([tokenizer.bos_id], [0]) if tokenizer.bos_id is not None else ([], [])  # external: may lack BOS
    # Lengths after each assistant message: the only places a conversation may be cut.
    cut_points: list[int] = []
    for message in messages:
        piece_ids, piece_mask = _message_pieces(tokenizer, message)
        ids += piece_ids
        mask += piece_mask
        if message["role"] == "assistant":
            cut_points.append(len(ids))
    if max_length is None or len(ids) <= max_length:
        return Encoded(ids, mask)
    if truncation == "drop":
        return None
    fitting = [n for n in cut_points if n <= max_length]
    if not fitting:
        return None
    n = fitting[-1]
    return Encoded(ids[:n], mask[:n], truncated=True)


def encode_prompt(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Ids for generation: the conversation so far plus the assistant header."""
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    for message in messages:
        ids += _message_pieces(tokenizer, message)[0]
    return ids + [tokenizer.im_start_id, *tokenizer.encode("assistant\n")]


def spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) runs of 1s in a mask (the assistant spans)."""
    result, start = [], None
    for i, bit in enumerate(list(mask) + [0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            result.append((start, i))
            start = None
    return result
