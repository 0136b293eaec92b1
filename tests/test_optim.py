"""Optimizers and schedules of the recommended recipe (issue 15): Muon + AdamW, wsd, residual init.

Each optimizer lmforge ships must keep the loop's guarantees: exact resume (optimizer
state included) and two CPU ranks equal to one process with accumulation.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from lmforge.config import load_config
from lmforge.model.decoder import build_decoder, scale_residual_init
from lmforge.errors import LmforgeError
from lmforge.model.architecture import ArchitectureConfig
from lmforge.training.optim import MuonAdamW, build_optimizer, split_parameters
from lmforge.training.loop import TrainingConfig, lr_at
from test_pretrain import losses, run_cli, write_config
from test_training import cfg, train

MICRO = ArchitectureConfig(name="micro", vocab_size=400, hidden_size=64, num_layers=2, num_heads=2,
                           intermediate_size=128, max_position_embeddings=64)
MUON = dict(optimizer="muon", muon_lr_scale=2.0, lr_scheduler="wsd", decay_fraction=0.25, min_lr_ratio=0.0)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    c = TrainingConfig(max_steps=20, warmup_steps=2, learning_rate=1.0, lr_scheduler="wsd", decay_fraction=0.25,
                       min_lr_ratio=0.0)
    lrs = [lr_at(s, c) for s in range(20)]
    assert lrs[:2] == [0.5, 1.0] and lrs[2:15] == [1.0] * 13  # warmup, then the stable phase
    assert lrs[15:] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])  # 5 decay steps, none wasted at 0
    floor = TrainingConfig(max_steps=20, warmup_steps=2, learning_rate=1.0, lr_scheduler="wsd", decay_fraction=0.25,
                           min_lr_ratio=0.1)
    assert 0.1 < lr_at(19, floor) < lr_at(18, floor) < 1.0


@pytest.mark.parametrize("training, message", [
    ({"optimizer": "sgd"}, "optimizer"),
    ({"lr_scheduler": "wsd", "max_steps": 10, "warmup_steps": 5, "decay_fraction": 0.6}, "wsd decay"),
    ({"muon_lr_scale": 3.0}, "only apply with optimizer"),
    ({"optimizer": "muon", "muon_momentum": 1.5}, "muon_momentum"),
])
def test_bad_optimizer_settings_are_one_clear_config_error(tmp_path, training, message):
    from lmforge.stages.pretrain import PretrainConfig

    path = write_config(tmp_path, **training)
    with pytest.raises(LmforgeError, match=message):
        load_config(path, PretrainConfig)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = build_decoder(MICRO, seed=0)
    hidden, other, vectors = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)].rsplit(".", 2)[-2] for p in hidden) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] * 2)
    assert [names[id(p)] for p in other] == ["model.embed_tokens.weight"]  # tied: also the output projection
    assert all(p.ndim == 1 for p in vectors) and len(vectors) == 2 * 2 + 1
    opt = build_optimizer(model, TrainingConfig(**MUON, learning_rate=1e-3), "cpu")
    assert isinstance(opt, MuonAdamW)
    # The loop sets lr on the outer groups: the very dicts the two torch optimizers step with.
    for group in opt.param_groups:
        group["lr"] = 0.5 * group["lr_scale"]
    assert [g["lr"] for g in opt._muon.param_groups] == [1.0] and {g["lr"] for g in opt._adamw.param_groups} == {0.5}
    plain = build_optimizer(model, TrainingConfig(learning_rate=1e-3), "cpu")
    assert isinstance(plain, torch.optim.AdamW) and len(plain.param_groups) == 2
    # AdamW keeps the model's parameter order (state dicts index by position: older checkpoints resume).
    ordered = [p for _, p in model.named_parameters() if p.ndim >= 2]
    assert [id(p) for p in plain.param_groups[0]["params"]] == [id(p) for p in ordered]


def test_an_untied_hf_llama_keeps_its_output_head_on_adamw():
    from lmforge.model.architecture import build_model

    untied = ArchitectureConfig(**{**MICRO.__dict__, "tie_word_embeddings": False})
    model = build_model(untied, seed=0)
    hidden, other, _ = split_parameters(model)
    assert {id(p) for p in other} == {id(model.model.embed_tokens.weight), id(model.lm_head.weight)}
    assert len(hidden) == 7 * 2


def test_muon_skips_a_non_finite_step_on_the_device_exactly():
    """With `found_inf` set, weights, Muon momenta and AdamW moments stay bit for bit what they were
    (no host read), and the next good step equals that of a twin that never saw the bad one."""
    import copy

    model = build_decoder(MICRO, seed=0)
    opt = build_optimizer(model, TrainingConfig(**MUON, learning_rate=1e-2), "cpu")
    assert isinstance(opt, MuonAdamW) and opt.skips_on_device

    def step(flag: float, poison: bool = False) -> None:
        ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(len(opt._muon.state) + int(flag)))
        model(ids, labels=ids).backward()
        if poison:
            for p in model.parameters():
                p.grad[..., 0] = float("nan")
        opt.found_inf = torch.tensor(flag)
        opt.step()
        del opt.found_inf
        opt.zero_grad(set_to_none=True)

    step(0.0)
    before_weights = copy.deepcopy(model.state_dict())
    before_state = copy.deepcopy(opt.state_dict())
    twin_model, twin_opt_state = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    step(1.0, poison=True)
    assert all(torch.equal(v, before_weights[k]) for k, v in model.state_dict().items())
    after = opt.state_dict()
    for part in ("muon", "adamw"):
        for key, values in before_state[part]["state"].items():
            assert all(torch.equal(t, after[part]["state"][key][name]) for name, t in values.items()), (part, name)

    twin_opt = build_optimizer(twin_model, TrainingConfig(**MUON, learning_rate=1e-2), "cpu")
    twin_opt.load_state_dict(twin_opt_state)
    ids = torch.randint(0, 400, (2, 16), generator=torch.Generator().manual_seed(9))
    for m, o in ((model, opt), (twin_model, twin_opt)):
        m(ids, labels=ids).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin_model.parameters()))


def test_muon_state_round_trips_and_a_foreign_state_is_refused():
    model = build_decoder(MICRO, seed=0)
    opt = build_optimizer(model, TrainingConfig(**MUON), "cpu")
    ids = torch.randint(0, 400, (2, 16))
    model(ids, labels=ids).backward()
    opt.step()
    state = opt.state_dict()
    again = build_optimizer(model, TrainingConfig(**MUON), "cpu")
    again.load_state_dict(state)
    buf = next(iter(again._muon.state.values()))["momentum_buffer"]
    assert torch.equal(buf, next(iter(opt._muon.state.values()))["momentum_buffer"]) and buf.abs().sum() > 0
    # After a load (accelerate.prepare does one) the groups the schedule sets are still the ones stepped.
    for group in again.param_groups:
        group["lr"] = 0.25
    assert {g["lr"] for g in again._muon.param_groups + again._adamw.param_groups} == {0.25}
    with pytest.raises(ValueError, match="Muon"):
        again.load_state_dict(build_optimizer(model, TrainingConfig(), "cpu").state_dict())


def test_the_schedule_reaches_both_optimizers_during_training(tiny_packed, tmp_path):
    """Through accelerate.prepare and the loop: the lr actually stepped follows lr_at (issue-15 regression)."""
    seen = []
    original = MuonAdamW.step

    def spy(self, closure=None):
        seen.append([g["lr"] for g in self._muon.param_groups + self._adamw.param_groups])
        return original(self, closure)

    c = cfg(max_steps=6, **MUON)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MuonAdamW, "step", spy)
        train(tiny_packed, tmp_path / "run", c)
    expected = [[lr_at(s, c) * 2.0, lr_at(s, c), lr_at(s, c)] for s in range(6)]  # muon_lr_scale 2 on Muon
    assert np.allclose(seen, expected, rtol=1e-12) and seen[0] != seen[-1]


def test_muon_wsd_resume_is_exact(tiny_packed, tmp_path):
    c = dict(max_steps=8, **MUON)
    straight, _ = train(tiny_packed, tmp_path / "a", cfg(**c))
    first, _ = train(tiny_packed, tmp_path / "b", cfg(**c, stop_after_steps=4))
    second, _ = train(tiny_packed, tmp_path / "b", cfg(**c), resume=tmp_path / "b" / "step_4")
    resumed = [h["loss"] for h in first.history] + [h["loss"] for h in second.history]
    assert np.allclose(resumed, [h["loss"] for h in straight.history], rtol=0, atol=1e-6)
    # Muon moved the weights differently from AdamW (the optimizer really is in use).
    adamw, _ = train(tiny_packed, tmp_path / "c", cfg(max_steps=8))
    assert abs(adamw.history[-1]["loss"] - straight.history[-1]["loss"]) > 1e-3


def test_muon_two_cpu_processes_match_one(tmp_path, tiny_tokenizer, tiny_packed):
    """torchrun x2 without accumulation == one process with accumulation 2, with Muon + wsd."""
    common = ["--data_dirs", str(tiny_packed), "--tokenizer_dir", str(tiny_tokenizer), "--set", "training.save_every=0"]
    muon = {**MUON, "decay_fraction": 0.5}
    one = run_cli("--config", str(write_config(tmp_path, **muon)), "--output_dir", str(tmp_path / "one"), *common)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli("--config", str(write_config(tmp_path, gradient_accumulation_steps=1, **muon)), "--output_dir",
                  str(tmp_path / "two"), *common, env_extra={"ACCELERATE_USE_CPU": "1"},
                  launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"])
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = losses(tmp_path / "one" / "micro"), losses(tmp_path / "two" / "micro")
    assert len(a) == len(b) == 6 and np.allclose(a, b, rtol=0, atol=1e-5)


def test_scaled_residual_init_shrinks_only_the_residual_writers():
    base, scaled = build_decoder(MICRO, seed=3), build_decoder(MICRO, seed=3)
    scale_residual_init(scaled)
    for (name, p), (_, q) in zip(base.named_parameters(), scaled.named_parameters()):
        factor = 0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0  # 1/sqrt(2 x 2 layers)
        assert torch.allclose(q, p * factor), name


def test_recommended_config_is_the_plans_run_with_another_recipe():
    """Same model and token budget as the plan's config; only the recipe (optimizer, lr, schedule, batch) differs."""
    import json
    from pathlib import Path

    from lmforge.stages.pretrain import PretrainConfig

    repo = Path(__file__).resolve().parents[1]
    plan = load_config(repo / "config/pretrain/training/chinchilla_tiny_500m.json", PretrainConfig)
    rec = load_config(repo / "config/pretrain/training/recommended_tiny.json", PretrainConfig)
    assert plan.training.optimizer == "adamw" and plan.training.lr_scheduler == "cosine"  # the plan stays the plan
    assert rec.training.optimizer == "muon" and rec.architecture == plan.architecture
    budget = [c.training.max_steps * c.training.sequences_per_step(1) for c in (plan, rec)]
    assert budget[0] == budget[1] and rec.training.seed == plan.training.seed  # the same tokens
    assert not rec.training.check()
    # The pipeline preset is the plan's, step 5 on the recommended config, its outputs beside the plan's.
    tiny = json.loads((repo / "config/pipelines/tiny_23m.json").read_text())["stages"]
    recommended = json.loads((repo / "config/pipelines/tiny_23m_recommended.json").read_text())["stages"]
    assert [s["name"] for s in tiny] == [s["name"] for s in recommended]
    assert tiny[:4] == recommended[:4]  # the same data, built once
    assert recommended[4]["args"]["--config"] == "config/pretrain/training/recommended_tiny.json"
    assert recommended[4]["args"]["--output_dir"] != tiny[4]["args"]["--output_dir"]


