"""lmforge's CPU training step beside a plain HF Llama loop, in one process, alternating blocks.

    OMP_NUM_THREADS=1 python bench/step_ab.py             # the reference's toy shape (`--small`)
    OMP_NUM_THREADS=1 python bench/step_ab.py --blocks 8 --block-steps 30 --profile

At the toy shape a step is a few milliseconds of per-operator overhead, and timings from
separate processes (what `bench/train_throughput.py` compares) swing by +-20% between
runs on a shared machine. Here both steps live in one process and take turns in blocks of
`--block-steps` steps, so they see the same machine state; the ratio is of the medians.

- lmforge: `Trainer._train_step` (the step `lmforge pretrain` runs: its decoder, chunked
  loss, fused AdamW, clipping, device-side bookkeeping; results read back every 50 steps).
- HF loop: what `../shared/bench/peer_train_bench.py`'s `hf_fp32_mb8` times:
  `LlamaForCausalLM` (sdpa, tied embedding) on the same shape, `torch.optim.AdamW`
  (lr 3e-4, default foreach), a disabled autocast context around the forward,
  `loss.backward(); opt.step(); opt.zero_grad()`, no clipping.

`--profile` also prints torch profiler operator calls per step for each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import train_throughput  # noqa: E402  (shape and random-token helpers shared with the throughput bench)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--blocks", type=int, default=8, help="timed blocks per side")
    p.add_argument("--block-steps", type=int, default=30, help="steps per block")
    p.add_argument("--profile", action="store_true", help="also count profiler operator calls per step")
    return p.parse_args(argv)


def lmforge_step(arch, seq: int, micro: int, workdir: Path):
    from lmforge.model.decoder import build_decoder
    from lmforge.training.loop import CheckpointMeta, Trainer, TrainingConfig

    cfg = TrainingConfig(max_steps=10 ** 6, per_device_batch_size=micro, gradient_accumulation_steps=1,
                         warmup_steps=0, mixed_precision="no", compile=False, auto_micro_batch=False,
                         tensorboard=False, log_every=10 ** 6)
    model = build_decoder(arch, arch.vocab_size)
    model.set_attention("sdpa")
    trainer = Trainer(model, train_throughput.RandomTokens(arch.vocab_size, micro, seq), None, cfg, workdir,
                      train_throughput._cpu_accelerator(cfg), CheckpointMeta(stage="bench", config={}), None)

    def step() -> None:
        trainer._train_step()
        if len(trainer._pending) >= 50:  # the loop reads results back on logging steps only
            trainer._flush()
    return step


def hf_step(arch, seq: int, micro: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
                         num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
                         intermediate_size=arch.intermediate_size, max_position_embeddings=seq,
                         tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    ids = torch.randint(0, arch.vocab_size, (micro, seq), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):  # as the reference's fp32 variants
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def time_blocks(steps: dict, blocks: int, block_steps: int) -> dict[str, list[float]]:
    """Milliseconds per step of each block, the sides taking turns."""
    for step in steps.values():  # warm-up: allocator, first-call paths
        for _ in range(10):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(blocks):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(block_steps):
                step()
            times[name].append((time.perf_counter() - start) / block_steps * 1e3)
    return times


def operator_calls(step, n: int = 10) -> float:
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(n):
            step()
    return len(prof.events()) / n


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    arch, seq = train_throughput.resolve_shape(argparse.Namespace(small=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); shape vocab {arch.vocab_size}, "
          f"d {arch.hidden_size}, {arch.num_layers} layers, seq {seq}, micro-batch {args.micro_batch}")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        steps = {"lmforge": lmforge_step(arch, seq, args.micro_batch, Path(tmp)),
                 "hf_loop": hf_step(arch, seq, args.micro_batch)}
        times = time_blocks(steps, args.blocks, args.block_steps)
        calls = {name: operator_calls(step) for name, step in steps.items()} if args.profile else {}
    print("\nside | ms/step (median) | blocks" + (" | operator calls/step" if calls else ""))
    for name, values in times.items():
        row = f"{name} | {statistics.median(values):.2f} | {', '.join(f'{v:.1f}' for v in values)}"
        print(row + (f" | {calls[name]:,.0f}" if calls else ""))
    ratio = statistics.median(times["hf_loop"]) / statistics.median(times["lmforge"])
    print(f"\nlmforge speed / HF loop speed: {ratio:.3f}x (target >= 1.0 at the toy shape)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
