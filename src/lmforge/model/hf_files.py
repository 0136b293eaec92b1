"""The Hugging Face files that make an lmforge model directory work anywhere.

Every model lmforge saves (pretraining and SFT, step_N/ and final/) is meant to be used
as is by `AutoModelForCausalLM`, `pipeline("text-generation")`, vLLM or a chat UI. Two
files decide whether that goes well, and both are written here, in one way:

- generation_config.json: generation stops on `</s>` *and* `<|im_end|>`. A chat model
  closes its turn with `<|im_end|>`; with `</s>` alone, `generate` would run on to
  `max_new_tokens` repeating it. A pretrained model never emits `<|im_end|>`, so the
  pair costs it nothing and every model dir behaves the same.
- tokenizer_config.json: the ChatML template of `lmforge.data.chatml.CHAT_TEMPLATE` (the one
  SFT data are rendered with, `<s>` included, so `apply_chat_template` gives the
  training ids) and `model_max_length` equal to the model's context
  (`max_position_embeddings`), not the packing length.

Stages write the tokenizer files of a run once, into `<run>/tokenizer/`
(`prepare_run_tokenizer`); the training loop copies that directory into every saved
model.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.artifacts import atomic_path, atomic_write_json, read_json
from lmforge.data.chatml import CHAT_TEMPLATE
from lmforge.model.external import copy_hf_tokenizer_files, is_lmforge_tokenizer
from lmforge.tokenizer.format import CONFIG_FILE, SPECIAL_TOKENS
from lmforge.tokenizer.spm import copy_tokenizer_files

RUN_TOKENIZER_DIR = "tokenizer"
# Generation stops on either: end of document, end of a ChatML turn.
STOP_TOKEN_IDS = [SPECIAL_TOKENS["eos"][1], SPECIAL_TOKENS["im_end"][1]]


def set_chat_generation(model, stop_ids: list[int] | None = None) -> None:
    """Make `model.save_pretrained` write a generation_config.json that stops at the end of a turn."""
    gen = model.generation_config
    gen.eos_token_id = list(stop_ids or STOP_TOKEN_IDS)
    if gen.pad_token_id is None:
        gen.pad_token_id = model.config.pad_token_id
    if gen.bos_token_id is None:
        gen.bos_token_id = model.config.bos_token_id


def model_tokenizer_keys(context: int) -> dict:
    """tokenizer_config.json keys every lmforge model dir carries."""

    return {"chat_template": CHAT_TEMPLATE, "model_max_length": int(context)}


def set_model_tokenizer_keys(tokenizer_dir: str | os.PathLike, context: int) -> None:
    """Rewrite tokenizer_config.json in `tokenizer_dir` with the ChatML template and the context."""
    path = Path(tokenizer_dir) / CONFIG_FILE
    config = read_json(path, "tokenizer config") if path.is_file() else {}
    config.update(model_tokenizer_keys(context))
    atomic_write_json(path, config)


def prepare_run_tokenizer(tokenizer_dir: str | os.PathLike, run_dir: str | os.PathLike, context: int) -> Path:
    """<run_dir>/tokenizer/: the tokenizer's files with the model keys above (written atomically)."""

    target = Path(run_dir) / RUN_TOKENIZER_DIR
    copy = copy_tokenizer_files if is_lmforge_tokenizer(tokenizer_dir) else copy_hf_tokenizer_files
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        copy(tokenizer_dir, tmp)
        set_model_tokenizer_keys(tmp, context)
    return target


def model_context(model_dir: str | os.PathLike) -> int:
    """The context length recorded in a model directory's config.json."""
    config = read_json(Path(model_dir) / "config.json", "model config")
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
