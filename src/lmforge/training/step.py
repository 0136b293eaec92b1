"""Device-side helpers of the training step: compile, TF32, the micro-batch probe, peak memory.

`lmforge.training.loop` owns the loop; this module holds the pieces that decide *how* a step
runs on the device it has, each a small function:

- `resolve_switch`: a config's true / false / "auto" setting, for this device.
- `enable_tf32`: TF32 matmuls and convolutions on CUDA (fp32 master weights, tensor cores).
- `compile_in_place` / `uncompile`: `nn.Module.compile()` keeps parameter names (and so
  checkpoints) unchanged; undoing it is how a failed compile falls back to eager.
- `probe_micro_batch`: the largest micro-batch that divides the per-device share of the
  global batch and survives a forward and backward; the accumulation follows.
- `peak_memory_gib` / `reset_peak_memory`: CUDA's peak allocated memory (None elsewhere).
"""

from __future__ import annotations

import contextlib
from typing import Callable

from lmforge.log import get_logger

log = get_logger(__name__)

MAX_PROBED_MICRO_BATCH = 256   # past this, a bigger micro-batch buys nothing measurable
PROBE_MEMORY_HEADROOM = 0.90   # a probe peaking above this share of the card counts as "does not fit"


def resolve_switch(value: bool | str, *, auto: bool) -> bool:
    """true / false as given; "auto" becomes `auto` (what this device and model call for)."""
    return auto if value == "auto" else bool(value)


def enable_tf32(device_type: str) -> bool:
    """TF32 for fp32 matmuls on CUDA (the optimizer's fp32 master weights lose nothing that matters)."""
    if device_type != "cuda":
        return False
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def compile_in_place(model) -> None:
    model.compile()  # nn.Module.compile: lazy; the first call traces and compiles


def uncompile(model) -> None:
    """Back to eager after a failed compile (what nn.Module.compile set, unset)."""
    model._compiled_call_impl = None


def is_compile_failure(exc: BaseException) -> bool:
    """Errors raised by dynamo / inductor while compiling (not a real OOM or a user bug in data)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return False
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch.fx")) or "BackendCompilerFailed" in type(exc).__name__


def candidate_micro_batches(per_device: int) -> list[int]:
    """Divisors of the per-device sequences per step, largest first (capped at MAX_PROBED_MICRO_BATCH)."""
    divisors = [d for d in range(per_device, 0, -1) if per_device % d == 0]
    capped = [d for d in divisors if d <= MAX_PROBED_MICRO_BATCH]
    return capped or [min(divisors)]


def probe_micro_batch(try_batch: Callable[[int], None], per_device: int, start: int, device_type: str) -> int:
    """The largest divisor of `per_device` for which `try_batch(size)` runs without running out of memory.

    try_batch(size) runs one forward and backward on `size` sequences (it raises
    torch.OutOfMemoryError when they do not fit). Sizes are tried from the largest down;
    if none fits, the configured `start` is returned and training reports the OOM itself.
    """
    import torch

    for size in candidate_micro_batches(per_device):
        try:
            if device_type == "cuda":
                torch.cuda.empty_cache()
            reset_peak_memory(device_type)
            try_batch(size)
            if device_type == "cuda":
                total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
                if torch.cuda.max_memory_allocated() > PROBE_MEMORY_HEADROOM * total:
                    raise torch.OutOfMemoryError(f"micro-batch {size} peaks above {PROBE_MEMORY_HEADROOM:.0%} of the card")
            return size
        except torch.OutOfMemoryError:
            log.info("micro-batch probe: %d sequences do not fit", size)
        finally:
            if device_type == "cuda":
                torch.cuda.empty_cache()
    return start


def forward_backward_probe(model, loss_fn: Callable, vocab_size: int, seq_length: int, device,
                           autocast: Callable[[], contextlib.AbstractContextManager]) -> Callable[[int], None]:
    """A `try_batch` for `probe_micro_batch`: random tokens through `loss_fn(model, batch)` and backward.

    RNG states are forked so that probing changes nothing a later step would draw, and
    gradients are dropped afterwards.
    """
    import torch

    def try_batch(size: int) -> None:
        gen = torch.Generator().manual_seed(size)
        ids = torch.randint(0, vocab_size, (size, seq_length), generator=gen).to(device)
        devices = [device] if getattr(device, "type", "") == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                with autocast():
                    loss = loss_fn(model, {"input_ids": ids, "labels": ids})
                loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            del ids

    return try_batch


def reset_peak_memory(device_type: str) -> None:
    """Start CUDA's peak-memory count afresh (nothing to do elsewhere)."""
    if device_type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device_type: str) -> float | None:
    """Peak allocated device memory so far (CUDA), in GiB; None on other devices."""
    if device_type != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
