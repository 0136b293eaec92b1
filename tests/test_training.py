"""The shared training loop: schedule, data order, loss, exact resume, NaN stop, keep-last-K, LoRA."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmforge.training.checkpoint import list_checkpoints, load_model_weights
from lmforge.data.pretrain_batches import PackedBatches, eval_batches
from lmforge.data.packed import open_packed_dir
from lmforge.model.architecture import ArchitectureConfig, build_model, quiet_transformers
from lmforge.training.loop import (CheckpointMeta, TrainingConfig, TrainingDiverged, lr_at, make_accelerator,
                                   run_training)
from lmforge.training.optim import param_groups

ARCH = ArchitectureConfig(name="micro", vocab_size=400, hidden_size=64, num_layers=2, num_heads=2,
                          intermediate_size=128, max_position_embeddings=64)


def cfg(**kw) -> TrainingConfig:
    base = dict(max_steps=12, per_device_batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-3,
                warmup_steps=2, eval_every=0, eval_batches=2, save_every=0, log_every=4, tensorboard=False)
    base.update(kw)
    return TrainingConfig(**base)


def train(packed_dir, run_dir, c: TrainingConfig, resume=None, model=None, hook=None):
    quiet_transformers()
    packed = open_packed_dir(packed_dir)
    model = model or build_model(ARCH, seed=c.seed)
    if hook:
        hook(model)
    batches = PackedBatches([packed.train], None, micro_batch=c.per_device_batch_size,
                            accumulation=c.gradient_accumulation_steps, seed=c.seed)
    evals = eval_batches([packed.val], num_batches=c.eval_batches, micro_batch=c.per_device_batch_size)
    meta = CheckpointMeta(stage="pretrain", config={"test": True}, tokenizer_sha256=packed.tokenizer_sha256)
    result = run_training(model, batches, evals, c, run_dir, accelerator=make_accelerator(c), meta=meta,
                          resume_from=resume)
    return result, model


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    c = cfg(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, c) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone cosine decay
    assert lr_at(100, c) == pytest.approx(1e-4)
    assert lr_at(55, c) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way through the cosine
    assert lr_at(50, cfg(max_steps=100, warmup_steps=0, lr_scheduler="constant", learning_rate=1e-3)) == 1e-3


def test_weight_decay_groups_spare_norms_and_frozen_params():
    model = build_model(ARCH)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2 * ARCH.num_layers + 1
    assert not any(p is model.model.layers[0].mlp.up_proj.weight for p in decay["params"])


def test_batches_are_deterministic_disjoint_per_rank_and_split_independent(tiny_packed):
    train = open_packed_dir(tiny_packed).train
    one = PackedBatches([train], None, micro_batch=2, accumulation=2, seed=7)
    ranks = [PackedBatches([train], None, micro_batch=2, accumulation=1, rank=r, world=2, seed=7) for r in range(2)]
    for _ in range(3):
        whole = torch.cat([next(one)["input_ids"], next(one)["input_ids"]])
        split = torch.cat([next(r)["input_ids"] for r in ranks])
        assert torch.equal(whole, split)  # same global batch, however it is divided
        assert not torch.equal(split[:2], split[2:])
    again = PackedBatches([train], None, micro_batch=2, accumulation=2, seed=7)
    assert torch.equal(next(again)["input_ids"], torch.from_numpy(np.stack([train[i] for i in
                                                                             np.random.default_rng([7, 0, 0]).permutation(len(train))[:2]])).long())
    other = PackedBatches([train], None, micro_batch=2, accumulation=2, seed=8)
    assert not torch.equal(next(other)["input_ids"], next(PackedBatches([train], None, micro_batch=2, accumulation=2, seed=7))["input_ids"])


def test_batch_position_resumes_exactly_and_weights_are_respected(tiny_packed):
    train = open_packed_dir(tiny_packed).train
    a = PackedBatches([train, train], [0.75, 0.25], micro_batch=4, accumulation=1, seed=1)
    for _ in range(5):
        next(a)
    state = a.state_dict()
    assert state["per_source"] == [15, 5]  # exact 3:1 proportions
    b = PackedBatches([train, train], [0.75, 0.25], micro_batch=4, accumulation=1, seed=1)
    b.load_state_dict(state)
    for _ in range(3):
        assert torch.equal(next(a)["input_ids"], next(b)["input_ids"])


def test_eval_subset_is_fixed_and_shared_across_ranks(tiny_packed):
    val = open_packed_dir(tiny_packed).val
    full = eval_batches([val], num_batches=4, micro_batch=3)
    halves = [eval_batches([val], num_batches=4, micro_batch=3, rank=r, world=2) for r in range(2)]
    assert len(full) == 4 and [len(h) for h in halves] == [2, 2]
    assert torch.equal(full[1]["input_ids"], halves[1][0]["input_ids"])
    assert torch.equal(full[0]["input_ids"], eval_batches([val], num_batches=4, micro_batch=3)[0]["input_ids"])


def test_loss_falls_and_eval_runs(tiny_packed, tmp_path):
    result, _ = train(tiny_packed, tmp_path / "run", cfg(max_steps=30, eval_every=15))
    losses = [h["loss"] for h in result.history]
    assert math.log(400) - 0.3 < losses[0] < math.log(400) + 0.5  # starts near uniform over the vocabulary
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    assert result.final_eval["eval_loss"] < losses[0] - 1.0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any('"eval_loss"' in line for line in lines)


def test_resume_is_exact(tiny_packed, tmp_path):
    straight, _ = train(tiny_packed, tmp_path / "a", cfg(max_steps=8))
    first, _ = train(tiny_packed, tmp_path / "b", cfg(max_steps=8, stop_after_steps=4))
    assert first.stopped_early and first.final_dir is None and first.checkpoints[-1].name == "step_4"
    second, _ = train(tiny_packed, tmp_path / "b", cfg(max_steps=8), resume=tmp_path / "b" / "step_4")
    resumed = [h["loss"] for h in first.history] + [h["loss"] for h in second.history]
    assert len(resumed) == 8
    assert np.allclose(resumed, [h["loss"] for h in straight.history], rtol=0, atol=1e-6)
    assert second.tokens_seen == straight.tokens_seen
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # no duplicated history after the resume


def poison_steps(bad_steps: set[int], accumulation: int = 2):
    """A forward hook that turns the final norm's output to inf on the given (1-based) optimizer steps."""
    calls = {"n": 0}

    def install(model):
        def hook(module, inputs, output):
            calls["n"] += 1
            step = (calls["n"] - 1) // accumulation + 1
            return output * float("inf") if step in bad_steps else output
        model.model.norm.register_forward_hook(hook)
    return install


