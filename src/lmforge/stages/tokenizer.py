"""Plan step 2: train a SentencePiece tokenizer on a corpus artifact.

Reads the corpus that `lmforge corpus` wrote (the config's `corpus_dir`, default
data/datasets/tokenizer_corpus, or --corpus-dir), then:

  1. integrity verification: every shard re-hashed against the corpus manifest;
  2. sentence streaming: documents split into lines (over-long lines split, counted),
     held-out passages set aside (by a hash of their id), the rest streamed into SentencePiece;
  3. corpus analysis: shards n/n, documents, sentences, characters;
  4. SentencePiece training (BPE, byte fallback, special tokens at fixed ids);
  5. outputs: spm.model, spm.vocab, tokenizer_config.json (sha256_hash, Hugging Face
     keys, ChatML template), tokenizer.json (AutoTokenizer), TOKENIZER_CARD.md
     (compression, fertility, coverage on held-out text), manifest.json last.

Example (the plan's command):
  python scripts/20_train_tokenizer.py --config config/pretrain/tokenizer/spm32k.json \\
      --output-dir data/models/tokenizers/spm_32k --log-level INFO
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from lmforge.artifacts import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    describe_input,
    load_manifest,
    prepare_output_dir,
    sha256_file,
    write_manifest,
)
from lmforge.config import load_config, parse_set_overrides, to_dict
from lmforge.errors import ArtifactError, DataError
from lmforge.log import get_logger, human_count, peak_rss_mb, progress
from lmforge.pipeline.stage import StagePlan, run_stage
from lmforge.tokenizer.format import CONFIG_FILE, MODEL_FILE, VOCAB_FILE
from lmforge.tokenizer.hf_export import export_hf_files
from lmforge.tokenizer.metrics import measure_by_source, render_card
from lmforge.tokenizer.training import (
    CorpusStream,
    StreamStats,
    TokenizerConfig,
    check_special_ids,
    lmforge_config_keys,
    train_spm,
    verify_corpus,
    vocab_text,
)

log = get_logger(__name__)

CARD_FILE = "TOKENIZER_CARD.md"
STAGE = "tokenizer"


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="tokenizer config JSON (e.g. config/pretrain/tokenizer/spm32k.json)")
    parser.add_argument("--output-dir", required=True, help="tokenizer directory to write (e.g. data/models/tokenizers/spm_32k)")
    parser.add_argument("--corpus-dir", default=None, help="corpus artifact to train on (overrides the config's corpus_dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set vocab_size=8000 (repeatable)")
    parser.add_argument("--force", action="store_true", help="retrain even if the output is up to date")


def load_stage_config(args: argparse.Namespace) -> TokenizerConfig:
    overrides = parse_set_overrides(args.set)
    if args.corpus_dir:
        overrides["corpus_dir"] = args.corpus_dir
    return load_config(args.config, TokenizerConfig, overrides)


def main(args: argparse.Namespace) -> int:
    cfg = load_stage_config(args)
    train_tokenizer(cfg, args.output_dir, force=args.force, verbose=args.log_level == "DEBUG")
    return 0


def describe(args: argparse.Namespace) -> dict[str, str]:
    """Figures of this invocation without training (for `lmforge run --dry-run`)."""
    cfg = load_stage_config(args)
    out = {"vocab_size": str(cfg.vocab_size), "model_type": cfg.model_type, "corpus": cfg.corpus_dir,
           "max sentences": human_count(cfg.max_sentences)}
    try:
        figures = load_manifest(cfg.corpus_dir, "corpus", verify="none").get("figures", {})
        # the corpus stage records `shards` as the list of shard files and `shard_count`
        shards = figures.get("shard_count", figures.get("shards"))
        counts = {"documents": figures.get("documents"), "characters": figures.get("characters"),
                  "shards": len(shards) if isinstance(shards, list) else shards}
        out.update({f"corpus {key}": human_count(n) for key, n in counts.items() if isinstance(n, (int, float))})
    except ArtifactError:
        out["corpus status"] = "not built yet"
    return out


def plan_tokenizer(cfg: TokenizerConfig, output_dir: str | Path, *, force: bool = False) -> StagePlan:
    """The stage's identity: its resolved config and the corpus it reads."""
    return StagePlan(STAGE, Path(output_dir), to_dict(cfg), {"corpus": Path(cfg.corpus_dir)}, force=force)


def train_tokenizer(cfg: TokenizerConfig, output_dir: str | Path, *, force: bool = False,
                    verbose: bool = False) -> dict:
    """The whole stage through the runner (skipped when up to date). Returns the manifest."""
    plan = plan_tokenizer(cfg, output_dir, force=force)
    outcome = run_stage(plan, lambda p: build_tokenizer(cfg, p, verbose))
    return outcome.manifest or load_manifest(plan.output_dir, STAGE)


