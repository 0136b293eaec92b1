#!/usr/bin/env python
"""Benchmark: train the plan's 32K tokenizer on a real-data corpus built from the mirror.

1. Builds a corpus artifact (~33M characters by default) from the hub mirror's C4,
   Gutenberg, Wikipedia and FineWeb files through lmforge.data.sources.stream_hub, in the
   plan's 28/24/24/24 mix (a source the mirror cannot fill is topped up by the others),
   written as `lmforge corpus` writes it: shards/shard_NNNN.jsonl.gz + manifest.json.
2. Runs `lmforge tokenizer --config config/pretrain/tokenizer/spm32k.json` on it in a
   child process and reports its wall time and peak resident memory.
3. Extrapolates wall time and peak memory to the plan's 100M-token corpus from a
   second run on a corpus a third the size (a line through the two points, so the
   fixed cost of starting Python and the libraries is not scaled up).
4. With --compare-model-types: trains BPE and unigram with the same settings on the
   same training sentences and measures both on the same held-out passages.

Usage:
  LMFORGE_MIRROR=../shared/mirror python bench/tokenizer_train.py [--chars 33e6]
      [--work-dir /tmp/lmforge_bench_tokenizer] [--num-threads 2] [--compare-model-types]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.artifacts import load_manifest, write_manifest  # noqa: E402
from lmforge.data.sources import stream_hub  # noqa: E402

# name -> (hub id, config, split, share of the plan's tokenizer mix)
SOURCES = {
    "c4": ("allenai/c4", "en", "train", 0.28),
    "gutenberg": ("manu/project_gutenberg", None, "en", 0.24),
    "wikipedia": ("wikimedia/wikipedia", "20231101.en", "train", 0.24),
    "fineweb": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", 0.24),
}
SHARD_CHARS = 4_000_000


class ShardWriter:
    """Writes {id, source, text} records into gzip shards of about SHARD_CHARS characters."""

    def __init__(self, root: Path):
        self.root, self.paths, self.handle, self.chars = root, [], None, 0
        (root / "shards").mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.handle is None or self.chars >= SHARD_CHARS:
            self.close()
            rel = f"shards/shard_{len(self.paths):04d}.jsonl.gz"
            self.handle = gzip.GzipFile(self.root / rel, "wb", mtime=0)
            self.paths.append(rel)
            self.chars = 0
        self.handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.chars += len(record["text"])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def build_corpus(root: Path, total_chars: int, mirror: str | None) -> dict:
    """The corpus artifact; returns characters and documents per source."""
    if (root / "manifest.json").is_file():
        manifest = load_manifest(root, "corpus", verify="size")
        if manifest["config"].get("total_chars") == total_chars:
            print(f"corpus: reusing {root}")
            return manifest["figures"]["per_source"]
    writer, per_source, remaining = ShardWriter(root), {}, total_chars
    share_left = sum(s[3] for s in SOURCES.values())
    for name, (hub_id, config, split, share) in SOURCES.items():
        target = int(remaining * share / share_left)
        share_left -= share
        chars = docs = 0
        for record in stream_hub(hub_id, config, split, mirror=mirror):
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                continue
            writer.write({"id": f"{name}-{docs}", "source": name, "text": text})
            chars += len(text)
            docs += 1
            if chars >= target:
                break
        per_source[name] = {"characters": chars, "documents": docs, "target": target}
        remaining -= chars
        print(f"corpus: {name}: {docs:,} documents, {chars / 1e6:.1f}M characters (target {target / 1e6:.1f}M)")
    writer.close()
    figures = {"documents": sum(s["documents"] for s in per_source.values()),
               "characters": sum(s["characters"] for s in per_source.values()), "per_source": per_source}
    write_manifest(root, "corpus", config={"bench": "tokenizer_train", "total_chars": total_chars},
                   outputs=writer.paths, figures=figures)
    return per_source


def train_in_child(corpus: Path, out: Path, num_threads: int) -> dict:
    """Run the real CLI in a child process: its own wall time and peak RSS."""
    cmd = [sys.executable, "-m", "lmforge.cli", "tokenizer", "--config",
           str(REPO / "config/pretrain/tokenizer/spm32k.json"), "--output-dir", str(out),
           "--corpus-dir", str(corpus), "--set", f"num_threads={num_threads}", "--force", "--log-level", "INFO"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"tokenizer stage failed:\n{result.stderr[-3000:]}")
    print(result.stdout)
    manifest = load_manifest(out, "tokenizer")
    # The stage records its own process's peak RSS (getrusage in the child itself).
    return {"wall_s": wall, "peak_rss_mb": manifest["figures"]["peak_rss_mb"],
            "train_peak_rss_mb": manifest["figures"]["train_peak_rss_mb"], "manifest": manifest}


def compare_model_types(corpus: Path, num_threads: int) -> dict:
    """Train BPE and unigram on identical sentences; measure on identical held-out text."""
    import sentencepiece as spm

    from lmforge.config import load_config
    from lmforge.tokenizer.training import CorpusStream, TokenizerConfig, train_spm, verify_corpus
    from lmforge.tokenizer.metrics import measure_by_source

    cfg = load_config(REPO / "config/pretrain/tokenizer/spm32k.json", TokenizerConfig,
                      {"corpus_dir": str(corpus), "num_threads": num_threads})
    _, shards = verify_corpus(corpus)
    stream = CorpusStream(corpus, shards, cfg)
    sentences = list(stream)
    results = {}
    for model_type in ("bpe", "unigram"):
        started = time.perf_counter()
        model = train_spm(sentences, dataclasses.replace(cfg, model_type=model_type))
        seconds = time.perf_counter() - started
        sp = spm.SentencePieceProcessor(model_proto=model)
        metrics = measure_by_source(sp, dict(stream.held_out), num_threads=num_threads)
        results[model_type] = {"train_s": seconds, "metrics": {k: v.as_dict() for k, v in metrics.items()}}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=float, default=33e6, help="corpus size in characters (default 33e6)")
    parser.add_argument("--work-dir", default="/tmp/lmforge_bench_tokenizer")
    parser.add_argument("--mirror", default=os.environ.get("LMFORGE_MIRROR", str(REPO.parent / "shared" / "mirror")))
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compare-model-types", action="store_true")
    args = parser.parse_args()

    work = Path(args.work_dir)
    corpus = work / "corpus"
    per_source = build_corpus(corpus, int(args.chars), args.mirror)
    total_chars = sum(s["characters"] for s in per_source.values())
    small_chars = sum(s["characters"] for s in build_corpus(work / "corpus_third", int(args.chars / 3),
                                                             args.mirror).values())
    small = train_in_child(work / "corpus_third", work / "spm_32k_third", args.num_threads)
    run = train_in_child(corpus, work / "spm_32k", args.num_threads)
    figures = run["manifest"]["figures"]
    overall = figures["held_out_metrics"]["overall"]
    tokens = total_chars / overall["chars_per_token"]
    print(f"machine: {platform.node()} {os.cpu_count()} CPU cores, python {platform.python_version()}")
    print(f"corpus: {total_chars / 1e6:.1f}M characters ≈ {tokens / 1e6:.1f}M tokens, "
          f"{figures['documents']:,} documents, {figures['sentences']:,} sentences")
    print(f"train 32K ({args.num_threads} threads): wall {run['wall_s']:.1f} s "
          f"(stage's own figure {figures['seconds']} s, SentencePiece part {figures['train_seconds']} s), "
          f"peak RSS {run['peak_rss_mb']:.0f} MiB")
    print(f"  peak RSS up to the end of SentencePiece training: {run['train_peak_rss_mb']:.0f} MiB")
    print(f"third-size corpus ({small_chars / 1e6:.1f}M characters): wall {small['wall_s']:.1f} s, "
          f"peak RSS {small['peak_rss_mb']:.0f} MiB ({small['train_peak_rss_mb']:.0f} MiB up to the end of training)")
    target_chars = 100e6 * overall["chars_per_token"]
    for what, big, little, unit, scale in (
            ("wall", run["wall_s"], small["wall_s"], "min", 60),
            ("training peak RSS", run["train_peak_rss_mb"], small["train_peak_rss_mb"], "GiB", 1024)):
        slope = (big - little) / (total_chars - small_chars)
        estimate = big + slope * (target_chars - total_chars)
        print(f"extrapolation to 100M tokens ({target_chars / 1e6:.0f}M characters), {what}: "
              f"~{estimate / scale:.1f} {unit} (line through the two runs)")
    for source, m in figures["held_out_metrics"].items():
        print(f"  held-out {source}: {m['chars_per_token']} chars/token, {m['tokens_per_word']} tokens/word, "
              f"coverage {m['coverage_percent']}%")
    if args.compare_model_types:
        results = compare_model_types(corpus, args.num_threads)
        print("model type comparison (same sentences, same held-out text), chars/token:")
        sources = list(results["bpe"]["metrics"])
        print("  " + " | ".join(["type", *sources, "train s"]))
        for model_type, r in results.items():
            row = [f"{r['metrics'][s]['chars_per_token']:.3f}" for s in sources]
            print("  " + " | ".join([model_type, *row, f"{r['train_s']:.1f}"]))


if __name__ == "__main__":
    main()
