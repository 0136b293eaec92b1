"""lmforge from Python: run a pipeline, load a model, chat with it.

    from lmforge import run_pipeline, load_model, reply

    run_pipeline("config/quickstart/pipeline.json", run_dir="runs/quickstart")
    model, tokenizer = load_model("runs/quickstart/checkpoints/sft/quickstart/final")
    print(reply(model, tokenizer, "What is a list comprehension?"))

Each function is a thin layer over what the CLI runs (`lmforge run`, `lmforge chat`), so
the two never drift apart. (`reply`, not `chat`: `lmforge.model.chat` is the module behind
`lmforge chat`, and a function of the same name would be shadowed by it.) Errors are `lmforge.errors.LmforgeError`s with one-line
messages, as on the command line.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from lmforge.model.chat import Sampling, generate_reply, load_chat_model
from lmforge.pipeline.run import main


def run_pipeline(pipeline: str | os.PathLike, *, run_dir: str | os.PathLike | None = None,
                 only: Sequence[str] = (), start: str | None = None, stop: str | None = None,
                 dry_run: bool = False, report: bool = True, overrides: Sequence[str] = ()) -> int:
    """`lmforge run PIPELINE`: every stage in order, skipping up-to-date ones. Returns the exit code."""

    args = argparse.Namespace(pipeline=str(pipeline), run_dir=str(run_dir) if run_dir else None, start=start,
                              stop=stop, only=list(only), dry_run=dry_run, set=list(overrides),
                              no_report=not report)
    return main(args)


def load_model(path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None):
    """(model, tokenizer) of a model directory (final/, step_N/), a LoRA adapter directory or a
    plain Hugging Face Llama directory: what `lmforge chat` loads (`lmforge.model.chat.load_chat_model`)."""
    return load_chat_model(path, tokenizer_path)


def reply(model, tokenizer, message: str | Sequence[dict], *, max_new_tokens: int = 128,
         temperature: float = 0.0, system: str | None = None) -> str:
    """The model's reply to one message (or to a list of ChatML messages); greedy by default."""

    messages = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    return generate_reply(model, tokenizer, messages, sampling).text
