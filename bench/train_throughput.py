"""Training throughput of lmforge's step beside the reference benchmark, same machine, same run.

    python bench/train_throughput.py                 # GPU: tiny (23M) shape, seq 1024, bf16 + compile, mb 64
    python bench/train_throughput.py --d-model 128 --layers 4 --heads 4 --ffn 512 --seq 256
                                                     # CPU: fp32, mb 8, a shape where compute dominates
    python bench/train_throughput.py --small         # the reference's toy shape (vocab 512, d 64, 2 layers, seq 64)

It times the optimizer step `lmforge pretrain` runs (`lmforge.training.loop.Trainer._train_step`
on `lmforge.model.decoder`: fused QKV, chunked in-forward loss, fused AdamW, clipping, device-
side bookkeeping; bf16 autocast and torch.compile on CUDA, fp32 eager on CPU) on random
tokens, then runs the reference `../shared/bench/peer_train_bench.py` (copied next to this
file for the run and removed afterwards; never committed) on the same shape and prints
tokens/s, MFU, peak memory and lmforge's ratio to each reference variant. With
every reference variant timed between two lmforge timings, each ratio is lmforge's mean
of those two neighbours over the reference figure, and `--repeats N` reports the median
ratio of N rounds: on a machine loaded by other work, neighbours in time are comparable.

Default reference variants: gpt_bf16_compile_mb64 and hf_bf16_mb8 on CUDA; gpt_fp32_mb8
and hf_fp32_mb8 on CPU. MFU = tokens/s x (6N + 12·L·d·T) / peak FLOP/s, N = all parameters
(tied embedding once), the peak being the card's bf16 matmul rate measured in this run.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=str(HERE.parent / "config/architectures/tiny.json"))
    p.add_argument("--vocab", type=int, default=None, help="default: the architecture's (32768)")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--ffn", type=int, default=None)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=None, help="default: 64 on CUDA, 8 on CPU")
    p.add_argument("--steps", type=int, default=20, help="timed steps (the reference times 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (the reference runs 5)")
    p.add_argument("--repeats", type=int, default=1, help="alternate lmforge and the reference N times; medians kept")
    p.add_argument("--once", action="store_true",
                   help="time lmforge once, before the references (a dedicated GPU; saves recompiles)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    p.add_argument("--small", action="store_true", help="the reference's toy shape: vocab 512, d 64, 2 layers, seq 64")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is present")
    p.add_argument("--peer", nargs="*", default=None, help="reference variants (default: see above)")
    p.add_argument("--peer-source", default=str(PEER_SOURCE))
    p.add_argument("--json", default=None, help="also write all results to this file")
    return p.parse_args(argv)


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


def bench_lmforge(arch, vocab: int, seq: int, micro: int, steps: int, warmup: int, compile_: bool,
                  device_type: str) -> dict:
    import torch

    from lmforge.model.decoder import build_decoder
    from lmforge.log import peak_rss_mb
    from lmforge.model.architecture import choose_attention, count_parameters, flops_per_token
    from lmforge.training.loop import CheckpointMeta, Trainer, TrainingConfig, make_accelerator

    precision = "bf16" if device_type == "cuda" else "no"  # the reference's CPU variants are fp32
    cfg = TrainingConfig(max_steps=10 ** 6, per_device_batch_size=micro, gradient_accumulation_steps=1,
                         warmup_steps=0, mixed_precision=precision, compile=compile_, auto_micro_batch=False,
                         tensorboard=False, log_every=10 ** 6)
    acc = make_accelerator(cfg) if device_type == "cuda" else _cpu_accelerator(cfg)
    attn, _ = choose_attention(acc.device.type, precision)
    model = build_decoder(arch, vocab)
    model.set_attention(attn)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, RandomTokens(vocab, micro, seq), None, cfg, Path(tmp), acc,
                          CheckpointMeta(stage="bench", config={}), None)
        sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer._train_step()
        trainer._flush()
        sync()
        warm_s = time.perf_counter() - t0
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            trainer._train_step()
        trainer._flush()  # the one read-back, inside the timed region
        sync()
        dt = (time.perf_counter() - t) / steps
        loss = trainer.history[-1]["loss"]
        compiled = trainer.compiled
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if acc.device.type == "cuda" else peak_rss_mb() / 1024
    tok_s = micro * seq / dt
    name = f"lmforge_{'bf16' if precision == 'bf16' else 'fp32'}{'_compile' if compiled else ''}_mb{micro}"
    return {"name": name, "params_M": round(count_parameters(arch, vocab) / 1e6, 2),
            "micro_batch": micro, "ms_step": round(dt * 1e3, 2), "tok_s": round(tok_s),
            "tflops": round(tok_s * flops_per_token(arch, seq, vocab) / 1e12, 3), "mem_GiB": round(mem, 2),
            "mem_kind": "cuda max allocated" if acc.device.type == "cuda" else "process peak RSS",
            "warm_s": round(warm_s, 1), "loss": round(loss, 3), "attention": attn}


def _cpu_accelerator(cfg):
    from accelerate import Accelerator

    return Accelerator(cpu=True, mixed_precision=cfg.mixed_precision)


def run_peer(source: Path, variants: list[str], arch, vocab: int, seq: int, cpu: bool) -> list[dict]:
    """Copy the reference next to this file, run it on the same shape, parse its JSON lines, remove it."""
    if not source.is_file():
        return [{"name": "reference", "error": f"{source} not found"}]
    copy = HERE / "peer_train_bench.py"
    shutil.copy(source, copy)
    try:
        cmd = [sys.executable, str(copy), *variants, "--vocab", str(vocab), "--d-model", str(arch.hidden_size),
               "--layers", str(arch.num_layers), "--heads", str(arch.num_heads), "--ffn", str(arch.intermediate_size),
               "--seq", str(seq)]
        env = {**os.environ}
        env.pop("OUT", None)
        env.pop("SMALL", None)  # shapes come from the flags; SMALL would also cut the reference to 2 timed steps
        if cpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
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


def median_rows(runs: list[dict]) -> dict:
    """The run with the median tokens/s (all runs' tokens/s kept for the record)."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["tok_s"])
    if not ok:
        return runs[-1]
    pick = dict(ok[(len(ok) - 1) // 2])
    pick["tok_s_runs"] = [r["tok_s"] for r in runs if "error" not in r]
    return pick


def resolve_shape(args):
    from lmforge.model.architecture import ArchitectureConfig, load_architecture

    if args.small:
        return ArchitectureConfig(name="small", vocab_size=512, hidden_size=64, num_layers=2, num_heads=2,
                                  intermediate_size=128, max_position_embeddings=64), 64
    base = load_architecture(args.arch)
    over = {"vocab_size": args.vocab, "hidden_size": args.d_model, "num_layers": args.layers,
            "num_heads": args.heads, "num_kv_heads": args.heads, "intermediate_size": args.ffn}
    fields = {k: v for k, v in vars(base).items()}
    fields.update({k: v for k, v in over.items() if v is not None})
    if args.heads is not None:
        fields["num_kv_heads"] = args.heads  # the reference has no GQA
    fields["max_position_embeddings"] = max(base.max_position_embeddings, args.seq)
    return ArchitectureConfig(**fields), args.seq


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.small and not args.cpu
    arch, seq = resolve_shape(args)
    vocab = arch.vocab_size
    micro = args.micro_batch or (64 if cuda else 8)
    compile_ = args.compile == "on" or (args.compile == "auto" and cuda)
    device = torch.device("cuda" if cuda else "cpu")
    peak = measured_peak_tflops(device)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "cpu_threads": torch.get_num_threads(), "bf16_matmul_tflops": round(peak, 1) if peak else None,
            "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
            "shape": {"vocab": vocab, "d": arch.hidden_size, "layers": arch.num_layers, "heads": arch.num_heads,
                      "ffn": arch.intermediate_size, "seq": seq}}
    print(json.dumps(info), flush=True)
    variants = args.peer if args.peer is not None else (["gpt_bf16_compile_mb64", "hf_bf16_mb8"] if cuda
                                                        else ["gpt_fp32_mb8", "hf_fp32_mb8"])
    # lmforge runs before and after every reference variant, so each reference figure has
    # lmforge figures from the minutes around it: on a machine loaded by other work the
    # ratio of neighbours is what is comparable, not absolute numbers from different minutes.
    ours_runs: list[dict] = []
    peer_runs: dict[str, list[dict]] = {}
    ratios: dict[str, list[float]] = {}

    def ours_now() -> dict:
        row = bench_lmforge(arch, vocab, seq, micro, args.steps, args.warmup, compile_, device.type)
        print(json.dumps(row), flush=True)
        ours_runs.append(row)
        return row

    for _ in range(max(1, args.repeats)):
        before = ours_now()
        for variant in variants:
            for r in run_peer(Path(args.peer_source), [variant], arch, vocab, seq, cpu=not cuda):
                print(json.dumps(r), flush=True)
                peer_runs.setdefault(r["name"], []).append(r)
                after = before if args.once else ours_now()
                if "error" not in r and r["tok_s"]:
                    ratios.setdefault(r["name"], []).append((before["tok_s"] + after["tok_s"]) / 2 / r["tok_s"])
                before = after
    ours = median_rows(ours_runs)
    peers = [median_rows(runs) for runs in peer_runs.values()]
    print("\nvariant | tok/s (median) | TFLOP/s | MFU | peak mem GiB | lmforge / this (median of neighbour ratios)")
    for r in [ours, *peers]:
        if "error" in r:
            print(f"{r['name']} | ERROR {r['error'][:150]}")
            continue
        mfu = f"{r['tflops'] / peak * 100:.1f}%" if peak else "n/a (CPU)"
        found = sorted(ratios.get(r["name"], []))
        ratio = f"{found[(len(found) - 1) // 2]:.2f}x {[round(x, 2) for x in found]}" if found else "-"
        print(f"{r['name']} | {r['tok_s']:,} | {r['tflops']} | {mfu} | {r['mem_GiB']} | {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "lmforge": ours, "reference": peers, "ratios": ratios,
                                               "runs": {"lmforge": ours_runs, **peer_runs}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
