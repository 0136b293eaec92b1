"""Training a SentencePiece tokenizer on a corpus artifact: the settings, the verified
sentence stream (long lines split, held-out passages set aside by a hash) and the trainer.

The stage that drives it and writes the tokenizer directory is `lmforge.stages.tokenizer`.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lmforge import __version__
from lmforge.artifacts import load_manifest, verify_file
from lmforge.config import spec
from lmforge.data.corpus.shards import read_jsonl_gz
from lmforge.errors import ArtifactError, DataError
from lmforge.log import get_logger, human_count, progress
from lmforge.tokenizer.format import SPECIAL_TOKENS, spm_special_token_args

log = get_logger(__name__)


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

def lmforge_config_keys(sha256: str, cfg: TokenizerConfig, corpus_identity: str) -> dict:
    return {
        "sha256_hash": sha256,
        "vocab_size": cfg.vocab_size,
        "model_type": cfg.model_type,
        "normalization": cfg.normalization,
        "byte_fallback": cfg.byte_fallback,
        "special_token_ids": {piece: idx for piece, idx in SPECIAL_TOKENS.values()},
        "corpus_identity": corpus_identity,
        "lmforge_version": __version__,
    }


def check_special_ids(sp) -> None:
    for piece, expected in SPECIAL_TOKENS.values():
        if sp.piece_to_id(piece) != expected:
            raise ArtifactError(f"trained model puts {piece} at id {sp.piece_to_id(piece)}, expected {expected}")


