"""The training loop shared by pretraining and SFT, on top of accelerate.

One function, `run_training`, owns everything that happens between "a model and a
stream of batches" and "a trained model plus checkpoints":

- AdamW (fused on CUDA) with weight-decay groups: matrices (linear weights and the
  embedding, which doubles as the tied output projection) decay; norms and biases
  do not. Only parameters with `requires_grad` are optimised, so a PEFT LoRA model
  trains its adapters alone.
- A learning-rate schedule that is a pure function of the step (warmup, then
  cosine / linear / constant down to `min_lr_ratio`), so resuming needs no
  scheduler magic.
- Gradient accumulation with the loss normalised by the number of label tokens of
  the whole optimizer step across every micro-batch and every rank. Packed
  pretraining rows all have the same count, SFT rows do not; this normalisation
  makes one process with accumulation A and A processes without accumulation give
  the same update.
- Mixed precision via accelerate (`accelerate launch --mixed_precision bf16`, or
  `TrainingConfig.mixed_precision`), gradient clipping, optional `torch.compile`.
- Logging: one line per `log_every` steps (step, loss, lr, tok/s, MFU, ETA),
  `metrics.jsonl` in the run directory, TensorBoard when installed.
- Periodic evaluation (mean loss and perplexity over a fixed set of batches).
- Checkpoints every `save_every` steps through `lmforge.training.checkpoint` (atomic,
  keep-last-K), and exact resume: model, optimizer, scheduler, data position, RNG.
- No host syncs in a step: loss sums, token counts, the gradient norm and the
  non-finite flag stay on the device and are read back together only on logging,
  evaluation and checkpoint steps.
- Failure handling: a non-finite step is skipped on the device (the fused AdamW
  kernel's `found_inf`; fp16 goes through accelerate's GradScaler); after
  `max_nonfinite_steps` in a row the run stops with `TrainingDiverged`, before any
  further checkpoint. CUDA out-of-memory raises `OutOfMemory` with advice.
- lmforge's decoder (`lmforge.model.decoder`) returns its loss from the forward and is
  compiled with it (`compile: auto` = on CUDA); transformers/PEFT models return
  logits and the loss is taken here.

Using it (pretraining does exactly this, SFT does the same with a LoRA model)::

    accelerator = make_accelerator(cfg)
    result = run_training(model, batches, eval_batches, cfg, run_dir,
                          accelerator=accelerator, meta=CheckpointMeta(...),
                          resume_from=None)

`batches` is any `BatchSource`: an iterator of micro-batches for *this rank* with
`state_dict()` / `load_state_dict()` so a resumed run reads exactly the data it
would have read. `lmforge.data.pretrain_batches.PackedBatches` is the pretraining one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from lmforge.artifacts import atomic_path, atomic_write_json, write_manifest
from lmforge.config import spec, to_dict
from lmforge.errors import LmforgeError
from lmforge.log import get_logger, human_count
from lmforge.tokenizer.spm import copy_tokenizer_files
from lmforge.training.checkpoint import (
    META_FILE,
    TerminationRequest,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    loss_window,
    metrics_lines_up_to,
    restore_rng_state,
    restored_losses,
    rotate_checkpoints,
    save_checkpoint,
    save_model,
    step_dir,
)
from lmforge.training.optim import build_optimizer
from lmforge.training.progress import Trackers, TrainingProgress, requested_trackers
from lmforge.training.step import (
    compile_in_place,
    enable_tf32,
    forward_backward_probe,
    is_compile_failure,
    peak_memory_gib,
    probe_micro_batch,
    reset_peak_memory,
    resolve_switch,
    uncompile,
)

log = get_logger(__name__)

IGNORE_INDEX = -100


# ---------------------------------------------------------------- public types

# Training keys added after runs already existed (issue 15), with the values that mean
# "as before". At these values they are left out of a run's identity, so a run started
# before they existed is still up to date / resumable with the same config.
LATER_KEYS_AS_BEFORE = {"optimizer": "adamw", "muon_momentum": 0.95, "muon_lr_scale": 1.0,
                        "scale_residual_init": False, "decay_fraction": 0.2}

@dataclass
class TrainingConfig:
    """Optimisation, schedule, evaluation and checkpoint settings (the `training` block of a config)."""

    max_steps: int = spec(1000, min=1, help="optimizer steps in the whole schedule")
    per_device_batch_size: int = spec(8, min=1, help="sequences per micro-batch on each device")
    gradient_accumulation_steps: int = spec(1, min=1, help="micro-batches per optimizer step")
    learning_rate: float = spec(3e-4, min=0.0, help="peak learning rate")
    lr_scheduler: str = spec("cosine", choices=("cosine", "linear", "constant", "wsd"),
                             help="after warmup: cosine or linear to min_lr_ratio, constant, or wsd (warmup-stable-"
                             "decay: the peak held, then a linear decay to min_lr_ratio over the last decay_fraction)")
    decay_fraction: float = spec(0.2, min=0.0, max=1.0, help="wsd: share of max_steps spent in the final decay")
    optimizer: str = spec("adamw", choices=("adamw", "muon"),
                          help="adamw; or muon: Muon on hidden matrices, AdamW on embedding/output/norms (lmforge.training.optim)")
    muon_momentum: float = spec(0.95, min=0.0, max=1.0, help="muon: Nesterov momentum of the Muon groups")
    muon_lr_scale: float = spec(1.0, min=0.0, help="muon: Muon groups' lr as a multiple of the schedule's "
                                "(Muon's lr is RMS-matched to AdamW's, so 1.0 is a sane start)")
    scale_residual_init: bool = spec(False, help="fresh models only: initialise the projections that write into the "
                                     "residual stream (o_proj, down_proj) with std / sqrt(2 x layers)")
    warmup_steps: int = spec(0, min=0, help="linear warmup from 0 to the peak")
    min_lr_ratio: float = spec(0.1, min=0.0, max=1.0, help="final lr as a fraction of the peak (cosine/linear)")
    weight_decay: float = spec(0.1, min=0.0, help="AdamW decay on matrices; none on norms and biases")
    adam_beta1: float = spec(0.9, min=0.0, max=1.0)
    adam_beta2: float = spec(0.95, min=0.0, max=1.0)
    adam_eps: float = spec(1e-8, min=0.0)
    max_grad_norm: float = spec(1.0, min=0.0, help="clip the global gradient norm; 0 disables")
    eval_every: int = spec(0, min=0, help="evaluate every N steps (0: only at the end)")
    eval_batches: int = spec(20, min=0, help="micro-batches in the fixed evaluation subset (per run, split across ranks)")
    save_every: int = spec(0, min=0, help="checkpoint every N steps (0: only final)")
    keep_last: int = spec(0, min=0, help="keep only the newest K step_N checkpoints (0: keep all)")
    log_every: int = spec(10, min=1, help="log a progress line every N steps")
    seed: int = spec(42, help="seeds model init, data order and dropout")
    compile: bool | str = spec("auto", choices=(True, False, "auto"),
                               help="torch.compile the model and its loss; auto: on for lmforge's decoder on CUDA")
    auto_micro_batch: bool | str = spec("auto", choices=(True, False, "auto"),
                                        help="probe the largest micro-batch that fits and derive the accumulation, "
                                        "keeping per_device_batch_size x gradient_accumulation_steps; auto: on CUDA")
    max_nonfinite_steps: int = spec(3, min=1, help="a non-finite step is skipped; stop after this many in a row")
    mixed_precision: str | None = spec(None, choices=(None, "no", "bf16", "fp16"),
                                       help="null: as `accelerate launch` says; without it, bf16 on a CUDA "
                                       "card that supports it, else no")
    tensorboard: bool = spec(True, help="also write TensorBoard events when tensorboard is installed")
    report_to: str = spec("", help="experiment trackers through accelerate, comma-separated (tensorboard, wandb, "
                          "trackio, mlflow, ...); a missing one is one warning line. Not part of the run identity")
    peak_tflops: float | None = spec(None, min=0.0, help="device peak for MFU; null: known GPUs, else MFU not shown")
    stop_after_steps: int | None = spec(None, min=1, help="stop (with a checkpoint) after this step without "
                                        "changing the schedule; for time-sliced jobs. Not part of the run identity")

    def check(self) -> list[str]:
        problems = []
        if not (_is_count(self.max_steps, 1) and _is_count(self.warmup_steps, 0)):
            return problems  # the field errors say it; a schedule check would blame the other field
        if self.warmup_steps >= self.max_steps and self.lr_scheduler != "constant":
            problems.append(f"warmup_steps ({self.warmup_steps}) must be smaller than max_steps ({self.max_steps})")
        if self.lr_scheduler == "wsd" and self.warmup_steps + wsd_decay_steps(self) > self.max_steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) plus the wsd decay ({wsd_decay_steps(self)} steps, "
                            f"decay_fraction {self.decay_fraction}) exceed max_steps ({self.max_steps})")
        muon_only = ("muon_momentum", "muon_lr_scale")
        if self.optimizer != "muon" and any(getattr(self, k) != LATER_KEYS_AS_BEFORE[k] for k in muon_only):
            problems.append("muon_momentum and muon_lr_scale only apply with optimizer \"muon\"")
        return problems

    def sequences_per_step(self, world_size: int) -> int:
        """Sequences in one optimizer step over all devices (the global batch)."""
        return self.per_device_batch_size * self.gradient_accumulation_steps * world_size


class BatchSource(Protocol):
    """Micro-batches for this rank, resumable.

    `next(source)` returns a dict with `input_ids` (LongTensor [B, T]) and `labels`
    (same shape, IGNORE_INDEX where no loss is taken; the model shifts, so
    `labels = input_ids` for plain language modelling) and optionally
    `attention_mask`. The loop draws exactly `gradient_accumulation_steps`
    micro-batches per optimizer step, and calls `state_dict()` only between steps.
    Every rank must see the same number of micro-batches per step.
    """

    def __iter__(self) -> "BatchSource": ...
    def __next__(self) -> dict: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class CheckpointMeta:
    """What a checkpoint records beside the weights, and how the model is exported.

    stage: manifest stage of step_N/ and final/ ("pretrain", "sft").
    config: the resolved stage config (JSON data), stored in meta and manifests.
    tokenizer_dir / tokenizer_sha256: tokenizer files are copied into each model dir.
    inputs: role -> artifact dir, recorded in manifests.
    extra_figures: added to the final manifest's figures (e.g. parameter counts).
    export_final: optional hook(unwrapped_model, out_dir) replacing
        `save_pretrained` for final/ only (SFT uses it to merge LoRA weights).
    """

    stage: str
    config: dict
    tokenizer_dir: str | None = None
    tokenizer_sha256: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    extra_figures: dict[str, Any] = field(default_factory=dict)
    export_final: Callable[[Any, Path], None] | None = None


@dataclass
class TrainResult:
    """What a run did. `history` holds one dict per optimizer step run in this process."""

    steps: int
    tokens_seen: int
    final_loss: float | None
    final_eval: dict | None
    elapsed_s: float
    final_dir: Path | None
    checkpoints: list[Path]
    history: list[dict]
    stopped_early: bool = False
    final_loss_steps: int = 0   # how many recent steps `final_loss` averages


class TrainingDiverged(LmforgeError):
    """The loss or the gradient became NaN/inf; the last good checkpoint is kept."""


class OutOfMemory(LmforgeError):
    """The device ran out of memory; the message says what to change."""


def _is_count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


# ---------------------------------------------------------------- accelerator & schedule

def make_accelerator(cfg: TrainingConfig):
    """An `Accelerator` for `cfg`: mixed precision from the config or from `accelerate launch`.

    Accumulation is handled by the loop itself (not accelerate's), because the
    loop normalises the loss over the whole step.
    """
    from accelerate import Accelerator

    precision = resolve_precision(cfg.mixed_precision)
    return Accelerator(**({} if precision is None else {"mixed_precision": precision}))


def resolve_precision(configured: str | None) -> str | None:
    """The mixed precision to ask accelerate for: the config's; else None where `accelerate launch`
    (or its config) has chosen; else bf16 on a CUDA card that has it, so `lmforge pretrain` on a GPU
    does not silently train in fp32; else None (fp32 on CPU)."""
    if configured is not None:
        return configured
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None


def auto_split(model, cfg: TrainingConfig, seq_length: int, vocab_size: int, accelerator) -> TrainingConfig:
    """The config with the fastest micro-batch / accumulation split that keeps the global batch.

    With `auto_micro_batch` on (auto: on CUDA) the largest divisor of
    per_device_batch_size x gradient_accumulation_steps that survives a forward and
    backward on this device becomes the micro-batch; the accumulation follows, so every
    optimizer step still averages the same number of sequences. Off: `cfg` unchanged.
    """
    import dataclasses

    device_type = accelerator.device.type
    if not resolve_switch(cfg.auto_micro_batch, auto=device_type == "cuda"):
        return cfg
    per_device = cfg.per_device_batch_size * cfg.gradient_accumulation_steps
    model.to(accelerator.device)
    was_training = model.training
    model.train()
    probe = forward_backward_probe(model, training_loss_sum, vocab_size, seq_length, accelerator.device,
                                   accelerator.autocast)
    micro = probe_micro_batch(probe, per_device, cfg.per_device_batch_size, device_type)
    model.train(was_training)
    reset_peak_memory(device_type)  # the run's peak VRAM is training's, not the largest (eager) probe's
    chosen = dataclasses.replace(cfg, per_device_batch_size=micro, gradient_accumulation_steps=per_device // micro)
    if accelerator.is_main_process:
        log.info("Micro-batch: probed on %s, %d x %d accumulation (configured %d x %d; same %d sequences per device "
                 "per step)", device_type, micro, chosen.gradient_accumulation_steps, cfg.per_device_batch_size,
                 cfg.gradient_accumulation_steps, per_device)
    return chosen


def lr_at(step: int, cfg: TrainingConfig) -> float:
    """Learning rate used for optimizer step `step` (0-based)."""
    peak = cfg.learning_rate
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_scheduler == "constant":
        return peak
    floor = peak * cfg.min_lr_ratio
    if cfg.lr_scheduler == "wsd":
        decay = wsd_decay_steps(cfg)
        left = cfg.max_steps - step  # steps left, this one included
        # linear over the decay steps, strictly between the peak and the floor (no step wasted at either)
        return peak if left > decay else floor + (peak - floor) * left / (decay + 1)
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress_ = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_scheduler == "linear":
        return floor + (peak - floor) * (1.0 - progress_)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress_))


def wsd_decay_steps(cfg: TrainingConfig) -> int:
    """Steps in the final decay of a wsd schedule."""
    return round(cfg.max_steps * cfg.decay_fraction)


def make_optimizer(model, cfg: TrainingConfig, device_type: str, accelerator=None):
    """The optimizer `cfg.optimizer` names (lmforge.training.optim: AdamW, or Muon with AdamW)."""
    if cfg.optimizer == "muon" and accelerator is not None:
        from accelerate.utils import DistributedType

        # Muon orthogonalises whole matrices: sharded parameters (FSDP, DeepSpeed ZeRO-3) would break it.
        if accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_GPU,
                                                DistributedType.MULTI_CPU):
            raise LmforgeError(f"optimizer \"muon\" needs whole parameter matrices on every process; "
                               f"{accelerator.distributed_type.value} shards them: use \"adamw\" or plain DDP")
    return build_optimizer(model, cfg, device_type)


def _innermost(optimizer):
    """The torch optimizer under accelerate's wrapper(s)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def training_loss_sum(model, batch: dict):
    """Summed next-token loss of a micro-batch (fp32 scalar), whatever the model kind.

    lmforge's decoder computes it inside its forward (chunked, compiled with the model);
    a transformers/PEFT model returns logits and the loss is taken here.
    """
    target = getattr(model, "module", model)  # DDP keeps the real model in .module
    if getattr(target, "computes_loss", False):
        return model(batch["input_ids"], labels=batch["labels"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    return causal_lm_loss_sum(logits, batch["labels"])


def causal_lm_loss_sum(logits, labels):
    """Summed next-token cross-entropy (labels shifted here, IGNORE_INDEX skipped), in fp32."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def label_tokens(labels):
    """Tokens that carry loss in a micro-batch (after the one-position shift), as a device tensor."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def count_label_tokens(labels) -> int:
    """`label_tokens`, read back as an int."""
    return int(label_tokens(labels))


# Dense bf16 peaks (TFLOP/s) for MFU; others can set training.peak_tflops.
KNOWN_PEAKS_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.2,
                      "A10G": 125.0, "L4": 121.0, "3090": 71.0}


def device_peak_tflops(cfg: TrainingConfig, device) -> float | None:
    """The peak used in MFU: the config's, else a known CUDA card's, else None (CPU)."""
    if cfg.peak_tflops:
        return cfg.peak_tflops
    if getattr(device, "type", "") != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_PEAKS_TFLOPS.items() if k in name), None)


