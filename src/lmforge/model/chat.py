"""Chat with a model in the terminal, in ChatML, with tokens streamed as they come.

Type a message and press Enter; arrow keys edit the line and recall earlier ones
(readline; the history persists in $LMFORGE_CHAT_HISTORY, default
~/.lmforge_chat_history). Commands:

  /system TEXT   set the system message (kept at the head of the conversation)
  /system        show it
  /save FILE     write the conversation as JSON (messages in the ChatML roles)
  /reset         forget the conversation (the system message stays)
  /help          list the commands
  /quit, /exit   leave (or Ctrl-D)

The conversation is kept as history and sent whole each turn; when it no longer fits
the model's context, the oldest turns are dropped.

Example:
  lmforge chat --model_path checkpoints/sft/tiny/final --temperature 0.7 --top_p 0.9
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from lmforge.artifacts import MANIFEST_NAME, atomic_write_json, check_tokenizer_lineage, read_json
from lmforge.data.chatml import encode_prompt
from lmforge.errors import ArtifactError
from lmforge.log import get_logger
from lmforge.model.adapter import is_adapter_dir, load_adapter_model, resolve_base
from lmforge.model.external import load_external_tokenizer
from lmforge.model.loading import check_model_dir, load_causal_lm
from lmforge.tokenizer.format import MODEL_FILE
from lmforge.tokenizer.spm import load_tokenizer

log = get_logger(__name__)
USER_PROMPT, ASSISTANT_PROMPT = "user> ", "assistant> "


@dataclass
class Sampling:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1


@dataclass
class Reply:
    ids: list[int]          # generated ids, the stop token excluded
    text: str               # decoded reply
    stopped_on_im_end: bool  # True when generation ended on <|im_end|>


class IncrementalDecoder:
    """Text of a growing list of token ids, handed out piece by piece, never taken back.

    With byte fallback, one character can span several tokens (a CJK character or an
    emoji is 3-4 byte tokens); until its last byte arrives, decoding ends in U+FFFD.
    Such a tail is held back, not shown, so the shown text is always a prefix of the
    final text: nothing is lost and nothing freezes. A U+FFFD that later tokens do not
    resolve (the model produced invalid bytes) is shown once text follows it, or by
    `flush()`.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def push(self, ids: Sequence[int]) -> str:
        """Add ids; return the newly stable text ('' while a character is incomplete)."""
        self.ids += [int(i) for i in ids]
        text = self.tokenizer.decode(self.ids)
        stable = text.rstrip("\ufffd")
        return self._advance(stable)

    def flush(self) -> str:
        """Everything not shown yet, incomplete tail included (at the end of generation)."""
        return self._advance(self.tokenizer.decode(self.ids))

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.shown):
            return ""
        if not text.startswith(self.shown):
            # Decoding rewrote text already shown (not expected with SentencePiece once
            # incomplete tails are held back); printed text cannot be taken back.
            log.debug("incremental decode diverged at character %d", len(os.path.commonprefix([text, self.shown])))
        new, self.shown = text[len(self.shown):], text
        return new


class _TextStreamer:
    """A `generate` streamer that decodes with our tokenizer and hands out new text."""

    def __init__(self, tokenizer, on_text: Callable[[str], None], stop_ids: set[int]):
        self.on_text, self.stop_ids = on_text, stop_ids
        self.decoder = IncrementalDecoder(tokenizer)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt itself
            self.prompt_seen = True
            return
        new = self.decoder.push([int(t) for t in value.reshape(-1).tolist() if int(t) not in self.stop_ids])
        if new:
            self.on_text(new)

    def end(self) -> None:
        new = self.decoder.flush()
        if new:
            self.on_text(new)


