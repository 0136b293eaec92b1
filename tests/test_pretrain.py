"""`lmforge pretrain` end to end: CLI, final/ as a Hugging Face model, lineage and input errors,
idempotence, accelerate launch, and two CPU processes matching one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_packed_dir
from lmforge.artifacts import atomic_write_json, sha256_file, write_manifest
from lmforge.cli import main as cli_main
from lmforge.tokenizer.format import CONFIG_FILE, MODEL_FILE, spm_special_token_args

REPO = Path(__file__).resolve().parents[1]
ARCH = {"name": "micro", "vocab_size": 400, "hidden_size": 64, "num_layers": 2, "num_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 64}
TRAINING = {"max_steps": 6, "per_device_batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 3e-3,
            "warmup_steps": 1, "eval_every": 3, "eval_batches": 2, "save_every": 3, "log_every": 1,
            "tensorboard": False}


def write_config(tmp_path: Path, **training) -> Path:
    atomic_write_json(tmp_path / "arch.json", ARCH)
    path = tmp_path / "train.json"
    atomic_write_json(path, {"architecture": str(tmp_path / "arch.json"), "training": {**TRAINING, **training}})
    return path


def run_cli(*argv: str, env_extra: dict | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = (launcher or [sys.executable]) + ["-m", "lmforge.cli", "pretrain", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory, tiny_texts) -> Path:
    """A tokenizer dir with Hugging Face files, trained with the settings lmforge's tokenizer stage uses."""
    import sentencepiece as spm

    from lmforge.tokenizer.hf_export import export_hf_files

    out = tmp_path_factory.mktemp("hf_tok")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_texts), model_prefix=str(out / "spm"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, num_threads=1, minloglevel=2, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", **spm_special_token_args())
    _, keys = export_hf_files(out, model_max_length=32)  # the packing length, not the context
    digest = sha256_file(out / MODEL_FILE)
    atomic_write_json(out / CONFIG_FILE, {**keys, "sha256_hash": digest, "vocab_size": 400})
    write_manifest(out, "tokenizer", config={"fixture": True}, outputs=[MODEL_FILE, CONFIG_FILE],
                   tokenizer_sha256=digest)
    return out


@pytest.fixture(scope="module")
def hf_packed(tmp_path_factory, hf_tokenizer, tiny_texts) -> Path:
    return make_packed_dir(tmp_path_factory.mktemp("hf_packed"), hf_tokenizer, tiny_texts[:150])


def test_cli_trains_exports_a_hf_model_and_skips_when_up_to_date(tmp_path, hf_tokenizer, hf_packed, capsys, caplog):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.training.checkpoint import load_model_weights
    from lmforge.model.architecture import ArchitectureConfig, build_model

    config = write_config(tmp_path)
    args = ["--config", str(config), "--data_dirs", str(hf_packed), "--tokenizer_dir", str(hf_tokenizer),
            "--output_dir", str(tmp_path / "ckpt"), "--num_workers", "4"]
    assert cli_main(["pretrain", *args]) == 0
    out = capsys.readouterr().out
    assert "Training complete!" in out and "step_3, step_6, final" in out
    final = tmp_path / "ckpt" / "micro" / "final"
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["tokenizer_sha256"] == sha256_file(hf_tokenizer / MODEL_FILE)
    assert manifest["figures"]["steps"] == 6 and manifest["figures"]["parameters"] == 107840

    hf_model = AutoModelForCausalLM.from_pretrained(final)
    assert (hf_model.config.bos_token_id, hf_model.config.eos_token_id, hf_model.config.pad_token_id) == (1, 2, 3)
    ours = build_model(ArchitectureConfig(**ARCH))
    load_model_weights(ours, final)
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        assert torch.allclose(hf_model(ids).logits, ours(ids).logits, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.bos_token == "<s>" and tok("hello world")["input_ids"][0] != tok.bos_token_id  # no BOS added
    # stops at the end of a ChatML turn, the one template, the model's context (not the tokenizer's 32).
    from lmforge.data.chatml import CHAT_TEMPLATE

    assert hf_model.generation_config.eos_token_id == [2, 5]
    assert tok.chat_template == CHAT_TEMPLATE and tok.model_max_length == ARCH["max_position_embeddings"]
    card = (final / "README.md").read_text()  # the model card, beside (not in) the manifest
    assert "library_name: transformers" in card and f"parameters: **{107840:,}**" in card
    assert manifest["tokenizer_sha256"] in card and "not run yet (`lmforge eval`)" in card

    caplog.clear()
    mtime = (final / "model.safetensors").stat().st_mtime_ns
    assert cli_main(["pretrain", *args]) == 0
    assert "up to date, skipping" in caplog.text
    assert (final / "model.safetensors").stat().st_mtime_ns == mtime


def test_changed_config_with_checkpoints_asks_for_resume_or_force(tmp_path, tiny_tokenizer, tiny_packed, caplog):
    config = write_config(tmp_path, stop_after_steps=3)
    base = ["pretrain", "--config", str(config), "--data_dirs", str(tiny_packed), "--tokenizer_dir",
            str(tiny_tokenizer), "--output_dir", str(tmp_path / "ckpt")]
    assert cli_main(base) == 0
    assert cli_main([*base, "--learning_rate", "1e-3"]) == 2  # different run, old checkpoints: refuse
    caplog.clear()
    assert cli_main([*base, "--stop_after_steps", "5"]) == 0  # same run: continues from step_3
    assert "continuing" in caplog.text
    meta = json.loads((tmp_path / "ckpt" / "micro" / "step_5" / "meta.json").read_text())
    assert meta["step"] == 5 and meta["tokens_seen"] == 5 * 8 * 32


def test_tokenizer_mismatch_and_missing_data_are_clear_errors(tmp_path, hf_tokenizer, tiny_packed):
    config = write_config(tmp_path)
    mismatch = run_cli("--config", str(config), "--data_dirs", str(tiny_packed), "--tokenizer_dir", str(hf_tokenizer),
                       "--output_dir", str(tmp_path / "out"))
    assert mismatch.returncode == 2 and "Traceback" not in mismatch.stderr
    assert "tokenizer mismatch" in mismatch.stderr and sha256_file(hf_tokenizer / MODEL_FILE) in mismatch.stderr
    assert not (tmp_path / "out").exists()
    missing = run_cli("--config", str(config), "--data_dirs", str(tmp_path / "nope"), "--tokenizer_dir",
                      str(hf_tokenizer), "--output_dir", str(tmp_path / "out"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "nope does not exist" in missing.stderr


def test_two_cpu_processes_match_one_and_accelerate_launch_runs_bf16(tmp_path, tiny_tokenizer, tiny_packed):
    """torchrun x2 without accumulation == one process with accumulation 2 (same global batch)."""
    common = ["--data_dirs", str(tiny_packed), "--tokenizer_dir", str(tiny_tokenizer), "--set", "training.save_every=0"]
    assert cli_main(["pretrain", "--config", str(write_config(tmp_path)), "--output_dir", str(tmp_path / "one"), *common]) == 0
    two = run_cli("--config", str(write_config(tmp_path, gradient_accumulation_steps=1)), "--output_dir",
                  str(tmp_path / "two"), *common, env_extra={"ACCELERATE_USE_CPU": "1"},
                  launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"])
    assert two.returncode == 0, two.stderr[-2000:]
    assert "cpu x 2 process(es)" in two.stderr and two.stderr.count("step 6/6") == 1
    a, b = losses(tmp_path / "one" / "micro"), losses(tmp_path / "two" / "micro")
    assert len(a) == len(b) == 6 and np.allclose(a, b, rtol=0, atol=1e-5)

    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "bf16", "--num_processes", "1",
         "--num_machines", "1", "--dynamo_backend", "no", "scripts/40_pretrain.py",
         "--config", str(write_config(tmp_path)), "--output_dir", str(tmp_path / "bf16"), "--num_workers", "4", *common],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "mixed precision bf16" in launched.stderr
    manifest = json.loads((tmp_path / "bf16" / "micro" / "final" / "manifest.json").read_text())
    assert manifest["figures"]["mixed_precision"] == "bf16"
    assert losses(tmp_path / "bf16" / "micro")[-1] < losses(tmp_path / "bf16" / "micro")[0]


def test_max_steps_flag_keeps_the_warmup_fraction_of_the_plan_config(monkeypatch):
    """`--max_steps 200` on the plan's config (3,000 warmup of 30,000) is a valid schedule."""
    import argparse

    from lmforge.errors import ConfigError
    from lmforge.stages.pretrain import add_arguments, load_stage_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    plan = ["--config", "config/pretrain/training/chinchilla_tiny_500m.json", "--data_dirs", "x",
            "--tokenizer_dir", "t", "--output_dir", "o"]
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cfg = load_stage_config(parser.parse_args([*plan, "--max_steps", "200"]))
    assert (cfg.training.max_steps, cfg.training.warmup_steps) == (200, 20)
    assert load_stage_config(parser.parse_args(plan)).training.warmup_steps == 3000  # untouched otherwise
    with pytest.raises(ConfigError, match="warmup_steps"):  # an explicit warmup is the user's choice
        load_stage_config(parser.parse_args([*plan, "--max_steps", "200", "--warmup_steps", "500"]))


@pytest.mark.parametrize("value, message", [
    ("two", 'training.max_steps: expected an integer, got "two"'),
    ("2.5", "training.max_steps: expected an integer, got 2.5"),
    ("0", "training.max_steps"),
])
def test_a_bad_max_steps_is_one_config_error_and_scales_no_warmup(monkeypatch, caplog, value, message):
    """The warmup scaling runs before validation: it must leave a bad value to validation (no crash,
    no second error about a warmup the user never set, no warning quoting a truncated value)."""
    import argparse

    from lmforge.errors import ConfigError
    from lmforge.stages.pretrain import add_arguments, load_stage_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    args = parser.parse_args(["--config", "config/pretrain/training/chinchilla_tiny_500m.json", "--data_dirs", "x",
                              "--tokenizer_dir", "t", "--output_dir", "o", "--set", f"training.max_steps={value}"])
    with pytest.raises(ConfigError) as raised:
        load_stage_config(args)
    assert message in str(raised.value) and "warmup_steps" not in str(raised.value)
    assert "warmup scaled" not in caplog.text
