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
import hashlib
import io
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lmforge.artifacts import (atomic_write_bytes, atomic_write_json, atomic_write_text, describe_input,
                         is_up_to_date, load_manifest, prepare_output_dir, sha256_file, verify_file,
                         write_manifest)
from lmforge.data.corpus.shards import read_jsonl_gz
from lmforge.config import load_config, parse_set_overrides, spec, to_dict
from lmforge.errors import ArtifactError, DataError
from lmforge.log import get_logger, human_count, peak_rss_mb, progress
from lmforge.tokenizer.spm import CONFIG_FILE, MODEL_FILE, SPECIAL_TOKENS, VOCAB_FILE, spm_special_token_args

log = get_logger(__name__)

CARD_FILE = "TOKENIZER_CARD.md"
STAGE = "tokenizer"


@dataclass
class TokenizerConfig:
    """SentencePiece training settings (config/pretrain/tokenizer/spm32k.json)."""

    corpus_dir: str = spec("data/datasets/tokenizer_corpus",
                           help="corpus artifact written by `lmforge corpus` (relative to the working directory)")
    vocab_size: int = spec(32768, min=300, max=1_048_576, help="pieces, including 6 special tokens and 256 bytes")
    model_type: str = spec("bpe", choices=("bpe",),
                           help="bpe: measured better than unigram on held-out text, and exported to Hugging Face exactly")
    character_coverage: float = spec(0.9995, min=0.9, max=1.0,
                                     help="share of characters given their own piece; the rest use byte fallback")
    byte_fallback: bool = spec(True, help="spell unknown characters as UTF-8 bytes instead of <unk>")
    normalization: str = spec("identity", choices=("identity",),
                              help="identity keeps text byte for byte (decode(encode(x)) == x) and is the "
                                   "rule the Hugging Face export reproduces exactly")
    split_digits: bool = spec(True, help="one token per digit, so numbers tokenize uniformly")
    max_sentences: int = spec(100_000_000, min=1, help="SentencePiece input_sentence_size: a random sample "
                              "of at most this many sentences is trained on")
    shuffle_sentences: bool = spec(True, help="sample sentences at random when there are more than max_sentences")
    max_sentence_length: int = spec(4192, min=64, max=1 << 20,
                                    help="bytes; longer lines are split on whitespace, never dropped")
    seed: int = spec(42, min=0, help="SentencePiece's random seed (sentence sampling)")
    num_threads: int = spec(4, min=1, max=256,
                            help="SentencePiece trainer threads: the pieces do not depend on it, but SentencePiece "
                                 "records it inside spm.model, so it is part of the sha256")
    held_out_fraction: float = spec(0.01, min=0.0, max=0.5,
                                    help="share of passages (by a hash of document id and passage number) kept "
                                         "out of training for the card")
    held_out_passage_chars: int = spec(20_000, min=1000,
                                       help="documents are cut into passages of about this many characters (at line "
                                            "ends) for the held-out draw, so a few long books still give held-out text")
    held_out_max_chars: int = spec(2_000_000, min=0, help="per source: characters of held-out text measured")
    model_max_length: int = spec(1024, min=1, help="Hugging Face model_max_length (the training context)")


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


# ---------------------------------------------------------------- integrity

def verify_corpus(corpus_dir: Path) -> tuple[dict, list[str]]:
    """Load the corpus manifest and re-hash every shard; return (manifest, shard relpaths)."""
    if not corpus_dir.is_dir():
        raise ArtifactError(f"corpus directory {corpus_dir} does not exist (config corpus_dir or --corpus-dir): "
                            "build it with step 1, `lmforge corpus`, or point --corpus-dir at one")
    manifest = load_manifest(corpus_dir, "corpus", verify="size")
    shards = [e["path"] for e in manifest.get("outputs", [])
              if e["path"].startswith("shards/") and e["path"].endswith((".jsonl.gz", ".jsonl"))]
    if not shards:
        raise ArtifactError(f"{corpus_dir}/manifest.json lists no shards (shards/*.jsonl.gz): nothing to train on")
    for rel in progress(shards, desc="Integrity verification", unit=" shard"):
        verify_file(corpus_dir, manifest, rel)
    log.info("Integrity verification: %d/%d shards match their sha256 in %s/manifest.json",
             len(shards), len(shards), corpus_dir)
    return manifest, shards