def load_chat_model(model_path: str | Path, tokenizer_path: str | Path | None = None):
    """(model, tokenizer) of a model directory (final/, step_N/), a LoRA adapter directory,
    or a plain Hugging Face Llama directory with its own tokenizer (`lmforge.model.external`).

    An lmforge model's tokenizer is lmforge's, sha256-checked against the model's lineage. An
    adapter finds its base as `lmforge.model.adapter` describes; its tokenizer is the one
    beside it (the SFT final/) or its base's.
    """
    path = Path(model_path)
    if is_adapter_dir(path):
        if tokenizer_path is None:
            tokenizer_path = path.parent if (path.parent / MODEL_FILE).is_file() else resolve_base(path)
        return load_adapter_model(path), load_tokenizer(tokenizer_path)
    tokenizer_dir = Path(tokenizer_path or path)
    if not (tokenizer_dir / MODEL_FILE).is_file() and (path / "config.json").is_file():
        return _load_external(path, tokenizer_dir)
    return _load_lmforge_model(path, tokenizer_path)


def _load_external(model_dir: Path, tokenizer_dir: Path):
    """A model whose tokenizer is not lmforge's: the model is checked like any other (no custom
    code, safetensors only), the tokenizer read as it is, with ChatML's tokens required."""
    import torch

    check_model_dir(model_dir)
    tokenizer = load_external_tokenizer(tokenizer_dir)
    return load_causal_lm(model_dir, torch.float32).eval(), tokenizer


def _load_lmforge_model(model_dir: Path, tokenizer_path: str | Path | None):
    import torch

    check_model_dir(model_dir)  # before anything else: never a prompt to run a folder's code
    tokenizer = load_tokenizer(tokenizer_path or model_dir)
    if (model_dir / MANIFEST_NAME).is_file():  # an lmforge model: its tokenizer must be this one
        recorded = read_json(model_dir / MANIFEST_NAME, "model manifest").get("tokenizer_sha256")
        check_tokenizer_lineage(tokenizer.sha256, f"tokenizer {tokenizer.path}", recorded, f"model {model_dir}")
    model = load_causal_lm(model_dir, torch.float32)  # no custom code, safetensors only
    model.eval()
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ArtifactError(f"{model_dir}: model vocabulary ({model.config.vocab_size}) is smaller than "
                            f"the tokenizer's ({tokenizer.vocab_size}): wrong tokenizer")
    return model, tokenizer


