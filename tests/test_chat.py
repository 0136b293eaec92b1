"""`lmforge chat` answers scripted input through a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import sys

import pexpect
import pytest

from lmforge.model.chat import Sampling, fit_history, generate_reply, load_chat_model


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


# ---------------------------------------------------------------- incremental decoding

MULTIBYTE = ["naïve café, déjà vu, Ærøskøbing", "中文字符和日本語のテキスト", "emoji 🙂🚀 and 👩‍💻 too",
             "mixed: Größe 東京 ✓ façade 🎉 end"]


@pytest.mark.parametrize("text", MULTIBYTE)
def test_incremental_decoding_of_multibyte_text_loses_nothing(loaded, text):
    """Token by token (byte-fallback pieces included), the shown text is always a prefix
    of the final text, never holds U+FFFD, and ends equal to the full decode."""
    from lmforge.model.chat import IncrementalDecoder

    _, tok = loaded
    ids = tok.encode(text)
    assert len(ids) > len(text) // 2           # the tiny tokenizer spells these in byte pieces
    decoder, shown = IncrementalDecoder(tok), ""
    for i in ids:
        shown += decoder.push([i])
        assert "\ufffd" not in shown and tok.decode(ids).startswith(shown)
    shown += decoder.flush()
    assert shown == tok.decode(ids) == text


def test_streamer_with_generate_style_tensors(loaded):
    """The streamer generate() drives: prompt first, then one token tensor per step."""
    import torch

    from lmforge.model.chat import _TextStreamer

    _, tok = loaded
    text = "你好 🙂 café"
    ids = tok.encode(text)
    pieces: list[str] = []
    streamer = _TextStreamer(tok, pieces.append, {tok.im_end_id})
    streamer.put(torch.tensor([[1, 2, 3]]))     # the prompt: not shown
    for i in [*ids, tok.im_end_id]:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_an_unfinished_character_is_flushed_at_the_end(loaded):
    from lmforge.model.chat import IncrementalDecoder

    _, tok = loaded
    ids = tok.encode("ok 中")
    decoder = IncrementalDecoder(tok)
    shown = decoder.push(ids[:-1])             # the last byte of 中 is missing
    assert shown == "ok " or shown == "ok"
    assert decoder.flush().endswith("\ufffd")  # generation ended mid-character: shown, not hidden


def test_commands_system_save_reset(tmp_path):
    import argparse
    import json

    from lmforge.model.chat import command

    args = argparse.Namespace(model_path="m")
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    history, said = command("/system Be brief.", history, args, Sampling())
    assert history[0] == {"role": "system", "content": "Be brief."} and len(history) == 3 and said == "(system message set)"
    assert command("/system", history, args, Sampling())[1] == "(system: Be brief.)"
    history, said = command(f"/save {tmp_path / 'c.json'}", history, args, Sampling())
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["messages"] == history and saved["sampling"]["temperature"] == 0.7
    assert said == f"(saved 2 message(s) to {tmp_path / 'c.json'})"
    assert "cannot save" in command(f"/save {tmp_path / 'no' / 'c.json'}", history, args, Sampling())[1]
    history, said = command("/reset", history, args, Sampling())
    assert history == [{"role": "system", "content": "Be brief."}]
    assert command("/quit", history, args, Sampling()) is None
    assert "unknown command /nope" in command("/nope", history, args, Sampling())[1]


def test_readline_history_and_save_over_a_pty(tiny_base_model, tmp_path):
    """Arrow-up recalls the previous line (no `^[[A` echoed), /save writes the conversation,
    and the history file survives the session."""
    import json
    import os

    history_file = tmp_path / "history"
    env = {**os.environ, "LMFORGE_CHAT_HISTORY": str(history_file)}
    child = pexpect.spawn(sys.executable, ["-m", "lmforge.cli", "chat", "--model_path", str(tiny_base_model),
                                           "--temperature", "0", "--max_new_tokens", "4", "--log-level", "WARNING"],
                          encoding="utf-8", timeout=60, env=env)
    try:
        child.expect_exact("user> ")
        child.sendline("/system You are terse.")
        child.expect_exact("(system message set)")
        child.expect_exact("user> ")
        child.sendline("What is a tuple?")
        child.expect_exact("user> ")
        child.send("\x1b[A")                       # arrow up: the previous line, "What is a tuple?"
        child.sendline("")
        child.expect_exact("assistant> ")
        child.expect_exact("user> ")
        assert "^[[A" not in child.before
        child.sendline(f"/save {tmp_path / 'conv.json'}")
        child.expect_exact("(saved 4 message(s)")
        child.expect_exact("user> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert saved[1]["content"] == saved[3]["content"] == "What is a tuple?"
    assert "What is a tuple?" in history_file.read_text()
