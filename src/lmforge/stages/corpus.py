"""Plan steps 1 and 3: build a text corpus from token-budgeted sources.

Phase 1 streams each source in turn (Hugging Face hub, its local mirror, local
files, or the built-in Python documentation corpus), cleans every record
(Unicode normalisation, control characters, length filters, splitting of huge
documents), drops exact duplicates across all sources, and stops each source on its
token budget. Its output goes to a per-source cache under OUTPUT_DIR/cache/, so
`--use-cache` resumes a killed run without redoing finished work.

Phase 2 mixes the sources in a seeded, deterministic order and writes
OUTPUT_DIR/shards/shard_NNNN.jsonl.gz (records {"id", "source", "text"}) and
manifest.json, last.

`--analyze-only` samples each source, estimates documents per budget, writes
plan.json and writes no shards.

Tokens are estimated as ceil(characters / 4) until a trained tokenizer is given
(`--tokenizer-dir` or the config's `tokenizer_dir`); then they are counted exactly.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lmforge.data.corpus.analyze import analyze
from lmforge.data.corpus.assembly import build
from lmforge.data.corpus.cache import KILL_AFTER_PARTS_ENV
from lmforge.data.corpus.inputs import mirror_dir, preflight, token_counter
from lmforge.data.corpus.schema import (
    STAGE,
    CorpusConfig,
    OutputParams,
    ProcessingParams,
    SourceSpec,
    config_record,
    load_corpus_config,
)
from lmforge.data.corpus.shards import JsonlGzWriter, read_jsonl_gz
from lmforge.log import get_logger, human_count
from lmforge.pipeline.stage import StagePlan, run_stage

__all__ = ["add_arguments", "main", "describe", "build", "analyze", "load_corpus_config", "CorpusConfig",
           "SourceSpec", "ProcessingParams", "OutputParams", "JsonlGzWriter", "read_jsonl_gz", "STAGE",
           "KILL_AFTER_PARTS_ENV"]

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="corpus config (JSON), e.g. config/quickstart/corpus.json")
    parser.add_argument("--output-dir", required=True, help="where cache/, shards/, plan.json, manifest.json go")
    parser.add_argument("--analyze-only", action="store_true", help="sample sources, write plan.json, no shards")
    parser.add_argument("--use-cache", action="store_true", help="reuse/resume the per-source cache in OUTPUT_DIR/cache")
    parser.add_argument("--mirror", default=None, help="read hub datasets from this local mirror (else $LMFORGE_MIRROR)")
    parser.add_argument("--tokenizer-dir", default=None, help="count tokens exactly with this trained tokenizer")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUTPUT_DIR is up to date")
    parser.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted key; sources.NAME.tokens for a source); repeatable")


def main(args: argparse.Namespace) -> int:
    cfg = load_corpus_config(args.config, args.set_items, args.tokenizer_dir)
    counter = token_counter(cfg)
    mirror = mirror_dir(args.mirror)
    out = Path(args.output_dir)
    preflight(cfg, mirror)
    if args.analyze_only:
        return analyze(cfg, counter, mirror, out)
    inputs = {"tokenizer": Path(cfg.tokenizer_dir)} if cfg.tokenizer_dir else {}
    plan = StagePlan(STAGE, out, config_record(cfg, counter), inputs, force=args.force)
    run_stage(plan, lambda p: build(cfg, counter, mirror, p.output_dir, use_cache=args.use_cache,
                                    config_record=p.config, inputs=p.inputs))
    return 0


def describe(args: argparse.Namespace) -> dict[str, str]:
    """Derived figures for `lmforge run --dry-run`, without reading any data."""
    cfg = load_corpus_config(args.config, getattr(args, "set_items", None), getattr(args, "tokenizer_dir", None))
    total = sum(cfg.budget(s) for s in cfg.sources)
    pp = cfg.processing_params
    return {
        "sources": ", ".join(f"{s.name}={human_count(cfg.budget(s))}" for s in cfg.sources),
        "total_tokens": human_count(total),
        "token_counting": "exact (tokenizer)" if cfg.tokenizer_dir else "estimated (chars/4)",
        "estimated_shards": str(max(1, math.ceil(total / pp.shard_max_tokens))),
        "decontamination": (f"{cfg.decontamination.mode}, {cfg.decontamination.ngram}-grams vs "
                            f"{', '.join(cfg.decontamination.eval_sets)}" if cfg.decontamination.mode != "off" else "off"),
    }
