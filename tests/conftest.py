"""Shared fixtures: small real-text corpora and tokenizers built in temporary dirs.

The text comes from the docstrings of Python's standard library: real English prose
present on every machine, so no third-party text ships with the tests.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
from pathlib import Path

import pytest

from lmforge.artifacts import atomic_write_json, sha256_file, write_manifest
from lmforge.tokenizer import CONFIG_FILE, MODEL_FILE, spm_special_token_args

STDLIB_MODULES = ["json", "os", "re", "collections", "argparse", "pathlib", "typing", "logging",
                  "subprocess", "itertools", "functools", "dataclasses", "datetime", "decimal",
                  "fractions", "statistics", "textwrap", "string", "shutil", "tempfile", "zipfile"]


def stdlib_texts(limit: int | None = None) -> list[str]:
    """Docstrings (>= 200 chars) of stdlib modules and their public members, in a fixed order."""
    texts: list[str] = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *(getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_"))]:
            doc = getattr(obj, "__doc__", None)
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
    """A tokenizer artifact as `lmforge tokenizer` writes it (spm.model, config with sha256, manifest)."""
    import sentencepiece as spm

    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(out / "spm"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
        minloglevel=2, **spm_special_token_args())
    digest = sha256_file(out / MODEL_FILE)
    atomic_write_json(out / CONFIG_FILE, {"sha256_hash": digest, "vocab_size": vocab_size, "model_type": "bpe"})
    write_manifest(out, "tokenizer", config={"fixture": True}, outputs=[MODEL_FILE, "spm.vocab", CONFIG_FILE],
                   tokenizer_sha256=digest)
    return out


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