# ---------------------------------------------------------------- the loop

def run_training(
    model,
    batches: BatchSource,
    eval_batches: Iterable[dict] | None,
    cfg: TrainingConfig,
    run_dir: str | Path,
    *,
    accelerator,
    meta: CheckpointMeta,
    resume_from: str | Path | None = None,
    flops_per_token: float | None = None,
) -> TrainResult:
    """Train `model` for `cfg.max_steps` optimizer steps; write checkpoints and final/.

    model: an unwrapped torch module whose forward takes input_ids (and
        attention_mask) and returns an object with `.logits`; a transformers
        PreTrainedModel or a PEFT model. Only `requires_grad` parameters train.
    batches: this rank's micro-batches (see BatchSource).
    eval_batches: a re-iterable of this rank's evaluation micro-batches (a list
        works), or None to skip evaluation.
    run_dir: where step_N/, final/, metrics.jsonl and tensorboard/ go.
    resume_from: a step_N/ directory to continue from exactly.
    flops_per_token: training FLOPs per token (for MFU); None hides MFU.

    Raises TrainingDiverged on NaN/inf and OutOfMemory on device OOM.
    """
    trainer = Trainer(model, batches, eval_batches, cfg, Path(run_dir), accelerator, meta, flops_per_token)
    if resume_from is not None:
        trainer.resume(Path(resume_from))
    return trainer.fit()


