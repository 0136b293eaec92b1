"""`lmforge chat` answers scripted input through a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import sys

import pexpect
import pytest

from lmforge.chat import Sampling, fit_history, generate_reply, load_chat_model


@pytest.fixture(scope="module")
def loaded(tiny_base_model):
    return load_chat_model(tiny_base_model)


def test_generate_reply_streams_the_same_text(loaded):
    model, tok = loaded
    pieces: list[str] = []
    messages = [{"role": "user", "content": "Hello there"}]
    reply = generate_reply(model, tok, messages, Sampling(max_new_tokens=12, temperature=0), on_text=pieces.append)
    assert len(reply.ids) <= 12 and tok.im_end_id not in reply.ids
    assert "".join(pieces) == reply.text
    again = generate_reply(model, tok, messages, Sampling(max_new_tokens=12, temperature=0))
    assert again.ids == reply.ids  # greedy is deterministic


def test_fit_history_drops_oldest_turns_keeps_system(loaded):
    _, tok = loaded
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        history += [{"role": "user", "content": f"question number {i} " * 5},
                    {"role": "assistant", "content": f"answer {i} " * 5}]
    history.append({"role": "user", "content": "last"})
    kept = fit_history(tok, history, budget=120)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last"
    assert len(kept) < len(history) and kept[1]["role"] == "user"


def test_chat_session_over_a_pty(tiny_base_model, loaded):
    model, tok = loaded
    expected = generate_reply(model, tok, [{"role": "user", "content": "What is a list?"}],
                              Sampling(max_new_tokens=8, temperature=0, repetition_penalty=1.0))
    child = pexpect.spawn(sys.executable, ["-m", "lmforge.cli", "chat", "--model_path", str(tiny_base_model),
                                           "--temperature", "0", "--max_new_tokens", "8",
                                           "--repetition_penalty", "1.0", "--log-level", "WARNING"],
                          encoding="utf-8", timeout=60)
    try:
        child.expect_exact("user> ")
        child.sendline("What is a list?")
        child.expect_exact("assistant> ")
        child.expect_exact("user> ")
        answer = child.before.replace("\r\n", "\n").rstrip("\n")
        assert answer.removesuffix(" [length limit]") == expected.text
        child.sendline("/reset")
        child.expect_exact("(conversation reset)")
        child.expect_exact("user> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
