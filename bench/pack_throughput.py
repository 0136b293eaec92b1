#!/usr/bin/env python
"""Throughput of `lmforge pack` against plain single-process SentencePiece encoding.

Builds (once, cached in --work-dir) a corpus artifact from real mirror data (C4,
Wikipedia, FineWeb stand-in, Gutenberg) and a SentencePiece tokenizer trained on part
of it, then in the same run measures:

  reference  texts already in memory, `sp.encode(batch, num_threads=1)` in one process
  lmforge    `python -m lmforge.cli pack --workers N --force` end to end (process start,
             sha256 checks of every shard, gzip + JSON reading, encoding, writing .bin/.idx)

and prints tokens/s of each, their ratio (target >= 1.8 with 2 workers), and the peak
memory that the pack manifest records.

    LMFORGE_MIRROR=../shared/mirror python bench/pack_throughput.py --chars-per-source 5000000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmforge.artifacts import atomic_write_json, sha256_file, write_manifest  # noqa: E402
from lmforge.sources import stream_hub  # noqa: E402
from lmforge.tokenizer import CONFIG_FILE, MODEL_FILE, spm_special_token_args  # noqa: E402

SOURCES = [  # (name, hub id, config, split)
    ("c4", "allenai/c4", "en", "train"),
    ("wikipedia", "wikimedia/wikipedia", "20231101.en", "train"),
    ("fineweb", "HuggingFaceFW/fineweb-edu", "sample-10BT", "train"),
    ("gutenberg", "manu/project_gutenberg", None, "en"),
]


def build_corpus(out: Path, mirror: str, chars_per_source: int, shard_docs: int) -> Path:
    """A corpus artifact (shards + manifest) holding about chars_per_source of each source."""
    if (out / "manifest.json").is_file():
        return out
    (out / "shards").mkdir(parents=True, exist_ok=True)
    docs = []
    for name, hub_id, config, split in SOURCES:
        taken = 0
        for n, record in enumerate(stream_hub(hub_id, config, split, mirror=mirror)):
            text = (record.get("text") or "")[:chars_per_source - taken]
            if text.strip():
                docs.append({"id": f"{name}-{n}", "source": name, "text": text})
                taken += len(text)
            if taken >= chars_per_source:
                break
    outputs = []
    for n, start in enumerate(range(0, len(docs), shard_docs)):
        rel = f"shards/shard_{n:04d}.jsonl.gz"
        with gzip.GzipFile(out / rel, "wb", mtime=0) as handle:
            for doc in docs[start:start + shard_docs]:
                handle.write((json.dumps(doc) + "\n").encode())
        outputs.append(rel)
    write_manifest(out, "corpus", config={"bench": True}, outputs=outputs,
                   figures={"documents": len(docs), "characters": sum(len(d["text"]) for d in docs)})
    return out


def build_tokenizer(out: Path, corpus: Path, vocab_size: int, train_chars: int) -> Path:
    import sentencepiece as spm

    if (out / "manifest.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    texts = read_texts(corpus)
    sample, size = [], 0
    for i in range(0, len(texts), 7):  # every 7th document, so each source is represented
        sample.append(texts[i][:200_000])
        size += len(sample[-1])
        if size >= train_chars:
            break
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for t in sample for line in t.splitlines() if line.strip()),
        model_prefix=str(out / "spm"), vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
        character_coverage=0.9995, num_threads=2, minloglevel=2, **spm_special_token_args())
    digest = sha256_file(out / MODEL_FILE)
    atomic_write_json(out / CONFIG_FILE, {"sha256_hash": digest, "vocab_size": vocab_size, "model_type": "bpe"})
    write_manifest(out, "tokenizer", config={"bench": True}, outputs=[MODEL_FILE, "spm.vocab", CONFIG_FILE],
                   tokenizer_sha256=digest)
    return out


def read_texts(corpus: Path) -> list[str]:
    texts = []
    for shard in sorted((corpus / "shards").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for line in handle]
    return texts


def reference_encode(tokenizer: Path, texts: list[str], batch: int) -> tuple[int, float, float]:
    """Tokens, wall seconds and CPU seconds of single-process, single-thread batched SentencePiece encoding."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / MODEL_FILE))
    started, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += sum(len(ids) + 2 for ids in sp.encode(texts[i:i + batch], num_threads=1))  # + <s> </s>
    return tokens, time.perf_counter() - started, time.process_time() - cpu


