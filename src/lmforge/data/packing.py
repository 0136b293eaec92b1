"""Packing machinery: corpus shards tokenized in parallel worker processes and cut into rows.

The corpus is read in chunks of whole records; a pool of worker processes encodes them
(exact piece-wise SentencePiece encoding, `<s> ids </s>` per document, a split drawn by a
hash of the document id) and the main process takes the results back in order, so the
output is byte-identical whatever the number of workers. `RowPacker` cuts each split's
token stream into rows of exactly `seq_length` tokens. The stage that drives this is
`lmforge.stages.pack`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, compress
from pathlib import Path
from typing import Iterator, Literal

from lmforge.artifacts import MANIFEST_NAME, prepare_output_dir, read_json, sha256_file
from lmforge.config import spec
from lmforge.data.indexed import IndexedWriter, all_or_nothing, smallest_token_dtype
from lmforge.errors import ArtifactError, ConfigError, DataError, LineageError
from lmforge.log import get_logger, progress
from lmforge.tokenizer.piecewise import DEFAULT_PIECE_CHARS, PiecewiseEncoder

STAGE = "pack"
SPLITS = ("train", "val")
DTYPE_NAMES = ("auto", "uint8", "uint16", "int32")
# A batch handed to SentencePiece is cut at this many characters even when it holds
# fewer than `encode_batch_size` documents: Gutenberg books run to megabytes each.
MAX_BATCH_CHARS = 8_000_000
# Work is handed to the tokenizer processes in chunks of about this many bytes of JSON
# lines: small enough to balance the workers, large enough that the per-chunk cost of
# inter-process transfer stays negligible.
CHUNK_BYTES = 1 << 20


@dataclass
class PackConfig:
    """Settings of `lmforge pack` (config/pretrain/packing/default.json)."""

    seq_length: int = spec(1024, min=8, max=1 << 20, help="tokens per stored row (the model's context length)")
    val_fraction: float = spec(0.02, min=0.0, max=0.5, help="share of documents sent to val, by id hash")
    separator: Literal["bos_eos"] = spec("bos_eos", help="document framing: <s> tokens </s> (the only policy)")
    dtype: str = spec("auto", choices=DTYPE_NAMES, help="token dtype on disk; auto = uint16 up to 65,536 ids")
    seed: int = spec(1234, min=0, help="salt of the train/val split hash")
    workers: int = spec(0, min=0, max=256, help="tokenizer processes; 0 = one per CPU core")
    encode_batch_size: int = spec(256, min=1, max=1 << 20, help="documents per SentencePiece batch")
    encode_piece_chars: int = spec(DEFAULT_PIECE_CHARS, min=0, max=1 << 30,
                                   help="encode documents in pieces of about this many characters, cut where "
                                        "that is proven exact (same ids, less CPU); 0 = whole documents")
    leftover: Literal["drop"] = spec("drop", help="tail of a split shorter than a row: dropped and counted")

    def check(self) -> list[str]:
        if not 0.0 < self.val_fraction < 1.0:
            return [f"val_fraction: must be > 0 (a pack always has a val split), got {self.val_fraction}"]
        return []

    def output_key(self) -> dict:
        """The settings that decide the output bytes (workers and batch size do not)."""
        return {"seq_length": self.seq_length, "val_fraction": self.val_fraction, "separator": self.separator,
                "dtype": self.dtype, "seed": self.seed, "leftover": self.leftover}



# ---------------------------------------------------------------- split and dtype

def split_of(doc_id: str, seed: int, val_fraction: float) -> str:
    """'train' or 'val' for a document: a hash of (seed, id), so every run and worker agrees."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode("utf-8"), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "little") < val_fraction * 2.0**64 else "train"


def resolve_dtype(name: str, vocab_size: int):
    """The numpy dtype for token ids; ConfigError if the vocabulary does not fit in it."""
    import numpy as np

    dtype = np.dtype(smallest_token_dtype(vocab_size) if name == "auto" else name)
    highest = np.iinfo(dtype).max
    if vocab_size - 1 > highest:
        raise ConfigError(f"dtype {dtype.name} holds token ids up to {highest}, but the tokenizer has "
                          f"{vocab_size} ids: use dtype 'auto' or a wider type")
    return dtype