def build_tokenizer(cfg: TokenizerConfig, plan: StagePlan, verbose: bool = False) -> dict:
    """Verify, stream, train, measure, write. Returns the manifest."""
    import sentencepiece as spm

    corpus_dir, out, config_dict = Path(cfg.corpus_dir), plan.output_dir, plan.config
    started = time.time()
    _, shards = verify_corpus(corpus_dir)
    out = prepare_output_dir(out)

    log.info("Sentence streaming: %d shards -> SentencePiece (target: %s sentences max, %s)",
             len(shards), human_count(cfg.max_sentences), "shuffled" if cfg.shuffle_sentences else "in order")
    stream = CorpusStream(corpus_dir, shards, cfg)
    sentences = progress(stream, desc="Sentence streaming", unit=" sentences")
    log.info("SentencePiece training: %s, vocab_size=%d, %d threads", cfg.model_type, cfg.vocab_size, cfg.num_threads)
    try:
        model = train_spm(sentences, cfg, verbose)
    finally:
        stream.check()  # a failure while reading the corpus is the cause of anything that follows
        if stream.stats.sentences == 0:
            raise DataError(f"{corpus_dir}: no training sentences (all documents empty or held out)")
    stats = stream.stats
    _log_analysis(stats, stream.skips, len(shards))
    if stats.sentences > cfg.max_sentences:
        log.info("SentencePiece trained on a %s sample of the %s sentences (max_sentences)",
                 "random" if cfg.shuffle_sentences else "first", human_count(stats.sentences))
    train_peak_mb = peak_rss_mb()  # before transformers is imported for the export: SentencePiece's share
    train_seconds = time.time() - started

    atomic_write_bytes(out / MODEL_FILE, model)
    sha256 = sha256_file(out / MODEL_FILE)
    sp = spm.SentencePieceProcessor(model_file=str(out / MODEL_FILE))
    check_special_ids(sp)
    atomic_write_text(out / VOCAB_FILE, vocab_text(sp))
    hf_files, hf_keys = export_hf_files(out, cfg.model_max_length)
    corpus_identity = describe_input(corpus_dir)["identity"]
    atomic_write_json(out / CONFIG_FILE, {**lmforge_config_keys(sha256, cfg, corpus_identity), **hf_keys})

    metrics = measure_by_source(sp, dict(stream.held_out), num_threads=cfg.num_threads)
    corpus_figures = _corpus_figures(stats, stream.skips, len(shards))
    card = render_card(output_dir=str(out), sha256=sha256, settings=_card_settings(cfg), corpus=corpus_figures,
                       metrics=metrics)
    atomic_write_text(out / CARD_FILE, card)

    figures = {
        "vocab_size": sp.get_piece_size(),
        **corpus_figures,
        "skipped": dict(stream.skips),
        "held_out_metrics": {source: m.as_dict() for source, m in metrics.items()},
        "seconds": round(time.time() - started, 1),
        "train_seconds": round(train_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "train_peak_rss_mb": round(train_peak_mb, 1),
    }
    outputs = [MODEL_FILE, VOCAB_FILE, CONFIG_FILE, CARD_FILE, *hf_files]
    manifest = write_manifest(out, STAGE, config=config_dict, outputs=outputs, inputs=plan.inputs,
                              figures=figures, tokenizer_sha256=sha256)
    _print_summary(out, sp.get_piece_size(), sha256, metrics["overall"], figures)
    return manifest


def _corpus_figures(stats: StreamStats, skips: Counter, n_shards: int) -> dict:
    return {
        "shards": n_shards,
        "documents": stats.documents,
        "held_out_passages": stats.held_out_passages,
        "held_out_characters": stats.held_out_characters,
        "sentences": stats.sentences,
        "characters": stats.characters,
        "long_lines_split": stats.long_lines_split,
        "pieces_from_long_lines": stats.pieces_from_long_lines,
        "skipped_records": sum(skips.values()),
    }


def _card_settings(cfg: TokenizerConfig) -> dict:
    keys = ("vocab_size", "model_type", "character_coverage", "byte_fallback", "normalization", "split_digits",
            "max_sentences", "shuffle_sentences", "max_sentence_length", "seed", "held_out_fraction",
            "held_out_passage_chars")
    return {k: getattr(cfg, k) for k in keys} | {"add_dummy_prefix": False, "remove_extra_whitespaces": False,
                                                  "allow_whitespace_only_pieces": True}


def _log_analysis(stats: StreamStats, skips: Counter, n_shards: int) -> None:
    log.info("Corpus analysis: %d/%d shards processed, %s documents, %s sentences, %s characters "
             "(%s characters in %d held-out passages)", stats.shards_done, n_shards, human_count(stats.documents),
             human_count(stats.sentences), human_count(stats.characters), human_count(stats.held_out_characters),
             stats.held_out_passages)
    if stats.long_lines_split:
        log.info("Long lines: %d lines over the byte limit split into %d pieces (none dropped)",
                 stats.long_lines_split, stats.pieces_from_long_lines)
    if skips:
        log.warning("Skipped records: %s", ", ".join(f"{k}={v}" for k, v in sorted(skips.items())))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _num(value: float | None, unit: str) -> str:
    return "n/a (no held-out text)" if value is None else f"{value:.2f} {unit}"


def _print_summary(out: Path, vocab_size: int, sha256: str, overall, figures: dict) -> None:
    print("✅ Tokenizer training complete!")
    print(f"📁 Output: {out}/")
    print(f"   📝 {MODEL_FILE} (vocab_size={vocab_size})")
    print(f"   📊 Compression ratio: {_num(overall.compression, 'chars/token')}")
    print(f"   🎯 Fertility: {_num(overall.fertility, 'tokens/word')}")
    print(f"   📈 Coverage: {_pct(overall.coverage)}")
    print(f"   🔑 sha256_hash: {sha256}")
    print(f"   ⏱️  {figures['seconds']:.1f} s, peak memory {figures['peak_rss_mb']:.0f} MiB, "
          f"{figures['sentences']:,} sentences from {figures['documents']:,} documents")