# ---------------------------------------------------------------- sentences

def split_long_line(line: str, max_bytes: int) -> list[str]:
    """Cut a line into pieces of at most `max_bytes` UTF-8 bytes.

    Cuts fall before a space when there is one in the second half of the window, else at
    a character boundary: a UTF-8 character is never cut in two.
    """
    data = line.encode("utf-8")
    pieces = []
    while len(data) > max_bytes:
        end = max_bytes
        while end > 0 and 0x80 <= data[end] <= 0xBF:  # continuation byte: back up to a char start
            end -= 1
        space = data.rfind(b" ", max_bytes // 2, end)
        cut = space if space > 0 else end
        pieces.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    pieces.append(data.decode("utf-8"))
    return pieces


def is_held_out(key: str, fraction: float) -> bool:
    """Stable choice of held-out passages: the same keys are held out on every run."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def passages(text: str, size: int) -> Iterator[str]:
    """Consecutive pieces of about `size` characters, cut after a line end when there is one."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size) if len(text) - start > size else -1
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


@dataclass
class StreamStats:
    shards_done: int = 0
    documents: int = 0
    held_out_passages: int = 0
    held_out_characters: int = 0
    sentences: int = 0
    characters: int = 0
    long_lines_split: int = 0
    pieces_from_long_lines: int = 0


class CorpusStream:
    """Iterates the training sentences of a corpus, counting as it goes.

    Held-out passages (by a hash of document id and passage number) never reach
    training; up to `held_out_max_chars` per source are kept for the card's metrics.
    Passages rather than whole documents, so that a source made of a few long books
    still yields held-out text. SentencePiece consumes this iterator inside its
    own C++ loop, so an error here is stored and re-raised after training returns.
    """

    def __init__(self, corpus_dir: Path, shards: list[str], cfg: TokenizerConfig):
        self.corpus_dir, self.shards, self.cfg = corpus_dir, shards, cfg
        self.stats = StreamStats()
        self.skips: Counter = Counter()
        self.held_out: dict[str, list[str]] = defaultdict(list)
        self._held_chars: Counter = Counter()
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self._sentences()
        except Exception as exc:  # surfaced by check() once SentencePiece returns
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _sentences(self) -> Iterator[str]:
        cfg, stats = self.cfg, self.stats
        for n, rel in enumerate(self.shards, 1):
            before = stats.sentences
            for index, record in enumerate(read_jsonl_gz(self.corpus_dir / rel, self.skips)):
                text = record.get("text")
                if not isinstance(text, str):
                    self.skips["missing_text"] += 1
                    continue
                if not text.strip():
                    self.skips["empty_text"] += 1
                    continue
                stats.documents += 1
                stats.characters += len(text)
                doc_id = str(record.get("id", f"{rel}:{index}"))
                for number, passage in enumerate(passages(text, cfg.held_out_passage_chars)):
                    if is_held_out(f"{doc_id}#{number}", cfg.held_out_fraction):
                        self._keep_held_out(str(record.get("source", "unknown")), passage)
                    else:
                        yield from self._document_sentences(passage)
            stats.shards_done = n
            log.info("[%d/%d] %s: %s sentences", n, len(self.shards), rel, human_count(stats.sentences - before))

    def _document_sentences(self, text: str) -> Iterator[str]:
        limit = self.cfg.max_sentence_length
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            # len(str) <= limit/4 guarantees the byte length is within the limit without encoding.
            if len(line) * 4 > limit and len(line.encode("utf-8")) > limit:
                pieces = split_long_line(line, limit)
                self.stats.long_lines_split += 1
                self.stats.pieces_from_long_lines += len(pieces)
                for piece in pieces:
                    if piece.strip():
                        self.stats.sentences += 1
                        yield piece
                continue
            self.stats.sentences += 1
            yield line

    def _keep_held_out(self, source: str, text: str) -> None:
        self.stats.held_out_passages += 1
        self.stats.held_out_characters += len(text)
        room = self.cfg.held_out_max_chars - self._held_chars[source]
        if room > 0:
            sample = text[:room]
            self.held_out[source].append(sample)
            self._held_chars[source] += len(sample)


# ---------------------------------------------------------------- training

def spm_trainer_args(cfg: TokenizerConfig, verbose: bool) -> dict:
    """SentencePiece trainer arguments for this config (special tokens at lmforge's fixed ids)."""
    return dict(
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        normalization_rule_name=cfg.normalization,
        # Keep text as written: no collapsed spaces, no dummy "▁" before the first word.
        # Newlines and tabs then go through byte fallback, so decode(encode(x)) == x, and
        # the Hugging Face export can reproduce SentencePiece exactly (see tokenizer_hf).
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        # Runs of spaces (code indentation) may become pieces of their own, as in Llama.
        allow_whitespace_only_pieces=True,
        split_digits=cfg.split_digits,
        input_sentence_size=cfg.max_sentences,
        shuffle_input_sentence=cfg.shuffle_sentences,
        max_sentence_length=cfg.max_sentence_length,
        num_threads=cfg.num_threads,
        minloglevel=0 if verbose else 1,
        **spm_special_token_args(),
    )


def train_spm(sentences, cfg: TokenizerConfig, verbose: bool = False) -> bytes:
    """Train SentencePiece on an iterable of sentences; return the model bytes.

    The model goes to memory (`model_writer`) rather than a file prefix: the prefix
    would be recorded inside the model and make its sha256 depend on the output path.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(cfg.seed)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=writer,
                                       **spm_trainer_args(cfg, verbose))
    except RuntimeError as exc:  # e.g. vocab_size larger than the corpus allows
        raise DataError(f"SentencePiece training failed: {exc}") from None
    return writer.getvalue()


def vocab_text(sp) -> str:
    """spm.vocab: one `piece<TAB>score` line per id, as SentencePiece writes it."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))


# ---------------------------------------------------------------- outputs

def lmforge_config_keys(sha256: str, cfg: TokenizerConfig, corpus_manifest_sha256: str) -> dict:
    from lmforge import __version__

    return {
        "sha256_hash": sha256,
        "vocab_size": cfg.vocab_size,
        "model_type": cfg.model_type,
        "normalization": cfg.normalization,
        "byte_fallback": cfg.byte_fallback,
        "special_token_ids": {piece: idx for piece, idx in SPECIAL_TOKENS.values()},
        "corpus_manifest_sha256": corpus_manifest_sha256,
        "lmforge_version": __version__,
    }


def check_special_ids(sp) -> None:
    for piece, expected in SPECIAL_TOKENS.values():
        if sp.piece_to_id(piece) != expected:
            raise ArtifactError(f"trained model puts {piece} at id {sp.piece_to_id(piece)}, expected {expected}")


def train_tokenizer(cfg: TokenizerConfig, output_dir: str | Path, *, force: bool = False,
                    verbose: bool = False) -> dict:
    """The whole stage: verify, stream, train, measure, write. Returns the manifest."""
    import sentencepiece as spm

    from lmforge.tokenizer.hf_export import export_hf_files
    from lmforge.tokenizer.metrics import measure_by_source, render_card

    corpus_dir, out = Path(cfg.corpus_dir), Path(output_dir)
    config_dict = to_dict(cfg)
    if not force and is_up_to_date(out, STAGE, config_dict, {"corpus": corpus_dir}):
        log.info("%s is up to date, skipping (use --force to redo)", out)
        return load_manifest(out, STAGE)
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
    corpus_hash = describe_input(corpus_dir)["manifest_sha256"]
    atomic_write_json(out / CONFIG_FILE, {**lmforge_config_keys(sha256, cfg, corpus_hash), **hf_keys})

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
    manifest = write_manifest(out, STAGE, config=config_dict, outputs=outputs, inputs={"corpus": corpus_dir},
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