def evaluate(model, eval_batches: Iterable[dict], accelerator) -> dict:
    """Token-weighted mean loss and perplexity over `eval_batches`, reduced over ranks."""
    import torch

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for batch in eval_batches:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                if getattr(model, "computes_loss", False):
                    # .forward: eager, so a compiled training model does not recompile for no_grad
                    loss = model.forward(batch["input_ids"], labels=batch["labels"])
                else:
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
                    loss = causal_lm_loss_sum(logits, batch["labels"])
            total[0] += loss.double()
            total[1] += label_tokens(batch["labels"])  # on the device: no wait per batch
    loss_sum, tokens = accelerator.reduce(total, reduction="sum").tolist()
    model.train(was_training)
    if tokens == 0:
        return {}
    loss = loss_sum / tokens
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": int(tokens)}


# ---------------------------------------------------------------- implementation

class Trainer:
    """The state of one training run; `run_training` is its public face.

    A step never waits for the device: the loss sum, grad norm and non-finite flag of
    each step stay device tensors in `self._pending` and are read (one transfer for all
    of them) only when a log line, an evaluation, a checkpoint or the end needs them.
    """

    def __init__(self, model, batches, eval_batches, cfg: TrainingConfig, run_dir: Path, accelerator,
                 meta: CheckpointMeta, flops_per_token: float | None):

        self.acc = accelerator
        self.cfg = cfg
        self.run_dir = run_dir
        self.meta = meta
        self.batches = batches
        self.eval_batches = eval_batches
        self.flops_per_token = flops_per_token
        self.device_type = accelerator.device.type
        self.computes_loss = bool(getattr(model, "computes_loss", False))
        if enable_tf32(self.device_type) and accelerator.is_main_process:
            log.info("TF32 matmuls enabled")
        # auto: compile lmforge's decoder on CUDA; HF/PEFT models (SFT, variable lengths) only when asked.
        self.compiled = resolve_switch(cfg.compile, auto=self.computes_loss and self.device_type == "cuda")
        if self.compiled:
            compile_in_place(model)  # in place: parameter names (and so checkpoints) stay unchanged
        self._compile_checked = not self.compiled
        optimizer = make_optimizer(model, cfg, self.device_type, accelerator)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.inner_optimizer = _innermost(self.optimizer)
        self.skips_on_device = bool(getattr(self.inner_optimizer, "skips_on_device",
                                            self.inner_optimizer.defaults.get("fused")))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.peak_tflops = device_peak_tflops(cfg, accelerator.device)
        self.uniform_counts = bool(getattr(batches, "uniform_label_counts", False))
        self.step = 0
        self._tokens_host = 0
        self._tokens_device = None
        self._pending: list[dict] = []
        self._streak = None      # device: non-finite steps in a row
        self._tripped = None     # device: first step at which the streak reached the limit (0: never)
        self.history: list[dict] = []
        self.checkpoints: list[Path] = []
        self.last_eval: dict | None = None
        self.prior_losses: list[float] = []  # a resumed run's recent losses (checkpoint.restored_losses)
        self._tb = None
        if self.acc.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            if self.compiled:
                log.info("torch.compile: model and loss compiled (first step compiles)")

    # ------------------------------------------------------------ helpers

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model)

    @property
    def tokens_seen(self) -> int:
        if self._tokens_device is not None:
            return self._tokens_host + int(self._tokens_device)
        return self._tokens_host

    @tokens_seen.setter
    def tokens_seen(self, value: int) -> None:
        self._tokens_host, self._tokens_device = int(value), None

    def _tokens_known(self) -> int:
        """Tokens seen as far as the host knows without reading the device (progress display)."""
        if self._tokens_device is None:
            return self._tokens_host
        return self.history[-1]["tokens"] if self.history else self._tokens_host

    def _main(self) -> bool:
        return self.acc.is_main_process

    # ------------------------------------------------------------ one optimizer step

    def _step_counts(self, micro: list[dict]):
        """(scale, label_tokens, input_tokens) for this step over all ranks.

        Counted on the host from the CPU batches. When every rank's rows carry the same
        number of label tokens (packed pretraining) the totals are known without any
        collective; otherwise (SFT) one all-reduce on the device, never read back here.
        """
        import torch

        labels = sum(count_label_tokens(b["labels"]) for b in micro)
        inputs = sum(b["input_ids"].numel() for b in micro)
        world = self.acc.num_processes
        if world == 1 or self.uniform_counts:
            total = labels * world
            # DDP averages gradients over ranks, so scale by world/N to get sum/N overall.
            return world / max(1, total), total, inputs * world
        counts = self.acc.reduce(torch.tensor([labels, inputs], dtype=torch.float32, device=self.acc.device),
                                 reduction="sum")
        return world / counts[0].clamp(min=1), counts[0], counts[1]

    def _forward_backward(self, batch: dict, scale):
        """Loss sum of one micro-batch, backpropagated with `scale`; returns the detached sum.

        The first call of a compiled model is guarded: if dynamo/inductor fail (in the
        forward, or in the backward they compile lazily) the gradients are dropped, the
        model goes back to eager with one warning, and the micro-batch is redone.
        """
        if self._compile_checked:
            return self._run_micro(batch, scale)

        try:
            return self._run_micro(batch, scale)
        except Exception as exc:  # noqa: BLE001 - only compiler errors are swallowed, see below
            if not is_compile_failure(exc):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            uncompile(self.unwrapped)
            self.compiled = False
            log.warning("torch.compile failed (%s: %s); training eagerly", type(exc).__name__,
                        (str(exc).splitlines() or [""])[0][:200])
            return self._run_micro(batch, scale)
        finally:
            self._compile_checked = True

    def _run_micro(self, batch: dict, scale):
        loss = training_loss_sum(self.model, batch)
        self.acc.backward(loss * scale)
        return loss.detach().float()

    def _train_step(self) -> dict:
        import torch

        cfg, acc = self.cfg, self.acc
        micro = [next(self.batches) for _ in range(cfg.gradient_accumulation_steps)]
        scale, label_tokens, input_tokens = self._step_counts(micro)
        loss_sum = torch.zeros((), dtype=torch.float32, device=acc.device)
        for i, batch in enumerate(micro):
            batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                loss_sum += self._forward_backward(batch, scale)
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon groups may run at a multiple of the schedule
        grad_norm = self._clip()
        grad_norm = grad_norm.detach().float() if torch.is_tensor(grad_norm) else torch.tensor(float(grad_norm))
        bad = ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm.to(loss_sum.device)))
        self._apply_update(bad)
        # fp16: gradient overflows are the scaler's business (it skips and rescales); only a
        # non-finite loss counts towards stopping. Otherwise any skipped step counts.
        self._count_streak(bad if self.acc.scaler is None else ~torch.isfinite(loss_sum))
        if torch.is_tensor(input_tokens):
            self._tokens_device = input_tokens.detach() if self._tokens_device is None else self._tokens_device + input_tokens
        else:
            self._tokens_host += input_tokens
        record = {"step": self.step + 1, "lr": lr, "_loss_sum": loss_sum, "_grad_norm": grad_norm, "_bad": bad,
                  "_label_tokens": label_tokens, "step_tokens": input_tokens}
        self._pending.append(record)
        return record

    def _clip(self):
        """Clip the global gradient norm and return it (a device tensor).

        Single process and DDP: torch's foreach clipping directly (after unscaling fp16
        gradients), which costs a tenth of accelerate's generic wrapper per step; other
        backends (FSDP, DeepSpeed, XLA) keep accelerate's, which knows their sharding.
        """
        import torch
        from accelerate.utils import DistributedType

        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        plain = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        if self.acc.distributed_type not in plain:
            return self.acc.clip_grad_norm_(self.trainable, max_norm)
        if self.acc.scaler is not None:
            self.acc.unscale_gradients()
        return torch.nn.utils.clip_grad_norm_(self.trainable, max_norm, foreach=True)

    def _apply_update(self, bad) -> None:
        """optimizer.step(), skipped on the device when the step is non-finite.

        The fused AdamW kernels take a `found_inf` tensor (the hook GradScaler uses) and
        leave weights, moments and step counts untouched when it is set, so nothing is
        read back; Muon+AdamW honours it too (lmforge.training.optim). fp16 runs go through accelerate's GradScaler, which sets it itself
        from the gradients and lowers the scale on overflow. An unfused optimizer (a
        dtype the fused kernels lack) falls back to reading the flag.
        """
        if self.acc.scaler is None:
            if self.skips_on_device:
                self.inner_optimizer.found_inf = bad.float()
            elif bool(bad):
                self.optimizer.zero_grad(set_to_none=True)
                return
        try:
            self.optimizer.step()
        finally:
            if hasattr(self.inner_optimizer, "found_inf") and self.acc.scaler is None:
                del self.inner_optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)

    def _count_streak(self, bad) -> None:
        import torch

        if self._streak is None:
            self._streak = torch.zeros((), dtype=torch.int64, device=bad.device)
            self._tripped = torch.zeros((), dtype=torch.int64, device=bad.device)
        self._streak = (self._streak + 1) * bad
        newly = (self._streak >= self.cfg.max_nonfinite_steps) & (self._tripped == 0)
        self._tripped = torch.where(newly, torch.full_like(self._tripped, self.step + 1), self._tripped)

    def _flush(self) -> None:
        """Read the pending steps' figures back from the device (one transfer) into `history`."""
        import torch

        if not self._pending:
            return
        pending, self._pending = self._pending, []
        sums = torch.stack([r["_loss_sum"] for r in pending])
        if self.acc.num_processes > 1:
            sums = self.acc.reduce(sums, reduction="sum")
        labels = torch.stack([torch.as_tensor(r["_label_tokens"], dtype=torch.float32, device=sums.device)
                              for r in pending])
        norms = torch.stack([r["_grad_norm"].to(sums.device) for r in pending])
        flags = torch.stack([r["_bad"].to(sums.device) for r in pending]).float()
        tripped = self._tripped.to(sums.device).float().reshape(1) if self._tripped is not None \
            else torch.zeros(1, device=sums.device)
        values = torch.cat([sums / labels.clamp(min=1), norms, flags, tripped]).tolist()
        n = len(pending)
        for i, r in enumerate(pending):
            for key in [k for k in r if k.startswith("_")]:
                del r[key]
            r["step_tokens"] = int(r["step_tokens"])
            r.update(loss=values[i], grad_norm=values[n + i], tokens=None)
            if values[2 * n + i]:
                r["skipped"] = True
                if self._main():
                    log.warning("step %d: non-finite loss or gradient (loss %s, gradient norm %s): update skipped",
                                r["step"], values[i], values[n + i])
        total = self.tokens_seen
        for r in reversed(pending):  # tokens seen after each step, counted back from the running total
            r["tokens"] = total
            total -= r["step_tokens"]
        self.history.extend(pending)
        if values[-1]:
            self._diverged(int(values[-1]))

    def _diverged(self, at_step: int) -> None:

        last = self.checkpoints[-1] if self.checkpoints else None
        last = last or latest_checkpoint(self.run_dir)
        where = f"the last good checkpoint is {last} (resume with --resume {last} and a lower learning rate)" \
            if last else "no checkpoint was saved yet"
        n = self.cfg.max_nonfinite_steps
        raise TrainingDiverged(
            f"training diverged: {n} non-finite steps in a row (steps {at_step - n + 1}-{at_step}); "
            f"each update was skipped, so the weights are those of step {at_step - n}; {where}. "
            "Try a lower learning_rate, a longer warmup, or max_grad_norm 1.0.")

    # ------------------------------------------------------------ logging

    def _log_line(self, record: dict, window_s: float, window_tokens: int, elapsed: float, steps_here: int) -> None:

        tok_s = float(window_tokens) / window_s if window_s > 0 else 0.0
        mfu = None
        if self.flops_per_token and self.peak_tflops:
            mfu = tok_s * self.flops_per_token / (self.peak_tflops * 1e12 * self.acc.num_processes)
        left = self.cfg.max_steps - record["step"]
        eta = elapsed / max(1, steps_here) * left
        vram = peak_memory_gib(self.device_type)
        record.update(tok_s=round(tok_s, 1), mfu=mfu, elapsed_s=round(elapsed, 2))
        if vram is not None:
            record["peak_vram_gib"] = vram
        mfu_text = f"{mfu * 100:.1f}%" if mfu is not None else "n/a"
        if not self._main():
            return
        log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s | MFU %s | ETA %s%s", record["step"], self.cfg.max_steps,
                 record["loss"], record["lr"], human_count(tok_s), mfu_text, _duration(eta),
                 f" | peak VRAM {vram:.2f} GiB" if vram is not None else "")
        self._write_metrics(record)
        self._tensorboard({"train/loss": record["loss"], "train/lr": record["lr"], "train/grad_norm": record["grad_norm"],
                           "train/tok_s": tok_s}, record["step"])

    def _write_metrics(self, record: dict) -> None:
        if not self._main():
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _tensorboard(self, scalars: dict, step: int) -> None:
        """Every experiment tracker (lmforge.training.progress.Trackers), TensorBoard included."""
        if self._tb is None:

            asked, optional = requested_trackers(self.cfg.report_to, self.cfg.tensorboard)
            self._tb = Trackers(self.acc, self.run_dir, asked=asked, optional=optional,
                                project=f"lmforge-{self.meta.stage}", config=self.meta.config)
        self._tb.log(scalars, step)

    def _truncate_metrics(self, step: int) -> None:
        """A resumed run rewrites history after its checkpoint, so metrics.jsonl must forget it."""
        path = self.run_dir / "metrics.jsonl"
        if not (self._main() and path.is_file()):
            return

        kept = metrics_lines_up_to(path, step)  # tolerates a line torn by a kill
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    # ------------------------------------------------------------ eval & checkpoints

    def _evaluate(self) -> None:
        if self.eval_batches is None or self.cfg.eval_batches == 0:
            return
        # The unwrapped module (it keeps accelerate's autocast): DDP's forward could
        # start collectives that ranks with fewer eval batches would never join.
        result = evaluate(self.unwrapped, self.eval_batches, self.acc)
        if not result:
            return
        self.last_eval = {"step": self.step, **result}
        if self._main():
            log.info("eval step %d | val loss %.4f | val ppl %.2f", self.step, result["eval_loss"], result["eval_ppl"])
        self._write_metrics({"step": self.step, **result})
        self._tensorboard({"eval/loss": result["eval_loss"], "eval/ppl": result["eval_ppl"]}, self.step)

    def _meta_json(self) -> dict:

        self._flush()
        losses = loss_window(self.prior_losses, self.history, self.cfg.log_every)
        return {"stage": self.meta.stage, "step": self.step, "tokens_seen": self.tokens_seen,
                "data_state": self.batches.state_dict(), "config": self.meta.config, "training": to_dict(self.cfg),
                "tokenizer_sha256": self.meta.tokenizer_sha256, "world_size": self.acc.num_processes,
                "recent_loss": sum(losses) / len(losses) if losses else None, "recent_losses": losses,
                "last_eval": self.last_eval}

    def _save(self) -> None:
        from accelerate.utils import gather_object

        self._flush()  # raises TrainingDiverged first if the run has tripped: no checkpoint after that

        rng_states = gather_object([capture_rng_state()]) if self.acc.num_processes > 1 else [capture_rng_state()]
        path = step_dir(self.run_dir, self.step)
        if self._main():
            save_checkpoint(path, model=self.unwrapped, optimizer=self.optimizer,
                            scheduler_state={"step": self.step, "lr": lr_at(max(0, self.step - 1), self.cfg)},
                            rng_states=rng_states, meta=self._meta_json(), stage=self.meta.stage,
                            tokenizer_dir=self.meta.tokenizer_dir, tokenizer_sha256=self.meta.tokenizer_sha256,
                            inputs=self.meta.inputs, figures={"step": self.step, "tokens_seen": self.tokens_seen})
            for gone in rotate_checkpoints(self.run_dir, self.cfg.keep_last):
                log.info("removed old checkpoint %s (keep_last=%d)", gone.name, self.cfg.keep_last)
            log.info("checkpoint saved: %s", path)
        self.checkpoints.append(path)
        self.acc.wait_for_everyone()

    def _export_final(self, figures: dict) -> Path:

        final = self.run_dir / "final"
        if self._main():
            with atomic_path(final) as tmp:
                tmp.mkdir(parents=True)
                if self.meta.export_final is not None:
                    self.meta.export_final(self.unwrapped, tmp)
                else:
                    save_model(self.unwrapped, tmp)
                if self.meta.tokenizer_dir:
                    copy_tokenizer_files(self.meta.tokenizer_dir, tmp)
                atomic_write_json(tmp / META_FILE, self._meta_json())
                # Recursive: an export hook may write subfolders (SFT's adapter/).
                outputs = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                                 if p.is_file() and not p.name.startswith("."))
                write_manifest(tmp, self.meta.stage, config=self.meta.config, outputs=outputs, inputs=self.meta.inputs,
                               figures=figures, tokenizer_sha256=self.meta.tokenizer_sha256)
            log.info("final model saved: %s", final)
        self.acc.wait_for_everyone()
        return final

    # ------------------------------------------------------------ resume & fit

    def resume(self, ckpt: Path) -> None:

        state = load_checkpoint(ckpt, model=self.unwrapped, optimizer=self.optimizer, rank=self.acc.process_index)
        meta = state["meta"]
        self.step = int(meta["step"])
        self.tokens_seen = int(meta["tokens_seen"])
        self.last_eval = meta.get("last_eval")
        self.prior_losses = restored_losses(meta)  # the final loss window spans the resume
        self.batches.load_state_dict(meta["data_state"])
        if state["rng"] is not None:
            restore_rng_state(state["rng"])
        self._truncate_metrics(self.step)
        if self._main():
            log.info("resumed from %s: step %d, %s tokens seen", ckpt, self.step, f"{self.tokens_seen:,}")

    def fit(self) -> TrainResult:
        # SIGTERM or a first Ctrl-C: checkpoint at the next step boundary, then stop (a second Ctrl-C aborts)
        stop_request = TerminationRequest().install()
        try:
            return self._fit(stop_request)
        finally:
            # Always: a handler left behind would outlive the run (a worker process forked
            # later inherits it and then ignores SIGTERM, hanging its pool's shutdown).
            stop_request.restore()

    def _fit(self, stop_request: TerminationRequest) -> TrainResult:
        import torch

        cfg = self.cfg
        stop_at = min(cfg.max_steps, cfg.stop_after_steps or cfg.max_steps)
        self.model.train()
        start = time.perf_counter()
        window_start, window_tokens, steps_here = start, 0, 0
        watch = self._watch(stop_at)
        try:
            while self.step < stop_at:
                record = self._train_step()
                self.step += 1
                steps_here += 1
                window_tokens += record["step_tokens"]
                if watch.line_due(self.step):
                    self._flush()  # a heartbeat line: one read-back per interval, not per step
                # figures already on the host only: the bar never forces a device read
                watch.step(self.step, self.history[-1]["loss"] if self.history else None, self._tokens_known())
                if self.step % cfg.log_every == 0 or self.step == stop_at:
                    self._flush()  # the only place the step's figures are read back
                    now = time.perf_counter()
                    self._log_line(record, now - window_start, window_tokens, now - start, steps_here)
                    window_start, window_tokens = now, 0
                    watch.logged()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    self._flush()
                    self._evaluate()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self._save()
                if stop_request.should_stop(self.acc):
                    break
            self._flush()
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):  # torch < 2.5 has only the latter
            raise OutOfMemory(_oom_advice(cfg, self.step + 1)) from None
        finally:
            watch.close()
        elapsed = time.perf_counter() - start
        final_dir = None
        if self.step >= cfg.max_steps:
            self._evaluate()
            final_dir = self._export_final(self._figures(elapsed))
        elif not self.checkpoints or self.checkpoints[-1].name != f"step_{self.step}":
            self._save()  # stopped early on purpose: leave a checkpoint to resume from
        if self._tb is not None:
            self._tb.finish()
        stop_request.finish(self.step, cfg.max_steps, self.run_dir)
        return TrainResult(steps=self.step, tokens_seen=self.tokens_seen, final_loss=self._recent_loss(),
                           final_eval=self.last_eval, elapsed_s=elapsed, final_dir=final_dir,
                           checkpoints=list(self.checkpoints), history=self.history,
                           stopped_early=self.step < cfg.max_steps, final_loss_steps=len(self._loss_window()))

    def _watch(self, stop_at: int):
        """The live bar / periodic lines (lmforge.training.progress); its first line comes before step 1."""

        self._tensorboard({}, self.step)    # start the trackers now: a missing one is said before step 1
        peak = self.peak_tflops * 1e12 * self.acc.num_processes if self.peak_tflops else None
        watch = TrainingProgress(self.cfg.max_steps, start_step=self.step, stop_at=stop_at, label=self.meta.stage,
                                 main=self._main(), flops_per_token=self.flops_per_token, peak_flops=peak)
        watch.start()
        return watch

    def _loss_window(self) -> list[float]:
        return loss_window(self.prior_losses, self.history, self.cfg.log_every)

    def _recent_loss(self) -> float | None:
        losses = self._loss_window()
        return sum(losses) / len(losses) if losses else None

    def _figures(self, elapsed: float) -> dict:
        figures = {"steps": self.step, "tokens_seen": self.tokens_seen, "final_loss": self._recent_loss(),
                   "train_seconds_this_process": round(elapsed, 2), "world_size": self.acc.num_processes,
                   "skipped_steps": sum(1 for h in self.history if h.get("skipped")),
                   "compiled": self.compiled, **self.meta.extra_figures}

        vram = peak_memory_gib(self.device_type)
        if vram is not None:
            figures["peak_vram_gib"] = vram
        if self.last_eval:
            figures.update(val_loss=self.last_eval["eval_loss"], val_perplexity=self.last_eval["eval_ppl"])
        return figures