def resolve_workers(requested: int) -> int:
    """The number of tokenizer processes: as requested, or one per usable CPU core for 0."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, requested or cores)


# ---------------------------------------------------------------- worker side

@dataclass
class Chunk:
    """A unit of work: consecutive raw lines of one shard (about CHUNK_BYTES of JSON)."""

    shard: str  # shard file name, for the ids of records that lack one
    first_line: int  # 1-based line number of lines[0] in the shard
    lines: list
    size: int | None = None  # bytes of `lines`, filled in when the scheduler first needs it


@dataclass
class ChunkResult:
    """One chunk, tokenized: each split's token stream (documents framed, in order) and counts."""

    tokens: dict  # split -> np.ndarray
    documents: Counter = field(default_factory=Counter)  # split -> documents
    source_tokens: Counter = field(default_factory=Counter)  # source -> tokens (with <s> </s>)
    source_documents: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # reason -> records


_WORKER: dict = {}


def init_worker(model_proto: bytes, cfg_items: dict, dtype_name: str, bos: int, eos: int) -> None:
    """Load the SentencePiece model once per process, from the bytes whose sha256 was checked."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    _WORKER.update(encoder=PiecewiseEncoder(sp, cfg_items["encode_piece_chars"]), dtype=dtype_name,
                   bos=bos, eos=eos, **cfg_items)


def encode_chunk(chunk: Chunk) -> ChunkResult:
    """Parse, split and tokenize one chunk in this process (set up by init_worker)."""
    import numpy as np

    result = ChunkResult(tokens={})
    pieces: dict[str, list] = {s: [] for s in SPLITS}
    batch: list[tuple[str, str, str]] = []  # (split, source, text)
    chars = 0
    for split, source, text in _documents(chunk, result.skipped):
        batch.append((split, source, text))
        chars += len(text)
        if len(batch) >= _WORKER["encode_batch_size"] or chars >= MAX_BATCH_CHARS:
            _encode_batch(batch, pieces, result)
            batch, chars = [], 0
    if batch:
        _encode_batch(batch, pieces, result)
    dtype = np.dtype(_WORKER["dtype"])
    for split in SPLITS:
        result.tokens[split] = np.concatenate(pieces[split]) if pieces[split] else np.zeros(0, dtype)
    return result


def _documents(chunk: Chunk, skipped: Counter) -> Iterator[tuple[str, str, str]]:
    """(split, source, text) for each usable record of a chunk; bad records counted by reason."""
    for line_no, raw in enumerate(chunk.lines, chunk.first_line):
        record = _parse(raw, skipped)
        if record is None:
            continue
        doc_id = record.get("id")
        if doc_id is None:  # usable, but its split then hangs on its position
            skipped["kept_without_id"] += 1
            doc_id = f"{chunk.shard}:{line_no}"
        split = split_of(str(doc_id), _WORKER["seed"], _WORKER["val_fraction"])
        yield split, str(record.get("source") or "unknown"), record["text"]


def _parse(raw: bytes, skipped: Counter) -> dict | None:
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except UnicodeDecodeError:
        skipped["invalid_utf8"] += 1
        return None
    except (ValueError, RecursionError):  # bad JSON, a 5000-digit number, nesting 100k deep
        skipped["malformed_json"] += 1
        return None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        skipped["missing_text"] += 1
        return None
    if not record["text"].strip():
        skipped["empty_text"] += 1
        return None
    return record


def _encode_batch(batch: list[tuple[str, str, str]], pieces: dict[str, list], result: ChunkResult) -> None:
    """Encode a batch and append each split's `<s> ids </s>` stream as one array per split."""
    import numpy as np

    ids, counts = _WORKER["encoder"].encode_flat([text for _, _, text in batch])
    owner = np.repeat(np.arange(len(batch)), counts)  # the document of each encoded piece
    piece_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    starts = np.zeros(len(batch), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    doc_lengths = np.add.reduceat(piece_lengths, starts)
    for split in SPLITS:
        chosen = np.fromiter((s == split for s, _, _ in batch), dtype=bool, count=len(batch))
        if chosen.any():
            pieces[split].append(_frame(doc_lengths[chosen], list(compress(ids, chosen[owner]))))
            result.documents[split] += int(chosen.sum())
    for (_, source, _), length in zip(batch, doc_lengths.tolist()):
        result.source_tokens[source] += length + 2
        result.source_documents[source] += 1


def _frame(lengths, body: list[list[int]]):
    """Documents of `lengths` tokens, whose ids run through `body`, as <s> d0 </s> <s> d1 </s> ...

    Built with numpy masks rather than a Python loop per token.
    """
    import numpy as np

    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1] + 2, out=starts[1:])
    out = np.empty(int(lengths.sum()) + 2 * len(lengths), dtype=np.dtype(_WORKER["dtype"]))
    inner = np.ones(out.size, dtype=bool)
    inner[starts] = False
    inner[starts + lengths + 1] = False
    out[starts] = _WORKER["bos"]
    out[starts + lengths + 1] = _WORKER["eos"]
    out[inner] = np.fromiter(chain.from_iterable(body), dtype=out.dtype, count=int(lengths.sum()))
    return out


