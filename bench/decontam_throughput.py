#!/usr/bin/env python
"""Throughput of `lmforge corpus` with decontamination off and on (mode drop), in the same run.

Runs the plan's `config/pretrain/corpus/tokenizer_training_mix.json` on the hub mirror in
fresh processes, alternating `decontamination.mode=off` and `=drop` (so background load
hits both alike), and prints per run: CPU seconds, wall seconds, text MB written, and MB
of text per CPU-second; then the drop/off throughput ratio of the medians. The drop runs
include building the evaluation index (WikiText-2 test, BoolQ validation, SFT prompts and
whatever zero-shot data the mirror holds).

Usage: python bench/decontam_throughput.py [--mirror DIR] [--budget-scale 1.0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config/pretrain/corpus/tokenizer_training_mix.json"


def run_once(mode: str, mirror: str, scale: float, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmforge.cli", "corpus", "--config", str(CONFIG), "--output-dir", str(out),
                    "--mirror", mirror, "--force", "--log-level", "WARNING",
                    "--set", f"decontamination.mode={mode}", "--set", f"processing_params.budget_scale={scale}"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    figures = json.loads((out / "manifest.json").read_text())["figures"]
    mb = figures["characters"] / 1e6
    d = figures.get("decontamination", {})
    return {"mode": mode, "cpu_s": cpu, "wall_s": wall, "text_mb": mb, "documents": figures["documents"],
            "mb_per_cpu_s": mb / cpu, "dropped": d.get("documents_dropped", 0),
            "index_s": (d.get("index") or {}).get("seconds", 0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("LMFORGE_MIRROR", str(ROOT.parent / "shared/mirror")))
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeats):
            for mode in ("off", "drop"):
                row = run_once(mode, args.mirror, args.budget_scale, Path(tmp) / f"{mode}_{n}")
                rows.append(row)
                print(f"{mode:5s} cpu {row['cpu_s']:6.1f}s wall {row['wall_s']:6.1f}s text {row['text_mb']:6.1f} MB "
                      f"docs {row['documents']:,} dropped {row['dropped']} index {row['index_s']:.1f}s "
                      f"-> {row['mb_per_cpu_s']:.2f} MB/CPU-s", flush=True)
    rate = {m: statistics.median(r["mb_per_cpu_s"] for r in rows if r["mode"] == m) for m in ("off", "drop")}
    print(f"median MB/CPU-s: off {rate['off']:.2f}, drop {rate['drop']:.2f}; "
          f"ratio drop/off {rate['drop'] / rate['off']:.3f} (throughput change {100 * (rate['drop'] / rate['off'] - 1):+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
