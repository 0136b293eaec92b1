"""Step 5: pretrain a Llama-architecture decoder on packed data, with accelerate.

    accelerate launch --mixed_precision bf16 scripts/40_pretrain.py \\
        --config config/pretrain/training/chinchilla_tiny_500m.json \\
        --data_dirs data/processed/tiny_23M_1024 \\
        --tokenizer_dir data/models/tokenizers/spm_32k \\
        --output_dir checkpoints/pretrain --num_workers 4

The run folder is <output_dir>/<architecture name>/ (e.g. checkpoints/pretrain/tiny/)
with step_N/ checkpoints, final/ (a Hugging Face model directory with the tokenizer),
metrics.jsonl and tensorboard/. Rerunning a finished run does nothing; rerunning an
interrupted one with the same config continues from its latest checkpoint
(--resume forces that, --force starts over). Plain `python scripts/40_pretrain.py`
and `lmforge pretrain` run the same code in one process; on CPU too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.artifacts import (
    MANIFEST_NAME,
    check_tokenizer_lineage,
    child_dir,
    describe_input,
    prepare_output_dir,
    read_json,
)
from lmforge.config import load_config, parse_set_overrides, spec, to_dict
from lmforge.data.packed import open_packed_dir
from lmforge.data.pretrain_batches import PackedBatches, Prefetcher, eval_batches
from lmforge.data.sampler import normalise_weights
from lmforge.errors import ConfigError
from lmforge.log import get_logger, human_count, peak_rss_mb
from lmforge.model.architecture import (
    choose_attention,
    count_parameters,
    flops_per_token,
    load_architecture,
    quiet_transformers,
)
from lmforge.model.card import write_cards
from lmforge.model.decoder import build_decoder, scale_residual_init
from lmforge.model.hf_files import RUN_TOKENIZER_DIR, prepare_run_tokenizer, set_chat_generation
from lmforge.model.init_from import check_shape, check_source, load_initial_weights
from lmforge.model.init_from import identity as init_identity
from lmforge.pipeline.stage import StagePlan, run_stage
from lmforge.tokenizer.spm import load_tokenizer_artifact
from lmforge.training.limits import check_pretrain_fits
from lmforge.training.loop import (
    LATER_KEYS_AS_BEFORE,
    CheckpointMeta,
    TrainingConfig,
    _duration,
    auto_split,
    make_accelerator,
    run_training,
    scaled_warmup,
)
from lmforge.training.resume import choose_resume, clear_run_dir

log = get_logger(__name__)

STAGE = "pretrain"

# Flags that override a `training.*` key (the plan's flags plus common knobs).
TRAINING_FLAGS = {
    "max_steps": int, "per_device_batch_size": int, "gradient_accumulation_steps": int, "learning_rate": float,
    "warmup_steps": int, "eval_every": int, "save_every": int, "keep_last": int, "log_every": int, "seed": int,
    "stop_after_steps": int,
}


@dataclass
class PretrainConfig:
    """A pretraining config file: which architecture, and how to train it."""

    architecture: str = spec(help="architecture JSON, relative to the working directory or the repository")
    training: TrainingConfig = field(default_factory=TrainingConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pretraining config JSON")
    parser.add_argument("--data_dirs", nargs="+", required=True, help="packed data directories (lmforge pack)")
    parser.add_argument("--data_weights", nargs="+", type=float, help="sampling weight of each --data_dirs entry")
    parser.add_argument("--tokenizer_dir", required=True, help="the tokenizer the data was packed with")
    parser.add_argument("--output_dir", required=True, help="run folder goes to <output_dir>/<architecture name>/")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="accepted for the plan's command; packed rows are memmapped and read in-process")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the latest step_N/ of the run folder, or from the given one")
    parser.add_argument("--force", action="store_true", help="start over even if the run is complete or has checkpoints")
    parser.add_argument("--init_from", "--init-from", dest="init_from", default=None, metavar="MODEL_DIR",
                        help="start from these weights (same architecture and tokenizer) instead of random ones")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set training.max_steps=100 (repeatable)")
    for name, kind in TRAINING_FLAGS.items():
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"override training.{name}")


# ---------------------------------------------------------------- setup (no torch needed)

@dataclass
class Plan:
    """Everything resolved before training starts."""

    cfg: PretrainConfig
    arch: object
    arch_path: Path
    tokenizer: object
    packed: list
    weights: list[float]
    run_dir: Path
    identity: dict
    inputs: dict


def resolve_architecture_path(value: str, config_path: Path) -> Path:
    """Relative to the working directory first, then to any parent of the config file."""
    candidate = Path(value)
    if candidate.is_absolute() or candidate.is_file():
        return candidate
    for parent in config_path.resolve().parents:
        if (parent / candidate).is_file():
            return parent / candidate
    raise ConfigError(f"{config_path}: architecture: file not found: {value}")


def load_stage_config(args: argparse.Namespace) -> PretrainConfig:
    overrides = parse_set_overrides(args.set)
    for name in TRAINING_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[f"training.{name}"] = value
    overrides.update(scaled_warmup(args.config, overrides))
    return load_config(args.config, PretrainConfig, overrides)


def build_plan(args: argparse.Namespace) -> Plan:

    cfg = load_stage_config(args)
    arch_path = resolve_architecture_path(cfg.architecture, Path(args.config))
    arch = load_architecture(arch_path)
    tokenizer = load_tokenizer_artifact(args.tokenizer_dir)
    packed = [open_packed_dir(d) for d in args.data_dirs]
    for p in packed:
        check_tokenizer_lineage(tokenizer.sha256, f"tokenizer {args.tokenizer_dir}", p.tokenizer_sha256,
                                f"packed data {p.path}")
    lengths = {p.seq_length for p in packed}
    if len(lengths) > 1:
        raise ConfigError(f"--data_dirs were packed with different sequence lengths {sorted(lengths)}")
    seq_length = lengths.pop()
    if seq_length > arch.max_position_embeddings:
        raise ConfigError(f"{arch_path}: max_position_embeddings ({arch.max_position_embeddings}) is shorter than "
                          f"the packed sequences ({seq_length})")
    weights = normalise_weights(args.data_weights, len(packed))
    run_dir = child_dir(args.output_dir, arch.name, f"{arch_path}: name")  # never "../x" or "/abs"
    training = to_dict(cfg.training)
    training.pop("stop_after_steps")  # stopping early does not change what the run is
    training.pop("report_to", None)  # where metrics are sent does not change what the run is
    for key, before in LATER_KEYS_AS_BEFORE.items():  # runs from before these keys keep their identity
        if training.get(key) == before:
            training.pop(key)
    identity = {"architecture": to_dict(arch), "architecture_file": str(arch_path), "training": training,
                "vocab_size": tokenizer.vocab_size, "seq_length": seq_length,
                "data_dirs": [str(p.path) for p in packed], "data_weights": weights,
                # what the data *are*: resume refuses other data under the same paths
                "data_identities": [describe_input(p.path)["identity"] for p in packed]}
    inputs = {"tokenizer": str(args.tokenizer_dir)}
    if getattr(args, "init_from", None):  # checked now, before any output is written
        check_shape(check_source(args.init_from, tokenizer.sha256), arch, tokenizer.vocab_size)
        identity["init_from"], inputs["init_from"] = init_identity(args.init_from), str(args.init_from)
    inputs.update({("data" if len(packed) == 1 else f"data_{i}"): str(p.path) for i, p in enumerate(packed)})
    return Plan(cfg, arch, arch_path, tokenizer, packed, weights, run_dir, identity, inputs)


def derived_figures(plan: Plan, world_size: int) -> dict:

    t = plan.cfg.training
    seq = plan.identity["seq_length"]
    global_batch = t.sequences_per_step(world_size)
    train_sequences = sum(len(p.train) for p in plan.packed)
    epochs = [t.max_steps * global_batch * w / len(p.train) for w, p in zip(plan.weights, plan.packed)]
    return {"parameters": count_parameters(plan.arch, plan.tokenizer.vocab_size), "seq_length": seq,
            "sequences_per_step": global_batch, "tokens_per_step": global_batch * seq,
            "total_tokens": global_batch * seq * t.max_steps, "train_sequences": train_sequences,
            "epochs": epochs, "world_size": world_size}


def describe(args: argparse.Namespace) -> dict[str, str]:
    """Derived figures of this invocation, without training (for `lmforge run --dry-run`)."""
    plan = build_plan(args)
    f = derived_figures(plan, world_size=1)
    return {"parameters": human_count(f["parameters"]), "tokens per step": f"{f['tokens_per_step']:,}",
            "total tokens": human_count(f["total_tokens"]), "steps": f"{plan.cfg.training.max_steps:,}",
            "epochs": ", ".join(f"{e:.2f}" for e in f["epochs"]), "run folder": str(plan.run_dir)}


# ---------------------------------------------------------------- main

def main(args: argparse.Namespace) -> int:
    plan = build_plan(args)
    stage_plan = StagePlan(STAGE, plan.run_dir / "final", plan.identity, plan.inputs,
                           force=args.force, run_anyway="--resume" if args.resume else None, workdir=plan.run_dir)
    run_stage(stage_plan, lambda _: train(args, plan))
    return 0


def train(args: argparse.Namespace, plan: Plan) -> dict | None:
    """Train, checkpoint and save final/; returns final/'s manifest (None if the run stopped early)."""
    from accelerate.utils import set_seed

    quiet_transformers()
    t = plan.cfg.training
    accelerator = make_accelerator(t)

    check_pretrain_fits(plan.arch, plan.tokenizer.vocab_size, plan.identity["seq_length"], t.per_device_batch_size,
                        accelerator.device)  # absurd sizes stop here, before any allocation
    main_process = accelerator.is_main_process
    resume_from = choose_resume(plan.run_dir, plan.identity, resume=args.resume, force=args.force)
    if main_process:

        prepare_output_dir(plan.run_dir)
        if args.force and resume_from is None:
            clear_run_dir(plan.run_dir)
        prepare_run_tokenizer(args.tokenizer_dir, plan.run_dir, plan.arch.max_position_embeddings)
    accelerator.wait_for_everyone()

    set_seed(t.seed)
    attn, why = choose_attention(accelerator.device.type, accelerator.mixed_precision)
    # lmforge's training decoder: Llama weights, fused step (lmforge.model.decoder); final/ is a plain HF Llama.
    model = build_decoder(plan.arch, plan.tokenizer.vocab_size, seed=t.seed)
    model.set_attention(attn)
    if t.scale_residual_init and not getattr(args, "init_from", None):
        scale_residual_init(model)  # a fresh model only; a resumed run reloads its weights anyway
    set_chat_generation(model)  # saved models stop at </s> and <|im_end|>
    if getattr(args, "init_from", None):
        load_initial_weights(model, args.init_from)
    figures = derived_figures(plan, accelerator.num_processes)
    if main_process:
        announce(plan, figures, attn, why, accelerator)
    t = auto_split(model, t, figures["seq_length"], plan.tokenizer.vocab_size, accelerator)
    batches = PackedBatches([p.train for p in plan.packed], plan.weights, micro_batch=t.per_device_batch_size,
                            accumulation=t.gradient_accumulation_steps, rank=accelerator.process_index,
                            world=accelerator.num_processes, seed=t.seed)
    if accelerator.device.type == "cuda":  # pinned batches read ahead by a thread: the copy overlaps compute
        batches = Prefetcher(batches, t.gradient_accumulation_steps, pin=True)
    # The configured micro-batch, not the probed one: the evaluation subset is the same rows on every
    # device (evaluation runs eagerly, so its batch shape costs no recompile).
    evals = eval_batches([p.val for p in plan.packed], num_batches=t.eval_batches,
                         micro_batch=plan.cfg.training.per_device_batch_size,
                         rank=accelerator.process_index, world=accelerator.num_processes)
    meta = CheckpointMeta(stage=STAGE, config=plan.identity, tokenizer_dir=str(plan.run_dir / RUN_TOKENIZER_DIR),
                          tokenizer_sha256=plan.tokenizer.sha256, inputs=plan.inputs,
                          extra_figures={"parameters": figures["parameters"], "attention": attn,
                                         "tokens_per_step": figures["tokens_per_step"],
                                         "mixed_precision": accelerator.mixed_precision,
                                         "micro_batch": t.per_device_batch_size,
                                         "gradient_accumulation_steps": t.gradient_accumulation_steps})
    try:
        result = run_training(model, batches, evals, t, plan.run_dir, accelerator=accelerator, meta=meta,
                              resume_from=resume_from,
                              flops_per_token=flops_per_token(plan.arch, figures["seq_length"], plan.tokenizer.vocab_size))
    finally:
        if isinstance(batches, Prefetcher):
            batches.close()
    if main_process:
        if result.final_dir:
            write_cards(result.final_dir)  # README.md beside (not in) the manifest: eval updates it
        summarise(result, plan)
    return read_json(result.final_dir / MANIFEST_NAME, "manifest") if result.final_dir else None


