"""Step 8: LoRA fine-tuning of a base model on weighted ChatML SFT datasets.

Loads the base model (a Hugging Face model directory, e.g. checkpoints/pretrain/tiny/final),
wraps it with PEFT LoRA adapters, and trains them with the loop shared with pretraining
(`lmforge.training.loop`: accumulation, mixed precision, periodic eval, checkpoints, exact
resume). Each example comes from one of --data_dirs with probability --data_weights;
the realised mix is logged. Loss is taken only on assistant tokens (the SFT mask).

Before anything runs, the tokenizer lineage is checked: the base model's
tokenizer_sha256, every SFT dataset's and --tokenizer_path's must be equal.

final/ holds the merged model (config.json + model.safetensors, loadable by
AutoModelForCausalLM; generation_config.json stops at </s> and <|im_end|>), the adapter
in final/adapter/ (adapter_config.json with the base's absolute path, base_model.json
with its path relative to the adapter, adapter_model.safetensors), the tokenizer files
with the ChatML chat template, manifest.json (stage "sft"), and model cards
(README.md in final/ and final/adapter/). --model_path may also be a plain Hugging Face
Llama directory with its own tokenizer (lmforge.model.external).

Example:
  accelerate launch --mixed_precision bf16 scripts/70_train_sft.py \\
      --config config/sft/training/lora_optimal_tiny_23m.json \\
      --model_path checkpoints/pretrain/tiny/final \\
      --data_dirs data/sft_processed/alpaca_chatml data/sft_processed/oasst1_chatml \\
      --data_weights 0.7 0.3 --tokenizer_path data/models/tokenizers/spm_32k \\
      --output_dir checkpoints/sft/tiny
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.artifacts import MANIFEST_NAME, check_tokenizer_lineage, load_manifest, prepare_output_dir, read_json
from lmforge.config import load_config, parse_set_overrides, spec, to_dict
from lmforge.data.packed import check_token_range
from lmforge.data.sampler import normalise_weights
from lmforge.data.sft_batches import WeightedBatches, iter_eval_batches
from lmforge.data.sft_dataset import STAGE as DATA_STAGE
from lmforge.data.sft_dataset import SFTSplit
from lmforge.errors import ConfigError
from lmforge.log import get_logger, human_count
from lmforge.model.adapter import record_base
from lmforge.model.architecture import quiet_transformers
from lmforge.model.card import write_cards
from lmforge.model.external import base_tokenizer_sha256, check_external_model, is_external_model, load_any_tokenizer
from lmforge.model.hf_files import RUN_TOKENIZER_DIR, model_context, prepare_run_tokenizer, set_chat_generation
from lmforge.model.loading import load_causal_lm
from lmforge.pipeline.stage import StagePlan, run_stage
from lmforge.training.limits import check_sft_fits
from lmforge.training.loop import CheckpointMeta, TrainingConfig, make_accelerator, run_training, scaled_warmup
from lmforge.training.resume import choose_resume, clear_run_dir

log = get_logger(__name__)
STAGE = "sft"
ADAPTER_DIR = "adapter"
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    r: int = spec(32, min=1, help="adapter rank")
    alpha: int = spec(64, min=1, help="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = spec(0.05, min=0.0, max=0.9, help="dropout on the adapter input")
    target_modules: list[str] = spec(default_factory=lambda: list(DEFAULT_TARGETS),
                                     help="module names wrapped with adapters (attention and MLP projections)")


@dataclass
class DataSettings:
    weights: list[float] | None = spec(None, help="default sampling weights (--data_weights overrides)")
    seed: int | None = spec(None, help="sampling seed (null: training.seed)")


@dataclass
class SFTConfig:
    lora: LoraSettings = spec(default_factory=LoraSettings)
    training: TrainingConfig = spec(default_factory=TrainingConfig)
    data: DataSettings = spec(default_factory=DataSettings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="SFT training config (JSON)")
    parser.add_argument("--model_path", "--model-path", dest="model_path", required=True,
                        help="base model directory (pretraining final/)")
    parser.add_argument("--data_dirs", "--data-dirs", dest="data_dirs", nargs="+", required=True,
                        help="SFT data directories (lmforge sft-data outputs)")
    parser.add_argument("--data_weights", "--data-weights", dest="data_weights", nargs="+", type=float,
                        help="sampling weight of each data dir (default: config data.weights, else equal)")
    parser.add_argument("--tokenizer_path", "--tokenizer-path", dest="tokenizer_path", required=True,
                        help="tokenizer directory (must be the base model's)")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True,
                        help="run directory: step_N/, final/, metrics.jsonl")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from a step_N/ (or, bare, the latest one). Without it, an interrupted "
                             "run with the same config continues by itself")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--force", action="store_true", help="retrain even if final/ is up to date")


@dataclass
class Plan:
    """Everything resolved before training: config, lineage, weights, identity."""

    cfg: object
    tokenizer_sha256: str
    weights: list[float]
    data_manifests: list[dict]
    config_dict: dict
    inputs: dict[str, str] = field(default_factory=dict)
    tokenizer: object = None
    external: dict | None = None  # lmforge.model.external record when the base model is not lmforge's


def resolve(args) -> Plan:
    """Validate config and flags, and check tokenizer lineage across all inputs."""

    overrides = parse_set_overrides(args.set)
    overrides.update(scaled_warmup(args.config, overrides))
    cfg = load_config(args.config, SFTConfig, overrides)
    tokenizer = load_any_tokenizer(args.tokenizer_path)
    if is_external_model(args.model_path):  # a plain Hugging Face model: its own tokenizer files name it
        check_external_model(args.model_path)
    base_sha = base_tokenizer_sha256(args.model_path)
    check_tokenizer_lineage(tokenizer.sha256, f"tokenizer {args.tokenizer_path}", base_sha,
                            f"base model {args.model_path}")
    manifests = []
    for d in args.data_dirs:
        m = load_manifest(d, DATA_STAGE, verify="cached")  # sha256 on first use, cached by size/mtime/inode
        check_tokenizer_lineage(tokenizer.sha256, f"tokenizer {args.tokenizer_path}", m.get("tokenizer_sha256"),
                                f"SFT data {d}")
        manifests.append(m)
    if len(set(map(str, args.data_dirs))) != len(args.data_dirs):
        raise ConfigError("--data_dirs lists the same directory twice")
    weights = normalise_weights(args.data_weights or cfg.data.weights, len(args.data_dirs))
    sft_dict = to_dict(cfg)
    # A time-slicing stop does not change what is trained: keep it out of the run identity.
    sft_dict["training"].pop("stop_after_steps", None)
    sft_dict["training"].pop("report_to", None)  # where metrics are sent does not change what the run is
    config_dict = {"sft": sft_dict, "data_dirs": [str(d) for d in args.data_dirs], "data_weights": weights}
    inputs = {"base_model": args.model_path, "tokenizer": args.tokenizer_path}
    inputs.update({f"sft_data_{i}": d for i, d in enumerate(args.data_dirs)})
    return Plan(cfg, tokenizer.sha256, weights, manifests, config_dict, inputs, tokenizer,
                getattr(tokenizer, "record", None))


def describe(args) -> dict[str, str]:
    plan = resolve(args)
    t = plan.cfg.training
    per_step = t.per_device_batch_size * t.gradient_accumulation_steps
    total = per_step * t.max_steps
    figures = {"steps": str(t.max_steps), "conversations_per_step": f"{per_step} (per process)",
               "conversations": human_count(total), "lora": f"r={plan.cfg.lora.r} alpha={plan.cfg.lora.alpha}"}
    for d, w, m in zip(plan.config_dict["data_dirs"], plan.weights, plan.data_manifests):
        n = m.get("figures", {}).get("examples", {}).get("train") or 0
        figures[f"epochs[{Path(d).name}]"] = f"{total * w / n:.2f}" if n else "?"
    return figures


# ---------------------------------------------------------------- model

def build_lora_model(model_path: str, lora: LoraSettings):
    """The base model (fp32 master weights) wrapped with trainable LoRA adapters."""
    import torch
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(model_path, torch.float32)  # no custom code, safetensors only
    present = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise ConfigError(f"lora.target_modules: {missing} not found in {model_path} "
                          f"(modules present include {sorted(present)[:12]})")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def export_final(model, out_dir: Path, *, base_dir: str | None = None, final_dir: Path | None = None,
                 tokenizer_sha256: str | None = None, stop_ids: list[int] | None = None) -> None:
    """final/: merged weights at the top, the adapter in adapter/ (the loop adds the tokenizer).

    The adapter records its base by absolute path and relative to itself
    (`lmforge.model.adapter`), so it loads from any working directory and after a move.
    """
    import copy

    out_dir = Path(out_dir)
    # The adapter lives in a subfolder: an adapter_config.json at the top makes
    # transformers load the directory as that adapter over its original base path.
    model.save_pretrained(out_dir / ADAPTER_DIR, safe_serialization=True)
    (out_dir / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # PEFT's empty card; lmforge writes its own
    if base_dir is not None:
        record_base(out_dir / ADAPTER_DIR, base_dir, tokenizer_sha256=tokenizer_sha256,
                    final_adapter_dir=(final_dir or out_dir) / ADAPTER_DIR)
    merged = copy.deepcopy(model).merge_and_unload()
    set_chat_generation(merged, stop_ids)
    merged.save_pretrained(out_dir, safe_serialization=True)


# ---------------------------------------------------------------- run

def main(args) -> int:
    plan = resolve(args)
    out = Path(args.output_dir)
    stage_plan = StagePlan(STAGE, out / "final", plan.config_dict, plan.inputs,
                           force=args.force, run_anyway="--resume" if args.resume else None, workdir=out)
    run_stage(stage_plan, lambda _: train(args, plan))
    return 0


def train(args, plan: Plan) -> dict | None:
    """Train the adapters, checkpoint, export final/; returns final/'s manifest (None if stopped early)."""
    from functools import partial

    from accelerate.utils import set_seed

    # Resume rules are pretraining's: same config continues by itself, --resume forces, --force restarts.

    quiet_transformers()
    cfg, t = plan.cfg, plan.cfg.training
    out = Path(args.output_dir)
    accelerator = make_accelerator(t)
    check_memory(args, plan, accelerator.device)  # absurd sizes stop here, before any allocation
    resume_from = choose_resume(out, plan.config_dict, resume=args.resume, force=args.force)
    if accelerator.is_main_process:
        prepare_output_dir(out)
        if args.force and resume_from is None:
            clear_run_dir(out)
        prepare_run_tokenizer(args.tokenizer_path, out, model_context(args.model_path))
    accelerator.wait_for_everyone()
    set_seed(t.seed)  # LoRA's A matrices are initialised at random
    pad_id = plan.tokenizer.pad_id
    model = build_lora_model(args.model_path, cfg.lora)
    trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                        sum(p.numel() for p in model.parameters()))
    log.info("base model %s; LoRA r=%d alpha=%d dropout=%.2f on %s: %s trainable of %s parameters (%.2f%%)",
             args.model_path, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, ",".join(cfg.lora.target_modules),
             human_count(trainable), human_count(total), 100 * trainable / total)
    train_splits = [SFTSplit(d, "train") for d in args.data_dirs]
    check_token_ids(args.data_dirs, model.config.vocab_size)  # an id past the vocab: one error, not IndexError
    batches = WeightedBatches(train_splits, plan.weights, t.per_device_batch_size, pad_id,
                              seed=cfg.data.seed if cfg.data.seed is not None else t.seed,
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
    for d, w, s in zip(args.data_dirs, plan.weights, train_splits):
        log.info("data %s: %d train conversations, weight %.3f", d, len(s), w)
    eval_batches = _eval_batches(args.data_dirs, t, pad_id, accelerator, iter_eval_batches, SFTSplit)
    micro_batches = t.max_steps * t.gradient_accumulation_steps * accelerator.num_processes
    figures = {"trainable_parameters": trainable, "total_parameters": total, "data_weights": plan.weights,
               "realised_mix": [round(r, 4) for r in batches.mix_after(micro_batches)],
               "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout}}
    if plan.external:
        figures["external_tokenizer"] = plan.external  # shown by `lmforge verify` and the model card
    meta = CheckpointMeta(stage=STAGE, config=plan.config_dict, tokenizer_dir=str(out / RUN_TOKENIZER_DIR),
                          tokenizer_sha256=plan.tokenizer_sha256, inputs=plan.inputs,
                          extra_figures=figures,
                          export_final=partial(export_final, base_dir=args.model_path, final_dir=out / "final",
                                               tokenizer_sha256=plan.tokenizer_sha256,
                                               stop_ids=[plan.tokenizer.eos_id, plan.tokenizer.im_end_id]))
    result = run_training(model, batches, eval_batches, t, out, accelerator=accelerator, meta=meta,
                          resume_from=resume_from)
    if accelerator.is_main_process:
        if result.final_dir:
            write_cards(result.final_dir)  # final/README.md and final/adapter/README.md
        print_summary(plan, result, batches, out)
    return read_json(result.final_dir / MANIFEST_NAME, "manifest") if result.final_dir else None


def check_token_ids(data_dirs, vocab_size: int) -> None:
    """Every token id of the SFT data (train and val) is inside the model's vocabulary
    (the maximum is computed once per file version and cached, like its sha256)."""

    for d in data_dirs:
        for split in ("train", "val"):
            if (Path(d) / f"{split}.idx").is_file():
                check_token_range(SFTSplit(d, split).tokens, vocab_size)


def check_memory(args, plan: Plan, device) -> None:
    """Refuse a micro-batch that cannot fit (see lmforge.training.limits), from the base model's config."""

    base = Path(args.model_path)
    seq = max(int(((m.get("config") or {}).get("processing") or {}).get("max_length") or 1024)
              for m in plan.data_manifests)
    weights = sum(p.stat().st_size for p in base.glob("model*.safetensors"))
    check_sft_fits(read_json(base / "config.json", "model config"), weights, seq,
                   plan.cfg.training.per_device_batch_size, device)


def _eval_batches(data_dirs, t, pad_id, accelerator, iter_eval_batches, SFTSplit) -> list[dict] | None:
    """A fixed list of val micro-batches over every dataset, dealt round-robin to the ranks."""
    if t.eval_batches == 0:
        return None
    collected: list[dict] = []
    per_dir = max(1, t.eval_batches // len(data_dirs))
    for d in data_dirs:
        split = SFTSplit(d, "val")
        if len(split):
            collected += list(iter_eval_batches(split, t.per_device_batch_size, pad_id,
                                                limit=per_dir * t.per_device_batch_size))
    if not collected:
        return None  # no val data anywhere: every rank skips evaluation alike
    # A rank dealt nothing still gets [] (not None): it must join the loss reduce the others wait in.
    return collected[accelerator.process_index::accelerator.num_processes]


def print_summary(plan: Plan, result, batches, out: Path) -> None:
    mix = ", ".join(f"{Path(d).name} {r:.1%} (target {w:.1%})"
                    for d, r, w in zip(plan.config_dict["data_dirs"], batches.realised_mix(), plan.weights))
    log.info("realised mix: %s", mix)
    first = result.history[0]["loss"] if result.history else None
    ev = result.final_eval or {}
    print("✅ SFT training complete!\n"
          f"   📊 Steps: {result.steps}\n"
          f"   📉 Loss: {first if first is None else f'{first:.3f}'} (step 1) → "
          f"{'?' if result.final_loss is None else f'{result.final_loss:.3f}'} "
          f"(mean of the last {result.final_loss_steps} steps)\n"
          f"   🧪 Val (assistant tokens): loss {ev.get('eval_loss', float('nan')):.3f}, "
          f"ppl {ev.get('eval_ppl', float('nan')):.2f}\n"
          f"   🎛️  Realised mix: {mix}\n"
          f"   ⏱️  Duration: {result.elapsed_s / 60:.1f} min\n"
          f"   💾 Final: {result.final_dir or out / 'final'}")
