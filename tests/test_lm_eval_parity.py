"""Parity with lm-evaluation-harness itself (real-data tier).

The harness (lm_eval from PyPI) runs its own `wikitext` and `boolq` tasks, with only
their data redirected to the mirror's files, on a small checkpoint that `lmforge
pretrain` trained briefly and exported; `lmforge eval` runs on the same files. Word
and byte perplexity and every BoolQ per-choice log-likelihood must agree within 1e-4
relative, and BoolQ accuracy exactly.

Kept small for 2 CPU cores: a 2-layer 64-wide model with a 256-token context (each
article spans dozens of rolling windows), the first WIKITEXT_DOCS articles and the first
BOOLQ_ITEMS questions, the same caps on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.artifacts import atomic_write_json
from lmforge.cli import main as cli_main

pytestmark = [pytest.mark.realdata, pytest.mark.usefixtures("one_torch_thread")]

WIKITEXT_DOCS = 3
BOOLQ_ITEMS = 150
REL = 1e-4
WIKITEXT_FILE = "EleutherAI/wikitext_document_level/wikitext-2-raw-v1/test/test-00000.jsonl.gz"
BOOLQ_FILE = "aps/super_glue/boolq/validation/validation-00000.jsonl.gz"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer, tiny_texts) -> Path:
    """A model trained briefly and exported by `lmforge pretrain` (final/)."""
    from conftest import make_packed_dir

    base = tmp_path_factory.mktemp("parity_ckpt")
    packed = make_packed_dir(base / "packed", tiny_tokenizer, tiny_texts, seq_length=128)
    atomic_write_json(base / "arch.json", {"name": "parity", "vocab_size": 400, "hidden_size": 64, "num_layers": 2,
                                           "num_heads": 4, "intermediate_size": 128, "max_position_embeddings": 256})
    training = {"max_steps": 16, "per_device_batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 3e-3,
                "warmup_steps": 2, "eval_every": 1000, "eval_batches": 1, "save_every": 1000, "log_every": 8,
                "tensorboard": False}
    atomic_write_json(base / "train.json", {"architecture": str(base / "arch.json"), "training": training})
    rc = cli_main(["pretrain", "--config", str(base / "train.json"), "--data_dirs", str(packed),
                   "--tokenizer_dir", str(tiny_tokenizer), "--output_dir", str(base / "ckpt"), "--log-level", "WARNING"])
    assert rc == 0
    return base / "ckpt" / "parity" / "final"


def run_harness(model_dir: Path, tokenizer_dir: Path, task: dict, limit: int) -> dict:
    """lm_eval.simple_evaluate on one built-in task whose data files point at the mirror."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install -e .[dev])")
    from lm_eval.tasks import TaskManager

    # Index only the two built-in task folders (the full index takes ~15 s); the task
    # definitions, prompts, detokeniser and metrics are the harness's own files.
    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    manager = TaskManager(include_defaults=False,
                          include_path=[str(tasks_root / "wikitext"), str(tasks_root / "super_glue" / "boolq")])
    group = {"group": "lmforge_parity", "task": [task]}  # a group entry merges overrides over the built-in task
    return lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "tokenizer": str(tokenizer_dir), "dtype": "float32"},
        tasks=[group], task_manager=manager, limit=limit, batch_size=8, device="cpu", log_samples=True)


@pytest.fixture
def offline(monkeypatch):
    """Any stray hub access fails at once instead of retrying DNS."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def ours(tmp_path_factory, checkpoint, tiny_tokenizer, mirror) -> Path:
    out = tmp_path_factory.mktemp("parity_ours")
    rc = cli_main(["eval", "--model_path", str(checkpoint), "--tokenizer_path", str(tiny_tokenizer),
                   "--output_dir", str(out), "--mirror", str(mirror), "--max-wikitext-docs", str(WIKITEXT_DOCS),
                   "--max-boolq", str(BOOLQ_ITEMS), "--set", "generation.enabled=false", "--device", "cpu",
                   "--log-level", "WARNING"])
    assert rc == 0
    return out


def test_wikitext_perplexities_match_the_harness(checkpoint, tiny_tokenizer, mirror, ours, offline):
    task = {"task": "wikitext", "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(mirror / WIKITEXT_FILE)}},
            "training_split": None, "validation_split": None}
    theirs = run_harness(checkpoint, tiny_tokenizer, task, WIKITEXT_DOCS)["results"]["wikitext"]
    mine = json.loads((ours / "results.json").read_text())["wikitext"]
    assert mine["documents"] == WIKITEXT_DOCS and mine["partial"] is True
    assert mine["max_length"] == 256  # the model's context: rolling windows were needed
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert mine[metric] == pytest.approx(theirs[f"{metric},none"], rel=REL), metric


def test_boolq_loglikelihoods_and_accuracy_match_the_harness(checkpoint, tiny_tokenizer, mirror, ours, offline):
    task = {"task": "boolq", "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"validation": str(mirror / BOOLQ_FILE)}}, "training_split": None}
    result = run_harness(checkpoint, tiny_tokenizer, task, BOOLQ_ITEMS)
    samples = sorted(result["samples"]["boolq"], key=lambda s: s["doc_id"])
    items = [json.loads(line) for line in (ours / "boolq_items.jsonl").read_text().splitlines()]
    assert len(items) == len(samples) == BOOLQ_ITEMS
    for sample, item in zip(samples, items):
        (ll_no, _), (ll_yes, _) = [resp[0] for resp in sample["resps"]]
        assert item["label"] == sample["target"]
        assert item["ll_no"] == pytest.approx(ll_no, rel=REL)
        assert item["ll_yes"] == pytest.approx(ll_yes, rel=REL)
    mine = json.loads((ours / "results.json").read_text())["boolq"]
    assert mine["accuracy"] == result["results"]["boolq"]["acc,none"]
    assert mine["accuracy_stderr"] == pytest.approx(result["results"]["boolq"]["acc_stderr,none"], rel=1e-9)
