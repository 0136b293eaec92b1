"""The GPU-first step, proven on CPU: lmforge's decoder resumes exactly, compiled == eager,
the micro-batch probe keeps the global batch (exercised with an injected OOM), the prefetcher
hands out the same batches and resumes exactly, and step figures stay on the device between logs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data.pretrain_batches import PackedBatches, Prefetcher
from lmforge.data.packed import open_packed_dir
from lmforge.model.decoder import build_decoder
from lmforge.model.architecture import ArchitectureConfig
from lmforge.training.step import candidate_micro_batches, probe_micro_batch
from lmforge.training.loop import TrainingConfig, auto_split, make_accelerator, training_loss_sum
from test_training import ARCH, cfg, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_decoder_trains_resumes_exactly_and_its_final_is_a_hf_llama(tiny_packed, tmp_path):
    from transformers import AutoModelForCausalLM

    decoder = lambda: build_decoder(ARCH, seed=42)  # noqa: E731
    straight, trained = train(tiny_packed, tmp_path / "a", cfg(max_steps=8), model=decoder())
    first, _ = train(tiny_packed, tmp_path / "b", cfg(max_steps=8, stop_after_steps=4), model=decoder())
    second, _ = train(tiny_packed, tmp_path / "b", cfg(max_steps=8), resume=tmp_path / "b" / "step_4", model=decoder())
    resumed = [h["loss"] for h in first.history + second.history]
    assert np.allclose(resumed, [h["loss"] for h in straight.history], rtol=0, atol=1e-6)
    assert straight.history[-1]["loss"] < straight.history[0]["loss"] - 0.5
    hf = AutoModelForCausalLM.from_pretrained(straight.final_dir)
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, trained(ids).logits, atol=1e-5)


def test_step_figures_stay_on_the_device_until_a_log_step(tiny_packed, tmp_path):
    from lmforge.training.loop import CheckpointMeta, Trainer

    c = cfg(max_steps=10, log_every=5)
    packed = open_packed_dir(tiny_packed)
    batches = PackedBatches([packed.train], None, micro_batch=4, accumulation=2, seed=c.seed)
    trainer = Trainer(build_decoder(ARCH), batches, None, c, tmp_path, make_accelerator(c),
                      CheckpointMeta(stage="pretrain", config={}), None)
    for _ in range(3):
        trainer._train_step()
        trainer.step += 1
    assert len(trainer._pending) == 3 and not trainer.history
    assert all(torch.is_tensor(r["_loss_sum"]) and torch.is_tensor(r["_bad"]) for r in trainer._pending)
    trainer._flush()
    assert [h["step"] for h in trainer.history] == [1, 2, 3] and not trainer._pending
    assert all(isinstance(h["loss"], float) and isinstance(h["grad_norm"], float) for h in trainer.history)
    assert trainer.history[-1]["tokens"] == 3 * 8 * 32


def compiled_vs_eager(tiny_packed, tmp_path, backend: str):
    eager, _ = train(tiny_packed, tmp_path / "eager", cfg(max_steps=3, compile=False), model=build_decoder(ARCH))
    model = build_decoder(ARCH)
    original = model.compile
    model.compile = lambda: original(backend=backend)
    compiled, _ = train(tiny_packed, tmp_path / "compiled", cfg(max_steps=3, compile=True), model=model)
    assert np.allclose([h["loss"] for h in compiled.history], [h["loss"] for h in eager.history], rtol=0, atol=1e-4)
    assert '"compiled": true' in (compiled.final_dir / "manifest.json").read_text()


def test_compiled_and_eager_steps_agree_on_cpu(tiny_packed, tmp_path):
    """dynamo + AOTAutograd (the chunked loss's autograd.Function traced into the graph), fast enough for every run."""
    compiled_vs_eager(tiny_packed, tmp_path, "aot_eager")


@pytest.mark.slow
def test_inductor_compiled_and_eager_steps_agree_on_cpu(tiny_packed, tmp_path):
    """The default backend (inductor, C++ codegen on CPU): ~1 min on 2 cores."""
    compiled_vs_eager(tiny_packed, tmp_path, "inductor")


def test_a_failing_compile_falls_back_to_eager_with_one_log_line(tiny_packed, tmp_path, caplog):
    import torch._dynamo

    def broken_backend(gm, example_inputs):
        raise RuntimeError("injected compiler failure")

    model = build_decoder(ARCH)
    original = model.compile
    model.compile = lambda: original(backend=broken_backend)  # the fault is injected into the compiler
    torch._dynamo.reset()
    result, _ = train(tiny_packed, tmp_path / "run", cfg(max_steps=2, compile=True), model=model)
    assert result.final_dir is not None and all(np.isfinite(h["loss"]) for h in result.history)
    lines = {id(r): r.message for r in caplog.records if "torch.compile failed" in r.message}  # by record: a
    assert len(lines) == 1 and "training eagerly" in next(iter(lines.values()))  # handler may see one twice


def test_micro_batch_probe_keeps_the_global_batch_under_an_injected_oom():
    arch = ArchitectureConfig(name="p", vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                              intermediate_size=64, max_position_embeddings=32)
    model = build_decoder(arch)
    real_forward = model.forward
    tried = []

    def forward(input_ids, labels=None, attention_mask=None):  # fault injection: OOM above 6 sequences
        tried.append(input_ids.shape[0])
        if input_ids.shape[0] > 6:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return real_forward(input_ids, labels=labels, attention_mask=attention_mask)

    model.forward = forward
    c = TrainingConfig(max_steps=10, per_device_batch_size=2, gradient_accumulation_steps=12, warmup_steps=0,
                       auto_micro_batch=True, compile=False)
    chosen = auto_split(model, c, 16, 300, make_accelerator(c))
    assert tried == [24, 12, 8, 6]                   # divisors of 24, largest first, until one fits
    assert (chosen.per_device_batch_size, chosen.gradient_accumulation_steps) == (6, 4)
    assert chosen.sequences_per_step(1) == c.sequences_per_step(1) == 24
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients behind
    off = auto_split(model, TrainingConfig(max_steps=10, warmup_steps=0, auto_micro_batch="auto"), 16, 300,
                     make_accelerator(c))
    assert off.per_device_batch_size == 8           # auto is off on CPU: the config is kept


def test_probe_falls_back_to_the_configured_size_when_nothing_fits():
    def never(size):
        raise torch.OutOfMemoryError("injected")
    assert probe_micro_batch(never, 12, 3, "cpu") == 3
    assert candidate_micro_batches(12) == [12, 6, 4, 3, 2, 1]


def test_prefetcher_hands_out_the_same_batches_and_resumes_exactly(tiny_packed):
    train_split = open_packed_dir(tiny_packed).train
    plain = PackedBatches([train_split], None, micro_batch=2, accumulation=3, seed=5)
    ahead = Prefetcher(PackedBatches([train_split], None, micro_batch=2, accumulation=3, seed=5), 3, pin=False)
    try:
        for _ in range(4 * 3):
            assert torch.equal(next(plain)["input_ids"], next(ahead)["input_ids"])
        assert ahead.state_dict() == plain.state_dict()  # where the loop is, not where the thread read to
        next(ahead)
        with pytest.raises(RuntimeError, match="middle of an optimizer step"):
            ahead.state_dict()
        state = plain.state_dict()
        again = Prefetcher(PackedBatches([train_split], None, micro_batch=2, accumulation=3, seed=5), 3, pin=False)
        again.load_state_dict(state)
        for _ in range(6):
            assert torch.equal(next(plain)["input_ids"], next(again)["input_ids"])
        again.close()
    finally:
        ahead.close()


def test_loss_sum_is_the_same_for_the_decoder_and_its_hf_twin():
    from lmforge.model.architecture import build_model

    hf = build_model(ARCH, seed=0)
    ours = build_decoder(ARCH, seed=1)
    ours.load_state_dict(hf.state_dict(), strict=False)
    ids = torch.randint(0, ARCH.vocab_size, (2, 16))
    batch = {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        assert abs(training_loss_sum(hf, batch).item() - training_loss_sum(ours, batch).item()) < 1e-3


def test_pretrain_and_eval_run_without_the_datasets_package(tmp_path, tiny_tokenizer, tiny_packed):
    """The GPU machine has no `datasets`: pretraining, WikiText scoring from a carried raw file (the quality
    race's GPU path) and the benchmark scripts must not need it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_pretrain import write_config

    repo = Path(__file__).resolve().parents[1]
    config = write_config(tmp_path, max_steps=2, save_every=0, eval_every=0)
    wikitext = tmp_path / "wiki.test.raw"
    wikitext.write_text(" = First = \n The first page , short .\n \n = Second = \n Another page @-@ here .\n")
    final = tmp_path / "out" / "micro" / "final"
    code = ("import sys, runpy; sys.modules['datasets'] = None\n"  # any `import datasets` now fails
            "sys.path.insert(0, 'bench'); import gpu_check, train_throughput, quality_race\n"
            "from lmforge.cli import main\n"
            f"code = main(['pretrain', '--config', {str(config)!r}, '--data_dirs', {str(tiny_packed)!r}, "
            f"'--tokenizer_dir', {str(tiny_tokenizer)!r}, '--output_dir', {str(tmp_path / 'out')!r}])\n"
            f"sys.exit(code or main(['eval', '--model_path', {str(final)!r}, '--tokenizer_path', "
            f"{str(tiny_tokenizer)!r}, '--output_dir', {str(tmp_path / 'eval')!r}, '--set=boolq.enabled=false', "
            f"'--set=generation.enabled=false', '--set=wikitext.local_file={wikitext}']))")
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "micro" / "final" / "manifest.json").read_text())
    assert manifest["figures"]["steps"] == 2 and manifest["figures"]["compiled"] is False  # auto: off on CPU
    assert manifest["figures"]["micro_batch"] == 4 and manifest["figures"]["gradient_accumulation_steps"] == 2
    wt = json.loads((tmp_path / "eval" / "results.json").read_text())["wikitext"]
    assert wt["documents"] == 2 and wt["bits_per_byte"] > 0


def test_the_evaluation_subset_does_not_follow_the_probed_micro_batch(tmp_path, tiny_tokenizer, tiny_packed):
    """A probed micro-batch (4 x 2 -> 8 x 1 here) trains the same math and scores the same rows."""
    import json

    from lmforge.cli import main as cli_main
    from test_pretrain import write_config

    common = ["--data_dirs", str(tiny_packed), "--tokenizer_dir", str(tiny_tokenizer), "--max_steps", "2",
              "--set", "training.save_every=0", "--set", "training.eval_every=0"]

    def eval_tokens(name: str, probe: bool) -> int:
        config = write_config(tmp_path / name, auto_micro_batch=probe, compile=False)
        assert cli_main(["pretrain", "--config", str(config), "--output_dir", str(tmp_path / name), *common]) == 0
        manifest = json.loads((tmp_path / name / "micro" / "final" / "manifest.json").read_text())
        assert manifest["figures"]["micro_batch"] == (8 if probe else 4)
        rows = [json.loads(line) for line in (tmp_path / name / "micro" / "metrics.jsonl").read_text().splitlines()]
        return [r["eval_tokens"] for r in rows if "eval_tokens" in r][-1]

    assert eval_tokens("probed", True) == eval_tokens("fixed", False) == 2 * 4 * 31


def test_precision_defaults_to_bf16_on_a_bf16_card_unless_configured_or_launched(monkeypatch):
    from lmforge.training.loop import resolve_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision(None) == (
        "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the decision for a bf16 card, on any machine
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(None) == "bf16"
    assert resolve_precision("no") == "no" and resolve_precision("fp16") == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # `accelerate launch` chose: accelerate reads it
    assert resolve_precision(None) is None


def test_an_installed_flash_attn_that_does_not_import_falls_back_to_sdpa(monkeypatch):
    import importlib.machinery
    import sys
    import types

    from lmforge.model.architecture import choose_attention

    broken = types.ModuleType("flash_attn")  # installed, but its kernels fail to load (no flash_attn_func)
    monkeypatch.setitem(sys.modules, "flash_attn", broken)
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: importlib.machinery.ModuleSpec(name, None) if name == "flash_attn" else None)
    attn, why = choose_attention("cuda", "bf16")
    assert attn == "sdpa" and "does not import" in why
    broken.flash_attn_func = lambda *a, **k: None
    assert choose_attention("cuda", "bf16")[0] == "flash_attention_2"
    assert choose_attention("cpu", "bf16")[0] == "sdpa"