# ---------------------------------------------------------------- main-process side

class RowPacker:
    """Cut a split's token stream into rows of exactly seq_length tokens, streamed to a writer."""

    def __init__(self, writer, seq_length: int):
        import numpy as np

        self.writer, self.seq_length = writer, seq_length
        self.carry = np.zeros(0, dtype=writer.dtype)
        self.rows = 0

    def feed(self, tokens) -> None:
        import numpy as np

        stream = np.concatenate([self.carry, tokens]) if self.carry.size else tokens
        full = stream.size // self.seq_length
        for r in range(full):
            # One row = one Megatron "document": rows are the unit readers shuffle.
            self.writer.add_sequence(stream[r * self.seq_length:(r + 1) * self.seq_length])
            self.writer.end_document()
        self.rows += full
        self.carry = stream[full * self.seq_length:].copy()

    @property
    def leftover(self) -> int:
        return int(self.carry.size)


def read_chunks(paths: list[str]) -> Iterator[Chunk]:
    """The shards' raw lines, in corpus order, cut into chunks of about CHUNK_BYTES.

    Reading happens here, in the main process: decompressing and splitting lines costs
    about 1% of tokenizing, and chunks much smaller than shards keep the workers evenly
    loaded even when shards differ in size. The shards are our own artifact with a
    checked sha256, so plain gzip is enough (no `datasets` layer).
    """

    for path in paths:
        name = Path(path).name
        lines: list[bytes] = []
        size, first = 0, 1
        try:
            with gzip.open(path, "rb") as handle:
                for line_no, raw in enumerate(handle, 1):
                    if not lines:
                        first = line_no
                    lines.append(raw)
                    size += len(raw)
                    if size >= CHUNK_BYTES:
                        yield Chunk(name, first, lines)
                        lines, size = [], 0
        except (OSError, EOFError, zlib.error) as exc:
            raise ArtifactError(f"corrupted shard {path}: {type(exc).__name__}: {exc}") from None
        if lines:
            yield Chunk(name, first, lines)


@contextlib.contextmanager
def worker_pool(workers: int, init_args: tuple) -> Iterator:
    """A pool of `workers` tokenizer processes, or None to work in this process (workers=1).

    One pool serves both the shard hashing and the tokenizing, so each worker process
    starts (and loads the SentencePiece model) once.
    """
    if workers == 1:
        init_worker(*init_args)
        yield None
        return
    import multiprocessing

    # fork where it exists: the workers inherit numpy and sentencepiece already imported
    # (a spawned worker spends ~0.3 s of CPU re-importing them). The pool is created
    # before any thread (progress bar) starts, which is what makes fork safe here.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=init_worker, initargs=init_args) as pool:
        yield pool


