"""Training throughput of lmforge's step beside the reference benchmark, same machine, same run.

    python bench/train_throughput.py                 # GPU: tiny (23M) shape, seq 1024, bf16
    python bench/train_throughput.py --small         # CPU smoke size (the reference's SMALL=1 shape)

It times `lmforge.training`'s real optimizer step (the one `lmforge pretrain` runs:
accelerate, bf16 autocast, loss over the step's tokens, clipping, AdamW) on random
tokens, then runs the reference `../shared/bench/peer_train_bench.py` (copied next to
this file for the run and removed afterwards; never committed) on the same shape, and
prints tokens/s, MFU and peak memory side by side.

MFU = tokens/s x (6N + 12·L·d·T) / peak FLOP/s, N = all parameters (tied embedding
once); the peak is the card's bf16 matmul rate measured in this run (as the reference
does), so both columns share one denominator. On CPU MFU is not reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
PEER_SOURCE = HERE.parent.parent / "shared" / "bench" / "peer_train_bench.py"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=str(HERE.parent / "config/architectures/tiny.json"))
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=None, help="default: 32 on CUDA, 8 on CPU")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    p.add_argument("--small", action="store_true", help="CPU smoke size: vocab 512, d 64, 2 layers, seq 64")
    p.add_argument("--peer", nargs="*", default=None,
                   help="reference variants (default: hf_bf16_mb8 and gpt_bf16_compile_mb32 on CUDA, hf_bf16_mb8 on CPU)")
    p.add_argument("--peer-source", default=str(PEER_SOURCE))
    p.add_argument("--json", default=None, help="also write all results to this file")
    return p.parse_args()


def measured_peak_tflops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 / ((time.perf_counter() - t) / 10) / 1e12


class RandomTokens:
    """A BatchSource of random token rows (what the reference feeds too)."""

    def __init__(self, vocab: int, batch: int, seq: int):
        import torch

        self.ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return {"input_ids": self.ids, "labels": self.ids}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def bench_lmforge(arch, vocab: int, seq: int, micro: int, steps: int, warmup: int, compile_: bool) -> dict:
    import torch

    from lmforge.model import build_model, count_parameters, flops_per_token, quiet_transformers, choose_attention
    from lmforge.training import CheckpointMeta, Trainer, TrainingConfig, make_accelerator

    quiet_transformers()
    cfg = TrainingConfig(max_steps=10 ** 6, per_device_batch_size=micro, gradient_accumulation_steps=1,
                         warmup_steps=0, mixed_precision="bf16", compile=compile_, tensorboard=False)
    acc = make_accelerator(cfg)
    attn, _ = choose_attention(acc.device.type)
    model = build_model(arch, vocab, attn_implementation=attn)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, RandomTokens(vocab, micro, seq), None, cfg, Path(tmp), acc,
                          CheckpointMeta(stage="bench", config={}), None)
        sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer._train_step()
        sync()
        warm_s = time.perf_counter() - t0
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            record = trainer._train_step()
        sync()
        dt = (time.perf_counter() - t) / steps
    from lmforge.log import peak_rss_mb

    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if acc.device.type == "cuda" else peak_rss_mb() / 1024
    tok_s = micro * seq / dt
    return {"name": f"lmforge_bf16{'_compile' if compile_ else ''}_mb{micro}", "params_M": round(count_parameters(arch, vocab) / 1e6, 2),
            "micro_batch": micro, "ms_step": round(dt * 1e3, 2), "tok_s": round(tok_s),
            "tflops": round(tok_s * flops_per_token(arch, seq, vocab) / 1e12, 3), "mem_GiB": round(mem, 2),
            "mem_kind": "cuda max allocated" if acc.device.type == "cuda" else "process peak RSS",
            "warm_s": round(warm_s, 1), "loss": round(record["loss"], 3), "attention": attn}


def run_peer(source: Path, variants: list[str], arch, vocab: int, seq: int, small: bool) -> list[dict]:
    """Copy the reference next to this file, run it on the same shape, parse its JSON lines, remove it."""
    if not source.is_file():
        return [{"name": "reference", "error": f"{source} not found"}]
    copy = HERE / "peer_train_bench.py"
    shutil.copy(source, copy)
    try:
        cmd = [sys.executable, str(copy), *variants, "--vocab", str(vocab), "--d-model", str(arch.hidden_size),
               "--layers", str(arch.num_layers), "--heads", str(arch.num_heads), "--ffn", str(arch.intermediate_size),
               "--seq", str(seq)]
        env = {**os.environ, **({"SMALL": "1"} if small else {})}
        env.pop("OUT", None)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        rows = []
        for line in out.stdout.splitlines():
            if line.startswith("{") and '"name"' in line:
                rows.append(json.loads(line))
        if out.returncode != 0 and not rows:
            rows.append({"name": "reference", "error": out.stderr[-500:]})
        return rows
    finally:
        copy.unlink(missing_ok=True)


def main() -> int:
    import torch

    from lmforge.model import ArchitectureConfig, load_architecture

    args = parse_args()
    cuda = torch.cuda.is_available() and not args.small
    if args.small:
        arch = ArchitectureConfig(name="small", vocab_size=512, hidden_size=64, num_layers=2, num_heads=2,
                                  intermediate_size=128, max_position_embeddings=64)
        seq, vocab = 64, 512
    else:
        arch, seq = load_architecture(args.arch), args.seq
        vocab = arch.vocab_size
    micro = args.micro_batch or (32 if cuda else 8)
    compile_ = args.compile == "on" or (args.compile == "auto" and cuda)
    device = torch.device("cuda" if cuda else "cpu")
    peak = measured_peak_tflops(device)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "cpu_threads": torch.get_num_threads(), "bf16_matmul_tflops": round(peak, 1) if peak else None,
            "shape": {"vocab": vocab, "d": arch.hidden_size, "layers": arch.num_layers, "heads": arch.num_heads,
                      "ffn": arch.intermediate_size, "seq": seq}}
    print(json.dumps(info), flush=True)
    ours = bench_lmforge(arch, vocab, seq, micro, args.steps if not args.small else max(2, args.steps // 4),
                         args.warmup if not args.small else 1, compile_)
    print(json.dumps(ours), flush=True)
    variants = args.peer if args.peer is not None else (["hf_bf16_mb8", "gpt_bf16_compile_mb32"] if cuda else ["hf_bf16_mb8"])
    peers = run_peer(Path(args.peer_source), variants, arch, vocab, seq, small=not cuda) if variants else []
    for row in peers:
        print(json.dumps(row), flush=True)
    print("\nvariant | tok/s | TFLOP/s | MFU | peak mem GiB | vs lmforge")
    for r in [ours, *peers]:
        if "error" in r:
            print(f"{r['name']} | ERROR {r['error'][:150]}")
            continue
        mfu = f"{r['tflops'] / peak * 100:.1f}%" if peak else "n/a (CPU)"
        ratio = ours["tok_s"] / r["tok_s"] if r["tok_s"] else float("nan")
        print(f"{r['name']} | {r['tok_s']:,} | {r['tflops']} | {mfu} | {r['mem_GiB']} | lmforge = {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "lmforge": ours, "reference": peers}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