def run_pack(corpus: Path, tokenizer: Path, out: Path, workers: int) -> tuple[dict, float, dict]:
    """Run `lmforge pack` as a user would; sample the RSS of it and its workers meanwhile.

    Sampling with psutil, rather than trusting getrusage in the child, because Linux
    carries the launching process's peak over exec into the child's ru_maxrss.
    """
    import psutil

    command = [sys.executable, "-m", "lmforge.cli", "pack", "--corpus-dir", str(corpus), "--tokenizer-dir",
               str(tokenizer), "--output-dir", str(out), "--workers", str(workers), "--force",
               "--log-level", "WARNING"]
    peak = {"main_mb": 0.0, "all_processes_mb": 0.0}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    while proc.poll() is None:
        try:
            main_rss = proc.memory_info().rss
            total = main_rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:  # a process ended between listing and reading it
            continue
        peak["main_mb"] = max(peak["main_mb"], main_rss / 2**20)
        peak["all_processes_mb"] = max(peak["all_processes_mb"], total / 2**20)
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the pack's own waited-for workers
    peak["cpu_seconds"] = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"lmforge pack failed with exit code {proc.returncode}")
    return json.loads((out / "manifest.json").read_text()), seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("LMFORGE_MIRROR", str(REPO.parent / "shared" / "mirror")))
    parser.add_argument("--work-dir", default="/tmp/lmforge_bench_pack")
    parser.add_argument("--chars-per-source", type=int, default=5_000_000)
    parser.add_argument("--shard-docs", type=int, default=500)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternate reference and pack runs; best of each")
    args = parser.parse_args()

    work = Path(args.work_dir)
    corpus = build_corpus(work / f"corpus_{args.chars_per_source}", args.mirror, args.chars_per_source,
                          args.shard_docs)
    tokenizer = build_tokenizer(work / f"tok_{args.vocab_size}", corpus, args.vocab_size, 3_000_000)
    texts = read_texts(corpus)
    chars = sum(map(len, texts))
    ref_best = pack_best = ref_cpu = pack_cpu = float("inf")
    for _ in range(args.repeats):
        ref_tokens, ref_seconds, cpu = reference_encode(tokenizer, texts, 256)
        ref_best, ref_cpu = min(ref_best, ref_seconds), min(ref_cpu, cpu)
        manifest, pack_seconds, peak = run_pack(corpus, tokenizer, work / "packed", args.workers)
        pack_best, pack_cpu = min(pack_best, pack_seconds), min(pack_cpu, peak["cpu_seconds"])
    figures = manifest["figures"]
    pack_tokens = sum(figures["tokens_per_source"].values())
    assert pack_tokens == ref_tokens, (pack_tokens, ref_tokens)  # the same text, the same tokens
    print(f"corpus: {len(texts):,} documents, {chars / 1e6:.1f}M characters, {len(list((corpus / 'shards').iterdir()))} "
          f"shards; tokenizer vocab {args.vocab_size}; {os.cpu_count()} CPUs")
    print(f"reference  sentencepiece 1 process : {ref_tokens:,} tokens in {ref_best:.2f} s = "
          f"{ref_tokens / ref_best / 1e6:.3f}M tokens/s")
    print(f"lmforge pack --workers {args.workers}       : {pack_tokens:,} tokens in {pack_best:.2f} s = "
          f"{pack_tokens / pack_best / 1e6:.3f}M tokens/s (end to end, wall clock)")
    print(f"ratio: {ref_best / pack_best:.2f}x  (target >= 1.8x)")
    print(f"CPU seconds: reference {ref_cpu:.2f}, pack {pack_cpu:.2f} (all processes; overhead "
          f"{pack_cpu / ref_cpu - 1:+.0%}); load average now {os.getloadavg()[0]:.2f}")
    print(f"pack peak RSS (sampled every 50 ms): main process {peak['main_mb']:.0f} MiB, main + workers "
          f"{peak['all_processes_mb']:.0f} MiB; rows {figures['sequences']}, dtype {figures['dtype']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
