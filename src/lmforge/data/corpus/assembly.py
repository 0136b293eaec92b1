"""Phase 2: mix the cached sources in a seeded order, write the output shards and the manifest.

`build` runs both phases; the manifest is written last, so an interrupted build leaves no
manifest and is redone (phase 1 from its cache with --use-cache).
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from lmforge.artifacts import prepare_output_dir, write_manifest
from lmforge.data.corpus.cache import SourceCache, SourceState, shortfall
from lmforge.data.corpus.report import print_summary
from lmforge.data.corpus.schema import STAGE, CorpusConfig, ProcessingParams
from lmforge.data.corpus.shards import JsonlGzWriter
from lmforge.data.corpus.streaming import run_phase1
from lmforge.data.decontam import Tally, build_index
from lmforge.data.decontam import figures as decontam_figures
from lmforge.data.text_clean import TokenCounter
from lmforge.errors import DataError
from lmforge.log import get_logger, human_count, peak_rss_mb

log = get_logger(__name__)


def mixed_order(states: list[SourceState], caches: list[SourceCache], seed: int) -> Iterator[dict]:
    """Interleave the sources' documents in a seeded random order.

    Each next document comes from a source chosen with probability proportional to
    its remaining documents: a uniformly random interleaving that keeps each
    source's own order and needs one open reader per source, not the corpus in memory.
    """
    rng = random.Random(seed)
    readers = [cache.docs(st) for st, cache in zip(states, caches)]
    remaining = [st.docs for st in states]
    total = sum(remaining)
    while total:
        pick = rng.randrange(total)
        index = 0
        while pick >= remaining[index]:
            pick -= remaining[index]
            index += 1
        remaining[index] -= 1
        total -= 1
        yield next(readers[index])


def write_shards(out: Path, docs: Iterator[dict], pp: ProcessingParams, compresslevel: int) -> list[dict]:
    """Write shards/shard_NNNN.jsonl.gz; a shard closes at shard_size docs or shard_max_tokens tokens.

    Returns one {"path", "documents", "tokens"} per shard; their sha256 comes from the manifest.
    """
    shard_dir = out / "shards"
    shutil.rmtree(shard_dir, ignore_errors=True)  # stale shards of an earlier run must not linger
    shard_dir.mkdir(parents=True)
    shards: list[dict] = []
    writer: JsonlGzWriter | None = None
    try:
        for doc in docs:
            if writer is None:
                rel = f"shards/shard_{len(shards):04d}.jsonl.gz"
                writer = JsonlGzWriter(out / rel, compresslevel)
            writer.write({"id": doc["id"], "source": doc["source"], "text": doc["text"]}, doc["tokens"])
            if writer.docs >= pp.shard_size or writer.tokens >= pp.shard_max_tokens:
                shards.append(_close_shard(rel, writer))
                writer = None
        if writer is not None:
            shards.append(_close_shard(rel, writer))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return shards


def _close_shard(rel: str, writer: JsonlGzWriter) -> dict:
    writer.close()
    return {"path": rel, "documents": writer.docs, "tokens": writer.tokens}


def build(cfg: CorpusConfig, counter: TokenCounter, mirror: Path | None, out: Path, *, use_cache: bool,
          config_record: dict, inputs: dict) -> dict:
    """Both phases and the manifest; returns the manifest."""
    started = time.perf_counter()
    prepare_output_dir(out)
    cache_root = out / "cache"
    if not use_cache and cache_root.exists():
        log.info("not using the cache (no --use-cache): rebuilding %s", cache_root)
    log.info("📥 Phase 1: streaming %d source(s), %s tokens in total (%s)", len(cfg.sources),
             human_count(sum(cfg.budget(s) for s in cfg.sources)),
             "exact counts" if counter.exact else "estimated as characters/4")
    index = build_index(cfg.decontamination, mirror)
    states = run_phase1(cfg, counter, mirror, cache_root, use_cache, index)
    phase1_s = time.perf_counter() - started
    shortfalls = {st.name: shortfall(st) for st in states if shortfall(st)}
    if shortfalls and cfg.processing_params.strict_budgets:
        raise DataError("strict_budgets: source(s) ran dry before their budget: " + ", ".join(
            f"{st.name} {st.tokens:,}/{st.budget:,} tokens" for st in states if st.name in shortfalls))

    log.info("🔧 Starting Phase 2: streaming assembly (seeded mixing, shards of <= %s docs / %s tokens)",
             f"{cfg.processing_params.shard_size:,}", human_count(cfg.processing_params.shard_max_tokens))
    caches = [SourceCache(cache_root, i, s.name) for i, s in enumerate(cfg.sources)]
    docs = mixed_order(states, caches, cfg.processing_params.seed)
    shards = write_shards(out, docs, cfg.processing_params, cfg.output.compresslevel)
    figures = _figures(cfg, counter, states, shards, shortfalls, mirror, phase1_s, time.perf_counter() - started)
    figures["decontamination"] = decontam_figures(
        cfg.decontamination, index, {st.name: Tally.from_dict(st.decontamination) for st in states})
    manifest = _write_manifest(out, config_record, inputs, figures)
    if not cfg.output.keep_cache:
        shutil.rmtree(cache_root, ignore_errors=True)
    print_summary(figures, out)
    return manifest


def _write_manifest(out: Path, config_record: dict, inputs: dict, figures: dict) -> dict:
    """The manifest, written once and last: per-shard documents and tokens in the
    figures, per-shard size and sha256 in `outputs` (hashed once, by write_manifest)."""
    shards = figures["shards"]
    # Exact counts make the corpus tokenizer-dependent: record the lineage like every such artifact.
    return write_manifest(out, STAGE, config=config_record, outputs=[s["path"] for s in shards],
                          inputs=inputs, figures=figures,
                          tokenizer_sha256=figures["token_counting"].get("tokenizer_sha256"))


def _figures(cfg, counter, states, shards, shortfalls, mirror, phase1_s, total_s) -> dict:
    import platform

    total_tokens = sum(st.tokens for st in states)
    skipped = sum((Counter(st.all_skips()) for st in states), Counter())
    duplicates = sum(st.duplicates for st in states)
    kept = sum(st.docs for st in states)
    return {
        "documents": kept,
        "tokens": total_tokens,
        "characters": sum(st.chars for st in states),
        "token_counting": counter.describe(),
        "sources": {st.name: {
            "budget": st.budget, "tokens": st.tokens, "documents": st.docs, "characters": st.chars,
            "percent_of_corpus": round(100 * st.tokens / max(total_tokens, 1), 2),
            "budget_met_percent": round(100 * st.tokens / st.budget, 3), "records_read": st.records_read,
            "duplicates": st.duplicates, "skipped": st.all_skips(), "ran_dry": st.exhausted,
            "shortfall_tokens": shortfalls.get(st.name, 0), "last_document_truncated": st.truncated_last,
        } for st in states},
        "skipped": dict(sorted(skipped.items())),
        "duplicates": duplicates,
        "dedup_rate": round(duplicates / max(duplicates + kept, 1), 6),
        "budget_shortfalls": shortfalls,
        "shards": shards,
        "shard_count": len(shards),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seconds": {"phase1": round(phase1_s, 2), "total": round(total_s, 2)},
        "mirror": str(mirror) if mirror else None,
        "python_version": platform.python_version(),
    }
