"""The one GPU check of issue 14: throughput beside the reference, a short real pretraining run, peak VRAM.

Two steps, the first on the CPU side (it needs the corpus/tokenizer/pack stages), the
second on the GPU machine (which has torch/transformers/accelerate/sentencepiece/
safetensors but not `datasets`; nothing imported on that path needs it):

    # 1. CPU, once (~1-2 min): packed tokens small enough to carry (~1 MB, git-ignored), and a
    #    copy of the reference benchmark (../shared does not travel to the GPU machine)
    python bench/gpu_check.py --prepare data/gpu_check
    #    optional, for --race: the quality race's data (~55 MB; see bench/quality_race.py)
    python bench/quality_race.py --shape tiny --vocab 32768 --seq 1024 --corpus-scale 3.4 \
        --work runs/gpu_race --prepare data/gpu_race

    # 2. GPU (<= 8 min on one H100/H200: 300 s + 180 s limits; ~13 with --race: more than one 10-minute device call, so
    #    there run the race as its own call, see bench/quality_race.py); carry data/gpu_check
    python bench/gpu_check.py --data data/gpu_check [--race data/gpu_race]

Step 2 runs, each in its own process with its own time limit:
  a. bench/train_throughput.py on the 23M tiny shape (V 32768, T 1024): lmforge's step
     (bf16, torch.compile, micro-batch 64) beside the reference's gpt_bf16_compile_mb64
     and hf_bf16_mb8, in the same run;
  b. the plan's step-5 command, as the README writes it (`accelerate launch
     --mixed_precision bf16 scripts/40_pretrain.py --config
     config/pretrain/training/chinchilla_tiny_500m.json ...`), on the carried pack with
     --max_steps 200: compile on by default, the automatic micro-batch, the log's tok/s
     and peak VRAM, and the final manifest;
  c. with --race, bench/quality_race.py on the carried folder: the reference (micro-batch 32)
     and lmforge's recommended recipe (bf16), the 23M shape on 25M tokens, both scored on the
     same validation windows and on WikiText-2 (issue 15's GPU target);
and prints a short table last. Everything (logs, JSON, the manifest) goes under $OUT
(or --out). Without CUDA it falls back to a CPU smoke size so the script itself is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLAN_CONFIG = "config/pretrain/training/chinchilla_tiny_500m.json"
PEER_SOURCE = REPO.parent / "shared" / "bench" / "peer_train_bench.py"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", metavar="DIR", help="CPU side: build corpus, tokenizer and pack (seq 1024) into DIR")
    p.add_argument("--data", metavar="DIR", default="data/gpu_check", help="the --prepare output to train on")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="details go here (default $OUT)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default: 200 on CUDA, 2 on CPU")
    p.add_argument("--seq", type=int, default=1024, help="--prepare: packed sequence length")
    p.add_argument("--race", metavar="DIR", default=None,
                   help="also run the quality race (issue 15) on a `quality_race.py --prepare DIR` folder: the "
                   "reference and the recommended recipe, the 23M shape on 25M tokens (CPU: a smoke size)")
    p.add_argument("--race-timeout", type=int, default=300, help="seconds for the race (default 300)")
    return p.parse_args(argv)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], log_path: Path, timeout: int) -> tuple[int, str, float]:
    """Run `cmd` in the repository, stdout+stderr to `log_path`; (returncode, text, seconds). Never raises."""
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
        code, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:
        code = 124
        text = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")) + \
            ((exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")) + \
            f"\n[gpu_check] timed out after {timeout}s"
    log_path.write_text(text, encoding="utf-8")
    return code, text, time.perf_counter() - start


# ---------------------------------------------------------------- CPU side

def prepare(out: Path, seq: int) -> int:
    """Built-in corpus (Python's own docs) -> quickstart tokenizer (4,096 pieces) -> pack at `seq`."""
    out.mkdir(parents=True, exist_ok=True)
    lm = [sys.executable, "-m", "lmforge.cli"]
    steps = [
        [*lm, "corpus", "--config", "config/quickstart/corpus.json", "--output-dir", str(out / "corpus")],
        [*lm, "tokenizer", "--config", "config/quickstart/tokenizer.json", "--corpus-dir", str(out / "corpus"),
         "--output-dir", str(out / "tokenizer"), "--set", f"model_max_length={seq}"],
        [*lm, "pack", "--config", "config/quickstart/packing.json", "--corpus-dir", str(out / "corpus"),
         "--tokenizer-dir", str(out / "tokenizer"), "--output-dir", str(out / "packed"), "--set", f"seq_length={seq}"],
    ]
    for i, cmd in enumerate(steps):
        code, text, _ = run(cmd, out / f"prepare_{i}.log", 1800)
        if code != 0:
            print(text[-3000:], file=sys.stderr)
            return code
    import shutil

    shutil.rmtree(out / "corpus" / "cache", ignore_errors=True)  # only packed/ and tokenizer/ need to travel
    if not PEER_SOURCE.is_file():
        print(f"error: reference benchmark not found: {PEER_SOURCE}", file=sys.stderr)
        return 1
    shutil.copy(PEER_SOURCE, out / PEER_SOURCE.name)  # ../shared does not travel to the GPU machine
    print(f"prepared {out}: carry it with the working tree (run(..., carry=['{out}']))")
    return 0


# ---------------------------------------------------------------- GPU side

def throughput(out: Path, data: Path, cuda: bool) -> dict:
    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--once", "--json", str(out / "throughput.json")]
    if (data / PEER_SOURCE.name).is_file():  # the copy --prepare carried
        cmd += ["--peer-source", str(data / PEER_SOURCE.name)]
    cmd += [] if cuda else ["--small", "--steps", "3", "--warmup", "1"]
    code, text, secs = run(cmd, out / "throughput.log", 300 if cuda else 600)
    result = {"returncode": code, "seconds": round(secs, 1)}
    if (out / "throughput.json").is_file():
        data = json.loads((out / "throughput.json").read_text())
        result["rows"] = [data["lmforge"], *data["reference"]]
        result["bf16_matmul_tflops"] = data["info"].get("bf16_matmul_tflops")
    else:  # cut short (time limit): keep the rows it printed before, one JSON object per line
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{") and line.endswith("}")]
        result["rows"] = [r for r in lines if "name" in r]
        result["bf16_matmul_tflops"] = next((r.get("bf16_matmul_tflops") for r in lines if "torch" in r), None)
        result["tail"] = text[-1500:]
    return result


def pretrain(out: Path, data: Path, steps: int, cuda: bool) -> dict:
    """The plan's step-5 command on the carried pack, shortened with --max_steps."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--dynamo_backend", "no", "--mixed_precision", "bf16" if cuda else "no"]
    cmd = [*launch, "scripts/40_pretrain.py", "--config", PLAN_CONFIG, "--data_dirs", str(data / "packed"),
           "--tokenizer_dir", str(data / "tokenizer"), "--output_dir", str(out / "checkpoints"), "--num_workers", "4",
           "--max_steps", str(steps), "--log_every", str(max(1, steps // 8)), "--save_every", "0",
           "--eval_every", "0", "--set", "training.eval_batches=4", "--force"]
    if not cuda:  # smoke size: one 1,024-token sequence per step, or a CPU step takes minutes
        cmd += ["--per_device_batch_size", "1", "--gradient_accumulation_steps", "1"]
    code, text, secs = run(cmd, out / "pretrain.log", 180 if cuda else 600)
    result = {"returncode": code, "seconds": round(secs, 1), "command": " ".join(cmd)}
    rates = [float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
             for m in re.finditer(r"\| ([\d.]+)([KMG]?) tok/s", text)]
    result["tok_s_log"] = rates
    result["tok_s_last"] = rates[-1] if rates else None
    for key, pattern in (("micro_batch_line", r"Micro-batch: .*"), ("compile_line", r"torch\.compile.*"),
                         ("attention_line", r"Attention: .*"), ("peak_vram_line", r"peak VRAM [\d.]+ GiB")):
        found = re.findall(pattern, text)
        result[key] = found[-1] if found else None
    manifest = out / "checkpoints" / "tiny" / "final" / "manifest.json"
    if manifest.is_file():
        result["figures"] = json.loads(manifest.read_text())["figures"]
    if code != 0:
        result["tail"] = text[-2000:]
    return result


def race(out: Path, race_dir: Path, cuda: bool, timeout: int) -> dict:
    """The quality race on the carried folder; models stay in a temporary dir, the results come to `out`."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="lmforge_race_"))
    size = ["--tokens", "25000000"] if cuda else ["--tokens", "20000", "--wikitext-docs", "2", "--val-windows", "4"]
    cmd = [sys.executable, str(HERE / "quality_race.py"), "--shape", "tiny", "--seq", "1024", "--data-dir",
           str(race_dir), "--runs", "ref_mb32,recommended", "--work", str(work), "--json", str(out / "race.json"),
           *size]
    code, text, secs = run(cmd, out / "race.log", timeout)
    result = {"returncode": code, "seconds": round(secs, 1), "command": " ".join(cmd)}
    if (out / "race.json").is_file():
        result["table"] = json.loads((out / "race.json").read_text())["table"]
    else:
        result["tail"] = text[-2000:]
    return result


def table(report: dict) -> str:
    lines = [f"gpu_check on {report['device']} ({report['seconds']:.0f} s)", "", "variant | tok/s | MFU | peak mem GiB"]
    peak = report["throughput"].get("bf16_matmul_tflops")
    for r in report["throughput"].get("rows", []):
        if "error" in r:
            lines.append(f"{r['name']} | ERROR {r['error'][:80]}")
            continue
        mfu = f"{r['tflops'] / peak * 100:.1f}%" if peak else "n/a"
        lines.append(f"{r['name']} | {r['tok_s']:,} | {mfu} | {r['mem_GiB']}")
    rows = {r["name"]: r for r in report["throughput"].get("rows", []) if "error" not in r}
    ours = next((r for n, r in rows.items() if n.startswith("lmforge")), None)
    for name in ("gpt_bf16_compile_mb64", "hf_bf16_mb8", "gpt_fp32_mb8", "hf_fp32_mb8"):
        if ours and name in rows:
            lines.append(f"lmforge / {name} = {ours['tok_s'] / rows[name]['tok_s']:.2f}x")
    p = report["pretrain"]
    fig = p.get("figures") or {}
    lines += ["", f"pretrain (plan command, {fig.get('steps', '?')} steps): exit {p['returncode']}, "
              f"last logged {p['tok_s_last'] or 0:,.0f} tok/s, final loss {fig.get('final_loss')}, "
              f"peak VRAM {fig.get('peak_vram_gib', 'n/a')} GiB, compiled {fig.get('compiled')}",
              f"  {p.get('micro_batch_line') or 'micro-batch: as configured'}",
              f"  {p.get('attention_line') or ''}"]
    if "race" in report:
        r = report["race"]
        lines += ["", f"quality race (exit {r['returncode']}, {r['seconds']:.0f} s):", r.get("table") or r.get("tail", "")]
    return "\n".join(lines)


def check(args) -> int:
    import torch

    cuda = torch.cuda.is_available()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu (no CUDA: smoke size)",
              "torch": torch.__version__}
    report["throughput"] = throughput(out, data, cuda)
    if (data / "packed").is_dir() and (data / "tokenizer").is_dir():
        report["pretrain"] = pretrain(out, data, args.pretrain_steps or (200 if cuda else 2), cuda)
    else:
        report["pretrain"] = {"returncode": None, "tok_s_last": None,
                              "tail": f"{data} has no packed/ and tokenizer/: run --prepare first (CPU side)"}
    if args.race:
        report["race"] = race(out, Path(args.race).resolve(), cuda, args.race_timeout)
    report["seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    text = table(report)
    (out / "gpu_check.txt").write_text(text + "\n")
    print(text, flush=True)
    ok = report["throughput"]["returncode"] == 0 and report["pretrain"].get("returncode") == 0 and \
        report.get("race", {}).get("returncode", 0) == 0
    return 0 if ok else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare:
        return prepare(Path(args.prepare), args.seq)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