def test_non_finite_steps_are_skipped_and_n_in_a_row_stop_the_run(tiny_packed, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"3 non-finite steps in a row \(steps 6-8\).*step_6"):
        train(tiny_packed, tmp_path / "run", cfg(max_steps=10, save_every=2, max_nonfinite_steps=3),
              hook=poison_steps(set(range(6, 11))))
    kept = [p.name for _, p in list_checkpoints(tmp_path / "run")]
    assert kept == ["step_2", "step_4", "step_6"] and not (tmp_path / "run" / "final").exists()  # none after the stop
    model = build_model(ARCH)
    load_model_weights(model, tmp_path / "run" / "step_6")  # saved mid-streak: the skipped step changed nothing
    assert all(torch.isfinite(p).all() for p in model.parameters())
    optimizer_state = torch.load(tmp_path / "run" / "step_6" / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in optimizer_state["state"].values()} == {5.0}  # step 6 was not applied


def test_a_lone_non_finite_step_is_skipped_and_the_run_finishes(tiny_packed, tmp_path):
    result, model = train(tiny_packed, tmp_path / "run", cfg(max_steps=6, save_every=6, max_nonfinite_steps=2),
                          hook=poison_steps({3}))
    assert result.final_dir is not None
    skipped = [h["step"] for h in result.history if h.get("skipped")]
    assert skipped == [3] and not math.isfinite(result.history[2]["loss"])
    assert all(math.isfinite(h["loss"]) for h in result.history if h["step"] != 3)
    optimizer_state = torch.load(tmp_path / "run" / "step_6" / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in optimizer_state["state"].values()} == {5.0}  # 6 steps, 5 updates
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((result.final_dir / "manifest.json").read_text())["figures"]["skipped_steps"] == 1


def test_muon_skips_a_lone_non_finite_step_without_reading_it_back(tiny_packed, tmp_path, monkeypatch):
    """Muon+AdamW takes the device-side skip (the loop never reads the flag per step) and the
    skipped step leaves the run finite."""
    reads = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(t.shape) or original(t))
    result, model = train(tiny_packed, tmp_path / "run", cfg(max_steps=6, max_nonfinite_steps=2, optimizer="muon"),
                          hook=poison_steps({3}))
    monkeypatch.undo()
    assert [h["step"] for h in result.history if h.get("skipped")] == [3]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not reads  # no bool(tensor) anywhere in the steps: nothing waited on the device


def test_keep_last_k(tiny_packed, tmp_path):
    result, _ = train(tiny_packed, tmp_path / "run", cfg(max_steps=8, save_every=2, keep_last=2))
    assert [p.name for _, p in list_checkpoints(tmp_path / "run")] == ["step_6", "step_8"]
    assert result.final_dir is not None


def test_lora_model_trains_saves_adapters_and_resumes_exactly(tiny_packed, tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora():
        base = build_model(ARCH, seed=3)
        return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))

    c = cfg(max_steps=6, learning_rate=1e-2)
    straight, _ = train(tiny_packed, tmp_path / "a", c, model=lora())
    first, _ = train(tiny_packed, tmp_path / "b", cfg(max_steps=6, learning_rate=1e-2, stop_after_steps=3), model=lora())
    assert (tmp_path / "b" / "step_3" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "b" / "step_3" / "model.safetensors").exists()  # only what training changes
    second, _ = train(tiny_packed, tmp_path / "b", c, model=lora(), resume=tmp_path / "b" / "step_3")
    resumed = [h["loss"] for h in first.history + second.history]
    assert np.allclose(resumed, [h["loss"] for h in straight.history], rtol=0, atol=1e-6)  # dropout RNG restored too
