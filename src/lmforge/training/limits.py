"""Refusing absurd sizes before anything is allocated.

`--per_device_batch_size 1000000000` or `hidden_size` 10^6 used to grow memory for a
minute (4-16 GB) before the process died. The stage now estimates what training
needs and compares it with the device's memory first:

    parameters   N x 16 bytes for trained weights (fp32 weight, gradient, two AdamW
                 moments), N x 4 bytes for frozen ones (LoRA bases)
    activations  per micro-batch, per layer, ~34 x hidden values per token kept for
                 the backward pass (Korthikanti et al. 2022, without the attention
                 matrix: SDPA/flash kernels do not store it), 4 bytes each
    logits       micro-batch x seq x vocab, 3 fp32 copies (logits, softmax, gradient)

The estimate is deliberately on the low side: it refuses only what cannot fit,
never a run that might.
"""

from __future__ import annotations

import os

from lmforge.errors import ConfigError
from lmforge.model.architecture import count_parameters

GIB = 1 << 30


def training_bytes(*, trainable: int, frozen: int, layers: int, hidden: int, vocab: int, seq: int,
                   micro_batch: int) -> dict[str, int]:
    """The estimate's parts, in bytes."""
    tokens = micro_batch * seq
    return {"parameters": trainable * 16 + frozen * 4,
            "activations": tokens * layers * 34 * hidden * 4,
            "logits": tokens * vocab * 4 * 3}


def device_memory(device=None) -> tuple[int, str]:
    """(bytes, description) of the memory training will use: the GPU's, else host RAM."""
    import torch

    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{props.name} ({device})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host RAM"


def check_fits(parts: dict[str, int], device=None, *, hint: str = "") -> None:
    """ConfigError when the estimate exceeds the device's total memory."""
    total = sum(parts.values())
    available, where = device_memory(device)
    if total <= available:
        return
    detail = ", ".join(f"{k} {v / GIB:,.1f}" for k, v in parts.items())
    raise ConfigError(f"this run needs about {total / GIB:,.1f} GiB ({detail} GiB) but {where} has "
                      f"{available / GIB:,.1f} GiB: refused before allocating anything. {hint}".strip())


def check_pretrain_fits(arch, vocab_size: int, seq_length: int, micro_batch: int, device=None) -> None:

    parts = training_bytes(trainable=count_parameters(arch, vocab_size), frozen=0, layers=arch.num_layers,
                           hidden=arch.hidden_size, vocab=vocab_size, seq=seq_length, micro_batch=micro_batch)
    check_fits(parts, device, hint="Lower training.per_device_batch_size (raise gradient_accumulation_steps to "
                                   "keep the global batch) or the architecture's sizes.")


def check_sft_fits(model_config: dict, weights_bytes: int, seq_length: int, micro_batch: int, device=None) -> None:
    """For LoRA: the base is frozen (its safetensors size, fp32), adapters are negligible."""
    parts = training_bytes(trainable=0, frozen=weights_bytes // 4, layers=int(model_config.get("num_hidden_layers", 1)),
                           hidden=int(model_config.get("hidden_size", 1)),
                           vocab=int(model_config.get("vocab_size", 1)), seq=seq_length, micro_batch=micro_batch)
    check_fits(parts, device, hint="Lower training.per_device_batch_size (raise gradient_accumulation_steps).")