def _oom_advice(cfg: TrainingConfig, step: int) -> str:
    smaller = max(1, cfg.per_device_batch_size // 2)
    more = cfg.gradient_accumulation_steps * cfg.per_device_batch_size // smaller
    return (f"out of device memory at step {step} with per_device_batch_size={cfg.per_device_batch_size}. "
            f"Use a smaller micro-batch and more accumulation to keep the same global batch, e.g. "
            f"--set training.per_device_batch_size={smaller} --set training.gradient_accumulation_steps={more}; "
            "and train in bf16 (accelerate launch --mixed_precision bf16).")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def scaled_warmup(config_path: str, overrides: dict) -> dict:
    """Overrides that keep the config's warmup *fraction* when max_steps is shortened.

    The plan's schedule is 3,000 warmup steps of 30,000; `--max_steps 200` alone would
    otherwise be an invalid schedule (warmup longer than the run). An explicit
    warmup override is left to validation.
    """
    steps = overrides.get("training.max_steps")
    if "training.warmup_steps" in overrides or not _is_count(steps, 1):
        return {}  # no override, or one validation will refuse with its own message ("two", 2.5, 0)
    try:
        training = json.loads(Path(config_path).read_text(encoding="utf-8")).get("training", {})
        base_steps, base_warmup = int(training["max_steps"]), int(training.get("warmup_steps", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # load_config reports the file's problems
    if base_warmup < steps or base_steps <= 0:
        return {}
    warmup = int(steps * base_warmup / base_steps)
    log.warning("max_steps %d is shorter than the config's warmup (%d of %d steps): warmup scaled to %d steps "
                "(same fraction); set training.warmup_steps to choose", steps, base_warmup, base_steps, warmup)
    return {"training.warmup_steps": warmup}