def ordered_results(chunks: Iterator[Chunk], pool, workers: int) -> Iterator[ChunkResult]:
    """Tokenized chunks in corpus order, scheduled largest-first within a bounded window.

    Encoding cost is far from uniform: a Gutenberg book is one indivisible multi-megabyte
    record that costs a second or more, and corpora list such sources last. Handing out
    chunks strictly in order then leaves one worker alone on the final book while the
    other idles (measured: 4.2 s makespan against 3.7 s ideal on the bench corpus). So the
    main process reads up to LOOKAHEAD chunks ahead, hands each free worker the biggest
    one it holds, and yields results in corpus order from a reorder buffer. Memory stays
    flat: at most MAX_AHEAD chunks (text or tokens) exist between the oldest unfinished
    chunk and the newest one read.
    """
    if pool is None:
        yield from map(encode_chunk, chunks)
        return
    import queue

    lookahead, max_ahead = 4 * workers, 8 * workers
    finished: queue.SimpleQueue = queue.SimpleQueue()  # (seq, result or exception), from the pool's thread
    window: dict[int, Chunk] = {}  # read, not yet handed out
    results: dict[int, ChunkResult] = {}  # done, waiting for their turn
    numbered = enumerate(chunks)
    next_read = next_out = running = 0
    exhausted = False
    while True:
        while not exhausted and len(window) < lookahead and next_read - next_out < max_ahead:
            item = next(numbered, None)
            if item is None:
                exhausted = True
            else:
                window[item[0]] = item[1]
                next_read = item[0] + 1
        # One task queued beyond the busy workers, so none waits while this process reacts.
        while window and running <= workers:
            seq = max(window, key=lambda k: _chunk_size(window[k]))
            pool.apply_async(encode_chunk, (window.pop(seq),),
                             callback=lambda r, s=seq: finished.put((s, r)),
                             error_callback=lambda e, s=seq: finished.put((s, e)))
            running += 1
        while next_out in results:
            yield results.pop(next_out)
            next_out += 1
        if running == 0 and not window:
            if exhausted:
                return
            continue  # the reorder bound was reached: read more
        seq, result = finished.get()
        running -= 1
        if isinstance(result, BaseException):
            raise result
        results[seq] = result


def _chunk_size(chunk: Chunk) -> int:
    """The bytes of JSON in a chunk: the scheduler's estimate of its encoding cost."""
    if chunk.size is None:
        chunk.size = sum(map(len, chunk.lines))
    return chunk.size


def verify_shards(corpus_dir: Path, manifest: dict, shards: list[str], pool) -> None:
    """Re-hash every shard against the corpus manifest before any is read."""

    expected = {e["path"]: e["sha256"] for e in manifest["outputs"]}
    paths = [str(corpus_dir / rel) for rel in shards]
    digests = pool.map(sha256_file, paths) if pool is not None else [sha256_file(p) for p in paths]
    for rel, digest in zip(shards, digests):
        if digest != expected[rel]:
            raise ArtifactError(f"corrupted shard {corpus_dir / rel}: sha256 {digest} differs from "
                                f"{expected[rel]} in {corpus_dir / 'manifest.json'} (rebuild the corpus)")


def corpus_shards(corpus_dir: Path, manifest: dict) -> list[str]:

    shards = sorted(e["path"] for e in manifest.get("outputs", [])
                    if e["path"].startswith("shards/") and e["path"].endswith((".jsonl.gz", ".jsonl")))
    if not shards or not manifest.get("figures", {}).get("documents", 1):
        raise DataError(f"corpus {corpus_dir} is empty: its manifest lists no documents (rebuild it with "
                        "`lmforge corpus`)")
    return shards


