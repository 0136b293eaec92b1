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
from pathlib import Path
from typing import Sequence

from lmforge.model.adapter import is_adapter_dir, load_adapter_model, resolve_base
from lmforge.model.chat import Sampling, generate_reply, load_chat_model
from lmforge.model.external import load_external_tokenizer
from lmforge.pipeline.run import main
from lmforge.tokenizer.format import MODEL_FILE
from lmforge.tokenizer.spm import load_tokenizer


def run_pipeline(pipeline: str | os.PathLike, *, run_dir: str | os.PathLike | None = None,
                 only: Sequence[str] = (), start: str | None = None, stop: str | None = None,
                 dry_run: bool = False, report: bool = True, overrides: Sequence[str] = ()) -> int:
    """`lmforge run PIPELINE`: every stage in order, skipping up-to-date ones. Returns the exit code."""

    args = argparse.Namespace(pipeline=str(pipeline), run_dir=str(run_dir) if run_dir else None, start=start,
                              stop=stop, only=list(only), dry_run=dry_run, set=list(overrides),
                              no_report=not report)
    return main(args)


def load_model(path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None):
    """(model, tokenizer) of a model directory (final/, step_N/) or a LoRA adapter directory.

    The tokenizer is lmforge's (`lmforge.tokenizer.spm.Tokenizer`, sha256 checked against the
    model's lineage). An adapter finds its base as `lmforge.model.adapter` describes; its
    tokenizer is the one beside it (the SFT final/) or its base's.
    """

    path = Path(path)
    tokenizer_dir = Path(tokenizer_path or path)
    if not is_adapter_dir(path) and not (tokenizer_dir / MODEL_FILE).is_file() and (path / "config.json").is_file():
        return _load_external(path, tokenizer_dir)  # a model with its own Hugging Face tokenizer
    if not is_adapter_dir(path):
        return load_chat_model(path, tokenizer_path)
    if tokenizer_path is None:
        tokenizer_path = path.parent if (path.parent / MODEL_FILE).is_file() else resolve_base(path)
    return load_adapter_model(path), load_tokenizer(tokenizer_path)


def _load_external(model_dir: Path, tokenizer_dir: Path):
    """A model whose tokenizer is not lmforge's (lmforge.model.external): the tokenizer is read as is."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_external_tokenizer(tokenizer_dir)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval(), tokenizer


def reply(model, tokenizer, message: str | Sequence[dict], *, max_new_tokens: int = 128,
         temperature: float = 0.0, system: str | None = None) -> str:
    """The model's reply to one message (or to a list of ChatML messages); greedy by default."""

    messages = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    return generate_reply(model, tokenizer, messages, sampling).text
