"""Shared fixtures: small real-text corpora and tokenizers built in temporary dirs.

The text comes from the docstrings of Python's standard library: real English prose
present on every machine, so no third-party text ships with the tests.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import warnings
from pathlib import Path

import pytest

from lmforge.artifacts import write_manifest

STDLIB_MODULES = ["json", "os", "re", "collections", "argparse", "pathlib", "typing", "logging",
                  "subprocess", "itertools", "functools", "dataclasses", "datetime", "decimal",
                  "fractions", "statistics", "textwrap", "string", "shutil", "tempfile", "zipfile"]


def stdlib_texts(limit: int | None = None) -> list[str]:
    """Docstrings (>= 200 chars) of stdlib modules and their public members, in a fixed order."""
    texts: list[str] = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        with warnings.catch_warnings():  # typing.io / typing.re warn on access
            warnings.simplefilter("ignore", DeprecationWarning)
            members = [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
            docs = [getattr(obj, "__doc__", None) for obj in [module, *members]]
        for doc in docs:
            if isinstance(doc, str) and len(doc) >= 200 and doc not in texts:
                texts.append(doc.strip())
    return texts[:limit] if limit else texts


def mirror_dir() -> Path | None:
    """The hub mirror named by LMFORGE_MIRROR, or ../shared/mirror beside the checkout."""
    env = os.environ.get("LMFORGE_MIRROR")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[2] / "shared" / "mirror"]
    return next((p for p in candidates if p.is_dir()), None)


def make_corpus_dir(out: Path, docs: list[str], shard_size: int = 50, source: str = "stdlib") -> Path:
    """A corpus artifact as `lmforge corpus` writes it: shards/shard_NNNN.jsonl.gz + manifest."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    outputs = []
    for n, start in enumerate(range(0, len(docs), shard_size)):
        rel = f"shards/shard_{n:04d}.jsonl.gz"
        with gzip.GzipFile(out / rel, "wb", mtime=0) as f:
            for i, text in enumerate(docs[start:start + shard_size], start):
                f.write((json.dumps({"id": f"{source}-{i}", "source": source, "text": text}) + "\n").encode())
        outputs.append(rel)
    figures = {"documents": len(docs), "shards": len(outputs), "characters": sum(map(len, docs))}
    write_manifest(out, "corpus", config={"fixture": True}, outputs=outputs, figures=figures)
    return out


def make_tokenizer_dir(out: Path, texts: list[str], vocab_size: int = 400) -> Path:
    """A tokenizer artifact made by the real `lmforge tokenizer` stage (spm.model, HF files, card, manifest).

    The texts first become a corpus artifact beside `out` (`<out>_corpus`), which the
    stage verifies and trains on, exactly as in the pipeline.
    """
    from lmforge.stages.tokenizer import train_tokenizer
    from lmforge.tokenizer.training import TokenizerConfig

    corpus = make_corpus_dir(out.with_name(out.name + "_corpus"), texts)
    cfg = TokenizerConfig(corpus_dir=str(corpus), vocab_size=vocab_size, num_threads=1, held_out_fraction=0.05)
    train_tokenizer(cfg, out)
    return out


@pytest.fixture
def caplog(caplog):
    """pytest's caplog, also attached to lmforge's logger, which does not propagate to the
    root logger (so that a user's own logging setup never duplicates lmforge's lines)."""
    import logging

    logger = logging.getLogger("lmforge")
    level = logger.level
    logger.addHandler(caplog.handler)
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (restored afterwards): on a shared
    2-core machine, two spinning OpenMP threads per process made tiny matmuls up to 60x
    slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return stdlib_texts()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, tiny_texts) -> Path:
    return make_corpus_dir(tmp_path_factory.mktemp("corpus"), tiny_texts)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, tiny_texts) -> Path:
    return make_tokenizer_dir(tmp_path_factory.mktemp("tokenizer"), tiny_texts)


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The real-data mirror; tests that take it skip cleanly when it is absent."""
    found = mirror_dir()
    if found is None:
        pytest.skip("real-data tier: no hub mirror (set LMFORGE_MIRROR or provide ../shared/mirror)")
    return found


# ---------------------------------------------------------------- SFT fixtures

def make_base_model_dir(out: Path, tokenizer_dir: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A tiny Llama base model as `lmforge pretrain` exports final/: HF weights, tokenizer files, manifest."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.tokenizer.spm import copy_tokenizer_files, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id, tie_word_embeddings=True)
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    copied = copy_tokenizer_files(tokenizer_dir, out)
    outputs = ["config.json", "model.safetensors", *copied]
    write_manifest(out, "pretrain", config={"fixture": True}, outputs=[o for o in outputs if (out / o).is_file()],
                   tokenizer_sha256=tok.sha256)
    return out


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_base_model_dir(tmp_path_factory.mktemp("base_model"), tiny_tokenizer)


# ---------------------------------------------------------------- pretraining fixtures

def make_packed_dir(out: Path, tokenizer_dir: Path, texts: list[str], seq_length: int = 32,
                    val_every: int = 10) -> Path:
    """A packed artifact as `lmforge pack` writes it: documents as <s> ids </s>, cut into rows of
    seq_length tokens; every `val_every`-th row goes to val. Manifest stage "pack"."""
    import numpy as np

    from lmforge.data.indexed import IndexedWriter
    from lmforge.tokenizer.spm import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    stream: list[int] = []
    for ids in tok.encode(list(texts)):
        stream += [tok.bos_id, *ids, tok.eos_id]
    rows = [stream[i:i + seq_length] for i in range(0, len(stream) - seq_length + 1, seq_length)]
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "val": 0}
    with IndexedWriter(out / "train", np.uint16) as train, IndexedWriter(out / "val", np.uint16) as val:
        for i, row in enumerate(rows):
            split = "val" if i % val_every == val_every - 1 else "train"
            (val if split == "val" else train).add_sequence(row)
            counts[split] += 1
    figures = {"seq_length": seq_length, "dtype": "uint16", "total_tokens": len(rows) * seq_length,
               "sequences": counts, "vocab_size": tok.vocab_size}
    write_manifest(out, "pack", config={"fixture": True}, outputs=["train.bin", "train.idx", "val.bin", "val.idx"],
                   figures=figures, tokenizer_sha256=tok.sha256)
    return out


@pytest.fixture(scope="session")
def tiny_packed(tmp_path_factory, tiny_tokenizer, tiny_texts) -> Path:
    return make_packed_dir(tmp_path_factory.mktemp("packed"), tiny_tokenizer, tiny_texts)
