#!/usr/bin/env python
"""Peak memory and throughput of `lmforge corpus` on the mirror's real data.

Runs the corpus stage in fresh processes on real C4, Gutenberg, FineWeb and
Wikipedia text from the hub mirror, for several token budgets, and prints:

- peak RSS of each run, and the same minus a baseline run whose budget is tiny
  (interpreter + datasets/pyarrow/torch imports + the first records of each
  source): the stage's own memory, which should stay flat (< 100 MB) as budgets grow;
- input throughput: UTF-8 megabytes of kept text per CPU-second (the stage runs in
  one process, so this is MB/s per core), over the whole run and over the CPU time
  beyond the baseline run's (i.e. without interpreter start-up and imports).

Usage: python bench/corpus_memory.py [--mirror DIR] [--budgets 1000000 6000000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The mix of the plan's tokenizer config, except that C4 takes 10%: the mirror's C4
# sample holds only ~0.7M tokens, and a source running dry would measure less work.
SHARES = {"c4": 0.10, "gutenberg": 0.30, "fineweb_edu": 0.30, "wikipedia": 0.30}
HUB = {"c4": ("allenai/c4", "en", "train"), "gutenberg": ("manu/project_gutenberg", None, "en"),
       "fineweb_edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train"),
       "wikipedia": ("wikimedia/wikipedia", "20231101.en", "train")}


def write_config(path: Path, budget: int) -> None:
    sources = []
    for name, share in SHARES.items():
        dataset, config, split = HUB[name]
        source = {"name": name, "type": "hf", "dataset": dataset, "split": split, "tokens": max(1, int(budget * share))}
        if config:
            source["config"] = config
        sources.append(source)
    path.write_text(json.dumps({"sources": sources, "processing_params": {"min_chars": 200}}))


def run_stage(config: Path, out: Path, mirror: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmforge.cli", "corpus", "--config", str(config), "--output-dir", str(out),
                    "--mirror", str(mirror), "--log-level", "WARNING"], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = json.loads((out / "manifest.json").read_text())["figures"]
    text_bytes = 0
    for shard in figures["shards"]:
        with gzip.open(out / shard["path"], "rt", encoding="utf-8") as handle:
            text_bytes += sum(len(json.loads(line)["text"].encode("utf-8")) for line in handle)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"tokens": figures["tokens"], "documents": figures["documents"], "peak_mb": figures["peak_rss_mb"],
            "text_mb": text_bytes / 1e6, "cpu_s": cpu, "wall_s": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_mirror = os.environ.get("LMFORGE_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "mirror")
    parser.add_argument("--mirror", default=default_mirror)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1_000_000, 6_000_000])
    args = parser.parse_args()
    mirror = Path(args.mirror)
    if not mirror.is_dir():
        print(f"no mirror at {mirror}: set LMFORGE_MIRROR or --mirror", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, budget in [("baseline", 4_000)] + [(f"{b:,}", b) for b in args.budgets]:
            config = Path(tmp) / f"bench_{budget}.json"
            write_config(config, budget)
            result = run_stage(config, Path(tmp) / f"out_{budget}", mirror)
            rows.append((label, result))
    base, base_cpu = rows[0][1]["peak_mb"], rows[0][1]["cpu_s"]
    print("| budget (tokens) | tokens written | documents | peak RSS (MB) | above baseline (MB) "
          "| text MB | CPU s | MB/s per core (all) | MB/s per core (minus baseline CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        rate = r["text_mb"] / max(r["cpu_s"], 1e-9)
        marginal = r["text_mb"] / max(r["cpu_s"] - base_cpu, 1e-9) if r is not rows[0][1] else 0.0
        print(f"| {label} | {r['tokens']:,} | {r['documents']:,} | {r['peak_mb']:.0f} | {r['peak_mb'] - base:+.0f} "
              f"| {r['text_mb']:.1f} | {r['cpu_s']:.1f} | {rate:.1f} | {marginal:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