def announce(plan: Plan, f: dict, attn: str, why: str, accelerator) -> None:
    t = plan.cfg.training
    log.info("Tokenizer SHA256 validated: %s (%s, %d tokens) matches %s", plan.tokenizer.sha256[:16] + "…",
             plan.tokenizer.path, plan.tokenizer.vocab_size, ", ".join(str(p.path) for p in plan.packed))
    log.info("Model: %s parameters (%s: %d layers, hidden %d, %d heads)", human_count(f["parameters"]),
             plan.arch.name, plan.arch.num_layers, plan.arch.hidden_size, plan.arch.num_heads)
    log.info("Attention: %s (%s)", attn, why)
    log.info("Device: %s x %d process(es), mixed precision %s", accelerator.device.type, accelerator.num_processes,
             accelerator.mixed_precision)
    for p, w in zip(plan.packed, plan.weights):
        log.info("Dataset: %s train sequences, %s val sequences of %d tokens in %s (weight %.2f)",
                 human_count(len(p.train)), human_count(len(p.val) if p.val else 0), p.seq_length, p.path, w)
    log.info("Batch: %d per device x %d accumulation x %d processes = %d sequences = %s tokens per step",
             t.per_device_batch_size, t.gradient_accumulation_steps, f["world_size"], f["sequences_per_step"],
             f"{f['tokens_per_step']:,}")
    log.info("Schedule: %s steps = %s tokens, %s epochs; lr %.2e %s, warmup %d", f"{t.max_steps:,}",
             human_count(f["total_tokens"]), ", ".join(f"{e:.2f}" for e in f["epochs"]), t.learning_rate,
             t.lr_scheduler, t.warmup_steps)
    if t.optimizer != "adamw":  # the plan's AdamW goes unsaid; anything else is named
        log.info("Optimizer: %s (Muon on hidden matrices at %g x lr, AdamW on embedding and norms)", t.optimizer,
                 t.muon_lr_scale)
    for p, e in zip(plan.packed, f["epochs"]):
        if e > 1.0:
            log.warning("the schedule wraps the data: %.2f epochs over %s (samples repeat; consider more data "
                        "or fewer steps)", e, p.path)


def summarise(result, plan: Plan) -> None:

    names = [p.name for p in result.checkpoints] + (["final"] if result.final_dir else [])
    title = "Training complete!" if result.final_dir else f"Training stopped at step {result.steps} as asked"
    lines = [f"✅ {title}", f"   📊 Steps: {result.steps:,}",
             f"   📉 Final loss: {result.final_loss:.4f} (mean of the last {result.final_loss_steps} steps)"
             if result.final_loss is not None else "   📉 Final loss: n/a"]
    if result.final_eval:
        lines.append(f"   🧪 Validation: loss {result.final_eval['eval_loss']:.4f}, "
                     f"perplexity {result.final_eval['eval_ppl']:.2f}")
    lines += [f"   🔢 Tokens seen: {result.tokens_seen:,}",
              f"   ⏱️  Duration: {_duration(result.elapsed_s)}",
              f"   💾 Checkpoints: {', '.join(names) if names else 'none'}",
              f"   📁 Output: {plan.run_dir}",
              f"   🧠 Peak host memory: {peak_rss_mb():.0f} MiB"]
    print("\n".join(lines), flush=True)
