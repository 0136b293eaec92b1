#!/usr/bin/env python
"""Throughput of `lmforge pack` against plain single-process SentencePiece encoding.

Builds (once, cached in --work-dir) a corpus artifact from real mirror data (C4,
Wikipedia, FineWeb stand-in, Gutenberg) and an lmforge tokenizer trained on it by the
real tokenizer stage, then in the same run measures:

  reference  texts already in memory, `sp.encode(batch, num_threads=1)` of whole
             documents in one process (the issue's reference)
  pieces     the same process encoding the same exact pieces `lmforge pack` encodes
             (lmforge.tokenizer.piecewise), to separate the pieces' gain from the workers'
  lmforge    `python -m lmforge.cli pack --workers N --force` end to end (process start,
             sha256 checks of every shard, gzip + JSON reading, encoding, writing .bin/.idx)

and prints tokens/s of each, the ratios (target >= 1.8 with 2 workers against the
reference), and the peak memory of the pack, sampled while it runs.

    LMFORGE_MIRROR=../shared/mirror python bench/pack_throughput.py --chars-per-source 10000000
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

from lmforge.artifacts import write_manifest  # noqa: E402
from lmforge.data.sources import stream_hub  # noqa: E402
from lmforge.data.packing import PackConfig  # noqa: E402
from lmforge.tokenizer.format import MODEL_FILE

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


def build_tokenizer(out: Path, corpus: Path, vocab_size: int) -> Path:
    """An lmforge tokenizer (the real `lmforge tokenizer` stage, its default settings) trained on the corpus."""
    from lmforge.stages.tokenizer import train_tokenizer
    from lmforge.tokenizer.training import TokenizerConfig

    if not (out / "manifest.json").is_file():
        cfg = TokenizerConfig(corpus_dir=str(corpus), vocab_size=vocab_size, max_sentences=300_000, num_threads=2,
                              held_out_max_chars=200_000)
        train_tokenizer(cfg, out)
    return out


def read_texts(corpus: Path) -> list[str]:
    texts = []
    for shard in sorted((corpus / "shards").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for line in handle]
    return texts


def reference_encode(tokenizer: Path, texts: list[str], batch: int, piece_chars: int = 0) -> tuple[int, float, float]:
    """Tokens, wall seconds and CPU seconds of single-process, single-thread batched SentencePiece encoding.

    piece_chars=0 is the reference of the issue: `sp.encode` of whole documents. With
    piece_chars > 0 the same process encodes the same exact pieces as `lmforge pack`,
    which separates what the pieces gain from what the second worker gains.
    """
    import sentencepiece as spm

    from lmforge.tokenizer.piecewise import PiecewiseEncoder

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / MODEL_FILE))
    encoder = PiecewiseEncoder(sp, piece_chars)
    assert encoder.piece_chars == piece_chars, encoder.reason_whole
    started, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for i in range(0, len(texts), batch):
        tokens += sum(len(ids) + 2 for ids in encoder.encode(texts[i:i + batch]))  # + <s> </s>
    return tokens, time.perf_counter() - started, time.process_time() - cpu


def run_pack(corpus: Path, tokenizer: Path, out: Path, workers: int, piece_chars: int) -> tuple[dict, float, dict]:
    """Run `lmforge pack` as a user would; sample the RSS of it and its workers meanwhile.

    Sampling with psutil, rather than trusting getrusage in the child, because Linux
    carries the launching process's peak over exec into the child's ru_maxrss.
    """
    import psutil

    command = [sys.executable, "-m", "lmforge.cli", "pack", "--corpus-dir", str(corpus), "--tokenizer-dir",
               str(tokenizer), "--output-dir", str(out), "--workers", str(workers), "--force",
               "--set", f"encode_piece_chars={piece_chars}", "--log-level", "WARNING"]
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
    parser.add_argument("--piece-chars", type=int, default=PackConfig.encode_piece_chars,
                        help="lmforge pack's encode_piece_chars (0 = whole documents, as the reference)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate reference and pack runs; best of each")
    parser.add_argument("--corpus-dir", help="measure on this existing corpus artifact (e.g. the plan's step 3 "
                        "output) instead of building one")
    parser.add_argument("--tokenizer-dir", help="with --corpus-dir: this existing tokenizer artifact")
    args = parser.parse_args()

    work = Path(args.work_dir)
    if args.corpus_dir:
        if not args.tokenizer_dir:
            parser.error("--corpus-dir needs --tokenizer-dir")
        corpus, tokenizer = Path(args.corpus_dir), Path(args.tokenizer_dir)
        args.vocab_size = json.loads((tokenizer / "tokenizer_config.json").read_text())["vocab_size"]
    else:
        corpus = build_corpus(work / f"corpus_{args.chars_per_source}", args.mirror, args.chars_per_source,
                              args.shard_docs)
        tokenizer = build_tokenizer(work / f"lmforge_tok_{args.vocab_size}", corpus, args.vocab_size)
    texts = read_texts(corpus)
    chars = sum(map(len, texts))
    best = {name: (float("inf"), float("inf")) for name in ("whole", "pieces", "pack")}  # (wall, CPU) seconds
    for _ in range(args.repeats):
        for name, piece_chars in (("whole", 0), ("pieces", args.piece_chars)):
            ref_tokens, seconds, cpu = reference_encode(tokenizer, texts, 256, piece_chars)
            best[name] = min(best[name][0], seconds), min(best[name][1], cpu)
        manifest, seconds, peak = run_pack(corpus, tokenizer, work / "packed", args.workers, args.piece_chars)
        best["pack"] = min(best["pack"][0], seconds), min(best["pack"][1], peak["cpu_seconds"])
    figures = manifest["figures"]
    pack_tokens = sum(figures["tokens_per_source"].values())
    assert pack_tokens == ref_tokens, (pack_tokens, ref_tokens)  # the same text, the same tokens
    (whole, whole_cpu), (pieces, pieces_cpu), (pack, pack_cpu) = best["whole"], best["pieces"], best["pack"]
    print(f"corpus: {len(texts):,} documents, {chars / 1e6:.1f}M characters, {len(list((corpus / 'shards').iterdir()))} "
          f"shards; lmforge tokenizer, vocab {args.vocab_size}; {os.cpu_count()} CPUs; best of {args.repeats}")
    print(f"{'reference: sp.encode of whole documents, 1 process':<52}: {ref_tokens:,} tokens in {whole:.2f} s = "
          f"{ref_tokens / whole / 1e6:.3f}M tokens/s, {whole_cpu:.2f} CPU s")
    print(f"{f'same text in exact pieces of ~{args.piece_chars} chars, 1 process':<52}: {ref_tokens:,} tokens in {pieces:.2f} s = "
          f"{ref_tokens / pieces / 1e6:.3f}M tokens/s, {pieces_cpu:.2f} CPU s")
    print(f"{f'lmforge pack --workers {args.workers}, end to end':<52}: {pack_tokens:,} tokens in {pack:.2f} s = "
          f"{pack_tokens / pack / 1e6:.3f}M tokens/s, {pack_cpu:.2f} CPU s (all processes)")
    print(f"ratio vs the reference (whole documents): {whole / pack:.2f}x  (target >= 1.8x); "
          f"vs the same pieces in 1 process: {pieces / pack:.2f}x; load average now {os.getloadavg()[0]:.2f}")
    print(f"pack peak RSS (sampled every 50 ms): main process {peak['main_mb']:.0f} MiB, main + workers "
          f"{peak['all_processes_mb']:.0f} MiB; rows {figures['sequences']}, dtype {figures['dtype']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