def generate_reply(model, tokenizer, messages: Sequence[dict], sampling: Sampling,
                   on_text: Callable[[str], None] | None = None) -> Reply:
    """Generate the assistant's next message; stop on <|im_end|> (or </s>)."""
    import torch

    prompt = encode_prompt(tokenizer, messages)
    stop_ids = [tokenizer.im_end_id, tokenizer.eos_id]
    streamer = _TextStreamer(tokenizer, on_text, set(stop_ids)) if on_text else None
    greedy = sampling.temperature <= 0
    extra = {} if greedy else {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
    with torch.no_grad():
        output = model.generate(
            input_ids=torch.tensor([prompt], device=model.device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=model.device),
            max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            repetition_penalty=sampling.repetition_penalty, eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_id, streamer=streamer, **extra)
    new = [int(t) for t in output[0, len(prompt):].tolist()]
    stopped = bool(new) and new[-1] == tokenizer.im_end_id
    if new and new[-1] in stop_ids:
        new = new[:-1]
    return Reply(ids=new, text=tokenizer.decode(new), stopped_on_im_end=stopped)


def fit_history(tokenizer, messages: list[dict], budget: int) -> list[dict]:
    """Drop the oldest exchanges (keeping a system message) until the prompt fits `budget` tokens."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    while len(rest) > 1 and len(encode_prompt(tokenizer, system + rest)) > budget:
        rest = rest[2:] if len(rest) > 2 else rest[-1:]
    return system + rest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_path", "--model-path", dest="model_path", required=True, help="model directory (HF)")
    parser.add_argument("--tokenizer_path", "--tokenizer-path", dest="tokenizer_path",
                        help="tokenizer directory (default: the model directory's copy)")
    parser.add_argument("--system", help="system message for the conversation")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    parser.add_argument("--top_k", "--top-k", dest="top_k", type=int, default=50)
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=0.9)
    parser.add_argument("--repetition_penalty", "--repetition-penalty", dest="repetition_penalty",
                        type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


HISTORY_ENV = "LMFORGE_CHAT_HISTORY"
HELP = ("/system TEXT  set the system message | /system  show it | /save FILE  write the conversation (JSON) | "
        "/reset  start over | /quit  leave")


def enable_line_editing() -> Callable[[], None]:
    """readline for input(): arrow keys, Ctrl-A/E, and a history kept across sessions.
    Returns the function that saves the history (a no-op where readline is missing)."""
    try:
        import readline
    except ImportError:        # e.g. Windows without pyreadline: plain input() still works
        return lambda: None
    path = Path(os.environ.get(HISTORY_ENV) or Path.home() / ".lmforge_chat_history").expanduser()
    try:
        readline.read_history_file(path)
    except (OSError, ValueError):
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            readline.write_history_file(path)
        except OSError as exc:
            log.warning("could not save the chat history to %s: %s", path, exc)
    return save


def save_conversation(path: str, history: list[dict], args, sampling: Sampling) -> str:
    """Write the conversation as JSON; return the line to show."""
    from dataclasses import asdict

    target = Path(path).expanduser()
    if target.is_dir():
        return f"(cannot save: {target} is a directory)"
    if not target.parent.is_dir():
        return f"(cannot save: directory {target.parent} does not exist)"
    atomic_write_json(target, {"model": str(args.model_path), "sampling": asdict(sampling), "messages": history})
    turns = sum(1 for m in history if m["role"] != "system")
    return f"(saved {turns} message(s) to {target})"


def with_system(history: list[dict], system: str | None) -> list[dict]:
    """The conversation with its system message replaced (or removed when None)."""
    rest = [m for m in history if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system else []) + rest


def command(text: str, history: list[dict], args, sampling: Sampling) -> tuple[list[dict], str] | None:
    """Run a /command: (new history, line to show), or None for /quit."""
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/exit"):
        return None
    if name == "/reset":
        system = next((m["content"] for m in history if m["role"] == "system"), None)
        return with_system([], system), "(conversation reset)"
    if name == "/system":
        if not rest:
            current = next((m["content"] for m in history if m["role"] == "system"), None)
            return history, f"(system: {current})" if current else "(no system message; /system TEXT sets one)"
        return with_system(history, rest), "(system message set)"
    if name == "/save":
        if not rest:
            return history, "(usage: /save FILE)"
        return history, save_conversation(rest, history, args, sampling)
    if name == "/help":
        return history, HELP
    return history, f"(unknown command {name}; {HELP})"


def main(args) -> int:
    import torch

    torch.manual_seed(args.seed)
    model, tokenizer = load_chat_model(args.model_path, args.tokenizer_path)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    budget = max(16, context - sampling.max_new_tokens)
    history = with_system([], args.system)
    save_history = enable_line_editing()
    _say(f"lmforge chat: {args.model_path} (/help for commands, /quit to leave)\n")
    try:
        return _loop(model, tokenizer, history, args, sampling, budget)
    finally:
        save_history()


def _loop(model, tokenizer, history: list[dict], args, sampling: Sampling, budget: int) -> int:
    while True:
        try:
            line = input(USER_PROMPT)
        except EOFError:
            _say("\n")
            return 0
        text = line.strip()
        if text.startswith("/"):
            done = command(text, history, args, sampling)
            if done is None:
                return 0
            history, message = done
            _say(message + "\n")
            continue
        if not text:
            continue
        history = fit_history(tokenizer, history + [{"role": "user", "content": text}], budget)
        _say(ASSISTANT_PROMPT)
        reply = generate_reply(model, tokenizer, history, sampling, on_text=_say)
        _say("\n" if reply.stopped_on_im_end else " [length limit]\n")
        history.append({"role": "assistant", "content": reply.text})