def check_previous_pack(out_dir: Path, tokenizer_sha: str, tokenizer_from: str, force: bool) -> None:
    """Refuse to overwrite another stage's artifact, or a pack made with another tokenizer."""

    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return
    previous = read_json(path, "manifest")
    if previous.get("stage") != STAGE:
        raise ArtifactError(f"{out_dir} holds a '{previous.get('stage')}' artifact, not a pack: "
                            "choose another --output-dir")
    found = previous.get("tokenizer_sha256")
    if found != tokenizer_sha and not force:
        raise LineageError(
            f"{out_dir} already holds a pack made with another tokenizer:\n"
            f"  {out_dir / MANIFEST_NAME}: {found}\n"
            f"  {tokenizer_from}: {tokenizer_sha}\n"
            "Appending to a pack is not supported; use a new --output-dir, or --force to replace it.")



def effective_piece_chars(sp, requested: int) -> int:
    """The piece length the workers will use: `requested`, or 0 when this tokenizer must encode whole texts."""

    encoder = PiecewiseEncoder(sp, requested)
    if encoder.piece_chars:
        get_logger(__name__).info("Encoding documents in exact pieces of ~%d characters (same ids as whole "
                                  "documents, less CPU)", encoder.piece_chars)
    elif requested:
        get_logger(__name__).info("Encoding whole documents: cutting is not proven exact for this tokenizer (%s)",
                                  encoder.reason_whole)
    return encoder.piece_chars


def pack_streams(corpus_dir: Path, shards: list[str], out_dir: Path, cfg: PackConfig, dtype, pool,
                 workers: int) -> dict:
    """Tokenize every shard and write both splits; nothing lands under a final name on failure."""

    log = get_logger(__name__)
    prepare_output_dir(out_dir)
    log.info("Tokenizing %d shards with %d worker(s); packing rows of %d tokens; split %.0f/%.0f by document",
             len(shards), workers, cfg.seq_length, 100 * (1 - cfg.val_fraction), 100 * cfg.val_fraction)
    writers = {s: IndexedWriter(out_dir / s, dtype.type) for s in SPLITS}
    with all_or_nothing(writers):
        packers = {s: RowPacker(writers[s], cfg.seq_length) for s in SPLITS}
        counts = {"documents": Counter(), "source_tokens": Counter(), "source_documents": Counter(),
                  "skipped": Counter()}
        paths = [str(corpus_dir / rel) for rel in shards]
        bar = progress(total=len(paths), desc="packing", unit="shard")
        chunks = _with_progress(read_chunks(paths), bar, len(paths))
        for n, result in enumerate(ordered_results(chunks, pool, workers), 1):
            for split in SPLITS:
                packers[split].feed(result.tokens[split])
            counts["documents"].update(result.documents)
            counts["source_tokens"].update(result.source_tokens)
            counts["source_documents"].update(result.source_documents)
            counts["skipped"].update(result.skipped)
            if n % 100 == 0:
                log.info("%d chunks tokenized: %d train rows, %d val rows so far", n, packers["train"].rows,
                         packers["val"].rows)
        bar.close()
        short = [s for s in SPLITS if packers[s].rows == 0]
        if short:
            tokens = {s: packers[s].leftover for s in SPLITS}
            raise DataError(
                f"corpus {corpus_dir} is too small: the {' and '.join(short)} split(s) got fewer than "
                f"seq_length={cfg.seq_length} tokens (train {tokens['train']}, val {tokens['val']} before "
                "packing); a pack needs at least one row per split: add documents, lower seq_length, "
                "or raise val_fraction")
    counts["rows"] = {s: packers[s].rows for s in SPLITS}
    counts["leftover"] = {s: packers[s].leftover for s in SPLITS}
    return counts


def _with_progress(chunks: Iterator[Chunk], bar, total: int) -> Iterator[Chunk]:
    """Log each shard as its reading starts and advance the bar by shards."""

    current, seen = None, 0
    for chunk in chunks:
        if chunk.shard != current:
            if current is not None:
                bar.update(1)
            current, seen = chunk.shard, seen + 1
            get_logger(__name__).info("Streaming shard %d/%d: %s", seen, total, chunk.shard)
        yield chunk
    bar.update(1)