def test_recommended_pipeline_dry_runs(capsys, monkeypatch):
    from pathlib import Path

    from lmforge.cli import main as cli

    monkeypatch.delenv("LMFORGE_MIRROR", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert cli(["run", "config/pipelines/tiny_23m_recommended.json", "--dry-run", "--run-dir", "/nonexistent/run"]) == 0
    out = capsys.readouterr().out
    assert out.count("  $ ") == 10 and "recommended_tiny.json" in out


def test_a_run_from_before_the_new_keys_keeps_its_identity(tmp_path, tiny_tokenizer, tiny_packed):
    """Default optimizer keys stay out of the run identity (old runs stay up to date); Muon is a different run."""
    import argparse

    from lmforge.stages.pretrain import add_arguments, build_plan

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--data_dirs", str(tiny_packed), "--tokenizer_dir", str(tiny_tokenizer), "--output_dir", str(tmp_path / "o")]
    plain = build_plan(parser.parse_args(["--config", str(write_config(tmp_path)), *base])).identity["training"]
    assert not {"optimizer", "muon_lr_scale", "scale_residual_init", "decay_fraction"} & set(plain)
    muon = build_plan(parser.parse_args(["--config", str(write_config(tmp_path, optimizer="muon")), *base]))
    assert muon.identity["training"]["optimizer"] == "muon"


def test_muon_refuses_sharded_parameters_with_one_clear_error():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from lmforge.training.loop import make_optimizer

    model = build_decoder(MICRO, seed=0)
    with pytest.raises(LmforgeError, match="whole parameter matrices.*FSDP"):
        make_optimizer(model, TrainingConfig(**MUON), "cpu", SimpleNamespace(distributed_type=DistributedType.FSDP))
    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    assert isinstance(make_optimizer(model, TrainingConfig(**MUON), "cpu", ddp), MuonAdamW)
