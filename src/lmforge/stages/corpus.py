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
import array
import gzip
import json
import math
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from ..artifacts import (atomic_path, atomic_write_bytes, atomic_write_json, is_up_to_date, prepare_output_dir,
                         read_json, sha256_file, sha256_json, write_manifest)
from ..config import config_from_dict, parse_set_overrides, spec, to_dict
from ..errors import ArtifactError, ConfigError, DataError
from ..log import get_logger, human_count, peak_rss_mb, progress
from ..text_clean import NORMALIZATION_FORMS, CleaningRules, TokenCounter, clean_record, dedup_key, truncate_to_tokens

log = get_logger(__name__)

STAGE = "corpus"
BUDGET_TOLERANCE = 0.005  # a source within 0.5% of its budget has met it
# Test-only hook: the process kills itself (SIGKILL) right after committing this many
# cache parts, to prove that `--use-cache` resumes a run killed during phase 1.
KILL_AFTER_PARTS_ENV = "LMFORGE_CORPUS_KILL_AFTER_PARTS"


# ---------------------------------------------------------------- config schema

@dataclass
class SourceSpec:
    name: str = spec(help="short name: used in record ids, reports and the cache directory")
    type: Literal["hf", "local", "builtin"] = spec(help="hf: hub dataset (or its mirror); local: files; builtin: offline corpus")
    tokens: int = spec(min=1, help="token budget of this source")
    dataset: str | None = spec(None, help="hf: hub id 'org/name'; builtin: corpus name (default python_stdlib)")
    config: str | None = spec(None, help="hf: dataset configuration, e.g. 'en'")
    split: str = spec("train", help="hf: split")
    text_field: str = spec("text", help="field holding the document text")
    paths: list[str] = spec(default_factory=list, help="local: files or globs (jsonl, jsonl.gz, json, txt, parquet)")

    def check(self) -> list[str]:
        problems = []
        if not isinstance(self.name, str) or not isinstance(self.type, str):
            return problems  # already reported as a type error
        if not self.name or not all(c.isalnum() or c in "_.-" for c in self.name):
            problems.append(f"name: {self.name!r} must be non-empty letters, digits, '_', '.', '-'")
        if self.type == "hf" and not self.dataset:
            problems.append(f"source '{self.name}': type 'hf' needs 'dataset' (a hub id like 'allenai/c4')")
        if self.type == "local" and not self.paths:
            problems.append(f"source '{self.name}': type 'local' needs 'paths' (files or globs)")
        if self.type != "local" and self.paths:
            problems.append(f"source '{self.name}': 'paths' is only for type 'local'")
        if self.type == "builtin":
            from ..builtin_corpus import BUILTIN_CORPORA

            if (self.dataset or "python_stdlib") not in BUILTIN_CORPORA:
                problems.append(f"source '{self.name}': unknown built-in corpus {self.dataset!r} "
                                f"(available: {', '.join(BUILTIN_CORPORA)})")
        return problems


@dataclass
class ProcessingParams:
    shard_size: int = spec(50000, min=1, help="most documents per output shard")
    shard_max_tokens: int = spec(2_000_000, min=1, help="most tokens per output shard (the plan's ~2M)")
    seed: int = spec(42, help="seed of the deterministic mixing order")
    normalization: str = spec("NFC", choices=NORMALIZATION_FORMS, help="Unicode normalisation form")
    min_chars: int = spec(50, min=1, help="documents (or split pieces) shorter than this are skipped")
    max_document_chars: int = spec(1_000_000, min=100, help="documents longer than this are split (or skipped)")
    split_long_documents: bool = spec(True, help="split documents over max_document_chars instead of skipping them")
    max_line_chars: int = spec(100_000, min=1, help="a document with a longer line is skipped (giant_line)")
    max_record_chars: int = spec(50_000_000, min=1, help="a record with more characters is skipped unread (giant_record)")
    dedup: bool = spec(True, help="drop exact duplicates (whitespace-insensitive) across all sources")
    budget_policy: Literal["truncate", "whole"] = spec(
        "truncate", help="truncate: cut the last document at a word so the source lands on its budget; "
                         "whole: keep the document that crosses the budget whole")
    budget_scale: float = spec(1.0, min=1e-9, help="multiply every source budget (e.g. 0.01 for a trial run)")
    strict_budgets: bool = spec(False, help="a source that runs dry before its budget is an error")
    cache_part_tokens: int = spec(1_000_000, min=1, help="tokens per cache part: the resume granularity")
    analyze_sample_docs: int = spec(200, min=1, help="--analyze-only: documents sampled per source")
    analyze_sample_chars: int = spec(5_000_000, min=1, help="--analyze-only: most characters sampled per source")

    def check(self) -> list[str]:
        # check() runs even when a field had the wrong type (already reported): compare only ints
        both_ints = isinstance(self.max_document_chars, int) and isinstance(self.min_chars, int)
        if both_ints and self.max_document_chars < self.min_chars:
            return [f"max_document_chars ({self.max_document_chars}) must be >= min_chars ({self.min_chars})"]
        return []

    def cleaning_rules(self) -> CleaningRules:
        return CleaningRules(normalization=self.normalization, min_chars=self.min_chars,
                             max_document_chars=self.max_document_chars,
                             split_long_documents=self.split_long_documents,
                             max_line_chars=self.max_line_chars, max_record_chars=self.max_record_chars)


@dataclass
class OutputParams:
    compresslevel: int = spec(6, min=1, max=9, help="gzip level of the shards")
    keep_cache: bool = spec(True, help="keep cache/ after success (needed to resume or rebuild quickly)")


@dataclass
class CorpusConfig:
    sources: list[SourceSpec] = spec(help="the sources, processed in this order")
    name: str = spec("", help="a label for reports")
    description: str = spec("", help="free text")
    tokenizer_dir: str | None = spec(None, help="a trained tokenizer: count tokens exactly with it")
    processing_params: ProcessingParams = spec(default_factory=ProcessingParams)
    output: OutputParams = spec(default_factory=OutputParams)

    def check(self) -> list[str]:
        problems = [] if self.sources else ["sources: at least one source is needed"]
        names = [s.name for s in self.sources or [] if s is not None]
        problems += [f"sources: name '{n}' is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
        return problems

    def budget(self, source: SourceSpec) -> int:
        return max(1, round(source.tokens * self.processing_params.budget_scale))


def load_corpus_config(path: str | os.PathLike, set_items: list[str] | None = None,
                       tokenizer_dir: str | None = None) -> CorpusConfig:
    """Read and validate a corpus config; `--set` keys may address sources as sources.NAME.key."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid JSON: {exc}") from None
    overrides = parse_set_overrides(set_items)
    if tokenizer_dir:
        overrides["tokenizer_dir"] = tokenizer_dir
    if isinstance(raw, dict):
        _apply_source_overrides(raw, {k: v for k, v in overrides.items() if k.startswith("sources.")}, p)
    rest = {k: v for k, v in overrides.items() if not k.startswith("sources.")}
    return config_from_dict(raw, CorpusConfig, source=str(p), overrides=rest)


def _apply_source_overrides(raw: dict, overrides: dict, path: Path) -> None:
    sources = raw.get("sources") if isinstance(raw.get("sources"), list) else []
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) != 3:
            raise ConfigError(f"--set {dotted}: address a source as sources.NAME.KEY or sources.INDEX.KEY")
        _, which, key = parts
        match = [s for i, s in enumerate(sources) if isinstance(s, dict) and (s.get("name") == which or str(i) == which)]
        if not match:
            raise ConfigError(f"--set {dotted}: {path} has no source named or numbered {which!r}")
        match[0][key] = value


# ---------------------------------------------------------------- CLI

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
    counter = _token_counter(cfg)
    mirror = _mirror(args.mirror)
    out = Path(args.output_dir)
    _preflight(cfg, mirror)
    if args.analyze_only:
        return analyze(cfg, counter, mirror, out)
    record = _config_record(cfg, counter)
    inputs = {"tokenizer": cfg.tokenizer_dir} if cfg.tokenizer_dir else {}
    if not args.force and is_up_to_date(out, STAGE, record, inputs):
        log.info("%s is up to date, skipping (use --force to redo)", out)
        return 0
    build(cfg, counter, mirror, out, use_cache=args.use_cache, config_record=record, inputs=inputs)
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
    }


def _token_counter(cfg: CorpusConfig) -> TokenCounter:
    if not cfg.tokenizer_dir:
        return TokenCounter()
    from ..tokenizer import load_tokenizer

    if not Path(cfg.tokenizer_dir).is_dir():
        raise ArtifactError(f"tokenizer directory {cfg.tokenizer_dir} not found: train it first (lmforge tokenizer), "
                            "or drop tokenizer_dir / --tokenizer-dir to use the chars/4 estimate")
    return TokenCounter(load_tokenizer(cfg.tokenizer_dir))


def _mirror(flag: str | None) -> Path | None:
    from ..sources import resolve_mirror

    return resolve_mirror(flag)


def _config_record(cfg: CorpusConfig, counter: TokenCounter) -> dict:
    """The resolved config as stored in the manifest (and compared for up-to-date checks)."""
    described = counter.describe()
    described.pop("tokenizer_dir", None)  # the same tokenizer elsewhere is the same counter
    return {"corpus": to_dict(cfg), "budgets": {s.name: cfg.budget(s) for s in cfg.sources},
            "token_counter": described}


def _preflight(cfg: CorpusConfig, mirror: Path | None) -> None:
    """Fail before any work when a source's files cannot be found."""
    from ..sources import expand_paths, mirror_files

    for source in cfg.sources:
        try:
            if source.type == "local":
                expand_paths(source.paths)
            elif source.type == "hf" and mirror is not None:
                mirror_files(mirror, source.dataset, source.config, source.split)
        except DataError as exc:
            raise DataError(f"source '{source.name}': {exc}") from None


def open_source(source: SourceSpec, mirror: Path | None, skips: Counter) -> Iterator[dict]:
    """The raw records of a source; file-level problems are counted in `skips`."""
    from ..sources import stream_builtin, stream_files, stream_hub

    if source.type == "hf":
        return stream_hub(source.dataset, source.config, source.split, mirror=mirror, skips=skips)
    if source.type == "local":
        return stream_files(source.paths, skips=skips)
    return stream_builtin(source.dataset or "python_stdlib")


# ---------------------------------------------------------------- gzip JSON-lines writer

class JsonlGzWriter:
    """Writes a .jsonl.gz under a temporary name and renames it on close.

    gzip gets mtime=0 and no file name in its header, so equal records give equal bytes.
    """

    def __init__(self, path: Path, compresslevel: int):
        self._ctx = atomic_path(path)
        tmp = self._ctx.__enter__()
        self._raw = open(tmp, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=compresslevel)
        self.docs = 0
        self.tokens = 0

    def write(self, record: dict, tokens: int) -> None:
        self._gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.docs += 1
        self.tokens += tokens

    def close(self) -> None:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Close and delete the temporary file; the final path is left as it was."""
        self._gz.close()
        self._raw.close()
        error = RuntimeError("write aborted")
        self._ctx.__exit__(RuntimeError, error, None)  # atomic_path removes its temp file


def read_jsonl_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


# ---------------------------------------------------------------- phase 1: per-source cache

@dataclass
class SourceState:
    """Progress of one source in phase 1, saved after every committed cache part."""

    name: str
    fingerprint: str
    budget: int
    parts: int = 0
    records_read: int = 0
    docs: int = 0
    tokens: int = 0
    chars: int = 0
    duplicates: int = 0
    skips: dict = field(default_factory=dict)         # counted while cleaning
    reader_skips: dict = field(default_factory=dict)  # counted by the file reader (bad JSON, bad UTF-8)
    exhausted: bool = False
    truncated_last: bool = False
    done: bool = False
    seconds: float = 0.0

    def all_skips(self) -> dict:
        return dict(sorted((Counter(self.skips) + Counter(self.reader_skips)).items()))


class SourceCache:
    """cache/NN_name/: part_NNNNN.jsonl.gz (docs with token counts), hashes_NNNNN.u64, state.json."""

    def __init__(self, cache_root: Path, index: int, name: str):
        self.dir = cache_root / f"{index:02d}_{name}"

    def part_path(self, n: int) -> Path:
        return self.dir / f"part_{n:05d}.jsonl.gz"

    def hashes_path(self, n: int) -> Path:
        return self.dir / f"hashes_{n:05d}.u64"

    def load(self, fingerprint: str) -> SourceState | None:
        path = self.dir / "state.json"
        if not path.is_file():
            return None
        state = SourceState(**read_json(path, "corpus cache state"))
        return state if state.fingerprint == fingerprint else None

    def reset(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)

    def drop_uncommitted(self, state: SourceState) -> None:
        """Remove temp files and parts written after the last saved state (a kill between the two)."""
        for path in self.dir.iterdir():
            stem = path.name.split(".")[0]
            index = stem.rsplit("_", 1)[-1]
            if path.name.startswith(".") or (index.isdigit() and int(index) >= state.parts):
                path.unlink()

    def save(self, state: SourceState) -> None:
        atomic_write_json(self.dir / "state.json", asdict(state))

    def hashes(self, state: SourceState) -> Iterator[int]:
        for n in range(state.parts):
            values = array.array("Q")
            values.frombytes(self.hashes_path(n).read_bytes())
            yield from values

    def docs(self, state: SourceState) -> Iterator[dict]:
        for n in range(state.parts):
            yield from read_jsonl_gz(self.part_path(n))


def source_fingerprint(cfg: CorpusConfig, source: SourceSpec, counter: TokenCounter, previous: str) -> str:
    """What a source's cache depends on. Chained, because dedup makes a source depend on earlier ones."""
    pp = cfg.processing_params
    phase1 = {k: getattr(pp, k) for k in ("normalization", "min_chars", "max_document_chars", "split_long_documents",
                                          "max_line_chars", "max_record_chars", "dedup", "budget_policy",
                                          "cache_part_tokens")}
    method = counter.describe()
    return sha256_json({"source": to_dict(source), "budget": cfg.budget(source), "phase1": phase1,
                        "counter": [method["method"], method.get("tokenizer_sha256")],
                        "previous": previous if pp.dedup else None})


_parts_committed = 0


def _after_commit() -> None:
    global _parts_committed
    _parts_committed += 1
    limit = os.environ.get(KILL_AFTER_PARTS_ENV)
    if limit and _parts_committed >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


class SourceStreamer:
    """Streams one source into its cache, resuming from a saved state."""

    def __init__(self, cfg: CorpusConfig, source: SourceSpec, cache: SourceCache, state: SourceState,
                 counter: TokenCounter, seen: set[int], mirror: Path | None):
        self.cfg, self.source, self.cache, self.state = cfg, source, cache, state
        self.counter, self.seen, self.mirror = counter, seen, mirror
        self.rules = cfg.processing_params.cleaning_rules()
        self.part: JsonlGzWriter | None = None
        self.part_hashes = array.array("Q")
        self._clock = time.perf_counter()
        self.budget_met = False

    def run(self) -> SourceState:
        st, started = self.state, time.perf_counter()
        reader_skips: Counter = Counter()
        records = iter(open_source(self.source, self.mirror, reader_skips))
        for _ in range(st.records_read):  # resume: pass over what committed parts already hold
            if next(records, None) is None:
                break
        reader_skips.clear()
        saved_reader = Counter(st.reader_skips)
        skips = Counter(st.skips)
        bar = progress(total=st.budget, initial=min(st.tokens, st.budget), desc=f"🚀 {self.source.name}", unit="tok",
                       unit_scale=True)
        last_log = time.monotonic()
        try:
            reached = st.tokens >= st.budget
            for record in ([] if reached else records):
                st.records_read += 1
                for text in clean_record(record, self.source.text_field, self.rules, skips):
                    added = self._add(text)
                    bar.update(added)
                    if self.budget_met or st.tokens >= st.budget:
                        reached = True
                        break
                if reached:
                    break
                if self.part is not None and self.part.tokens >= self.cfg.processing_params.cache_part_tokens:
                    self._commit(skips, saved_reader + reader_skips)
                if time.monotonic() - last_log > 30:
                    last_log = time.monotonic()
                    self._log_progress(started)
            st.exhausted = not reached
            st.done = True
            self._commit(skips, saved_reader + reader_skips)
        except BaseException:
            if self.part is not None:
                self.part.abort()
            raise
        finally:
            bar.close()
        return st

    def _add(self, text: str) -> int:
        """Cache one clean document unless it is a duplicate; return the tokens added."""
        st, pp = self.state, self.cfg.processing_params
        key = dedup_key(text)
        if pp.dedup and key in self.seen:
            st.duplicates += 1
            return 0
        tokens = self.counter(text)
        remaining = st.budget - st.tokens
        if tokens > remaining and pp.budget_policy == "truncate":
            text = truncate_to_tokens(text, remaining, self.counter)
            if len(text) < pp.min_chars:
                self.budget_met = True  # what still fits is too short to be a document
                return 0
            tokens = self.counter(text)
            st.truncated_last = True
        if pp.dedup:
            self.seen.add(key)
        if self.part is None:
            self.part = JsonlGzWriter(self.cache.part_path(st.parts), compresslevel=1)
            self.part_hashes = array.array("Q")
        self.part.write({"id": f"{self.source.name}-{st.docs:08d}", "source": self.source.name,
                         "text": text, "tokens": tokens}, tokens)
        self.part_hashes.append(key)
        st.docs += 1
        st.tokens += tokens
        st.chars += len(text)
        return tokens

    def _commit(self, skips: Counter, reader_skips: Counter) -> None:
        st = self.state
        if self.part is not None:
            self.part.close()
            atomic_write_bytes(self.cache.hashes_path(st.parts), self.part_hashes.tobytes())
            st.parts += 1
            self.part = None
        st.skips, st.reader_skips = dict(skips), dict(reader_skips)
        now = time.perf_counter()
        st.seconds += now - self._clock
        self._clock = now
        self.cache.save(st)
        _after_commit()

    def _log_progress(self, started: float) -> None:
        st = self.state
        rate = st.docs / max(time.perf_counter() - started, 1e-9)
        log.info("   %s: %s docs, %s/%s tokens, %.0f docs/s", self.source.name, f"{st.docs:,}",
                 human_count(st.tokens), human_count(st.budget), rate)


def run_phase1(cfg: CorpusConfig, counter: TokenCounter, mirror: Path | None, cache_root: Path,
               use_cache: bool) -> list[SourceState]:
    """Stream every source into its cache (or reuse the cache); return their final states."""
    states, seen, previous = [], set(), ""
    for index, source in enumerate(cfg.sources):
        fingerprint = source_fingerprint(cfg, source, counter, previous)
        previous = fingerprint
        cache = SourceCache(cache_root, index, source.name)
        state = cache.load(fingerprint) if use_cache else None
        budget = cfg.budget(source)
        if state is not None and state.done:
            log.info("♻️  %s: from cache (%s docs, %s tokens)", source.name, f"{state.docs:,}", human_count(state.tokens))
            if cfg.processing_params.dedup:
                seen.update(cache.hashes(state))
        else:
            if state is None:
                cache.reset()
                state = SourceState(name=source.name, fingerprint=fingerprint, budget=budget)
                log.info("🚀 Streaming %s: %s tokens (%s)", source.name, human_count(budget), _where(source))
            else:
                cache.drop_uncommitted(state)
                log.info("🚀 Resuming %s from cache: %s docs, %s of %s tokens already done", source.name,
                         f"{state.docs:,}", human_count(state.tokens), human_count(budget))
            if cfg.processing_params.dedup:
                seen.update(cache.hashes(state))  # what committed parts of this source already hold
            try:
                state = SourceStreamer(cfg, source, cache, state, counter, seen, mirror).run()
            except DataError as exc:
                raise DataError(f"source '{source.name}': {exc}") from None
            _report_source(state)
        if state.docs == 0:
            raise DataError(f"source '{source.name}' yielded no usable documents "
                            f"(read {state.records_read:,} records; skipped: {_fmt_skips(state.all_skips()) or 'none'})")
        states.append(state)
    return states


def _where(source: SourceSpec) -> str:
    if source.type == "hf":
        return f"hub {source.dataset}" + (f" config {source.config}" if source.config else "") + f" split {source.split}"
    if source.type == "local":
        return f"files {', '.join(source.paths)}"
    return f"built-in {source.dataset or 'python_stdlib'}"


def _fmt_skips(skips: dict) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(skips.items()) if v)


def _report_source(st: SourceState) -> None:
    rate = st.docs / max(st.seconds, 1e-9)
    log.info("   ✓ %s: %s docs, %s tokens (%.2f%% of budget) in %.1fs, %.0f docs/s; duplicates %s; skipped: %s",
             st.name, f"{st.docs:,}", f"{st.tokens:,}", 100 * st.tokens / st.budget, st.seconds, rate,
             f"{st.duplicates:,}", _fmt_skips(st.all_skips()) or "none")
    if _shortfall(st):
        log.warning("⚠️  SOURCE %s RAN DRY: %s of %s tokens (%.1f%% of its budget)", st.name, f"{st.tokens:,}",
                    f"{st.budget:,}", 100 * st.tokens / st.budget)


def _shortfall(st: SourceState) -> int:
    """Tokens missing from a source that ran dry (0 when within tolerance)."""
    missing = st.budget - st.tokens
    return missing if st.exhausted and missing > BUDGET_TOLERANCE * st.budget else 0


# ---------------------------------------------------------------- phase 2: assembly

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
    """Write shards/shard_NNNN.jsonl.gz; a shard closes at shard_size docs or shard_max_tokens tokens."""
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
                shards.append(_close_shard(out, rel, writer))
                writer = None
        if writer is not None:
            shards.append(_close_shard(out, rel, writer))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return shards


def _close_shard(out: Path, rel: str, writer: JsonlGzWriter) -> dict:
    writer.close()
    return {"path": rel, "documents": writer.docs, "tokens": writer.tokens, "sha256": sha256_file(out / rel)}


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
    states = run_phase1(cfg, counter, mirror, cache_root, use_cache)
    phase1_s = time.perf_counter() - started
    shortfalls = {st.name: _shortfall(st) for st in states if _shortfall(st)}
    if shortfalls and cfg.processing_params.strict_budgets:
        raise DataError("strict_budgets: source(s) ran dry before their budget: " + ", ".join(
            f"{st.name} {st.tokens:,}/{st.budget:,} tokens" for st in states if st.name in shortfalls))

    log.info("🔧 Starting Phase 2: streaming assembly (seeded mixing, shards of <= %s docs / %s tokens)",
             f"{cfg.processing_params.shard_size:,}", human_count(cfg.processing_params.shard_max_tokens))
    caches = [SourceCache(cache_root, i, s.name) for i, s in enumerate(cfg.sources)]
    docs = mixed_order(states, caches, cfg.processing_params.seed)
    shards = write_shards(out, docs, cfg.processing_params, cfg.output.compresslevel)
    figures = _figures(cfg, counter, states, shards, shortfalls, mirror, phase1_s, time.perf_counter() - started)
    manifest = write_manifest(out, STAGE, config=config_record, outputs=[s["path"] for s in shards],
                              inputs=inputs, figures=figures)
    if not cfg.output.keep_cache:
        shutil.rmtree(cache_root, ignore_errors=True)
    print_summary(figures, out)
    return manifest


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


def print_summary(figures: dict, out: Path) -> None:
    exact = figures["token_counting"]["method"] == "exact"
    lines = [
        "✅ Corpus complete (streaming, two phases)!",
        f"   📊 Final documents: {figures['documents']:,}",
        (f"   🎯 Exact tokens: {figures['tokens']:,}" if exact else
         f"   🎯 Tokens (estimated, characters/4): {figures['tokens']:,}"),
        f"   🧹 Duplicates removed: {figures['duplicates']:,} ({100 * figures['dedup_rate']:.2f}%)",
        f"   🗑️  Skipped records: {_fmt_skips(figures['skipped']) or 'none'}",
        f"   💾 Peak memory: {figures['peak_rss_mb']:.0f} MB (RSS)",
        f"   📦 Output shards: {figures['shard_count']} in {out / 'shards'}",
        f"   ⏱️  Time: {figures['seconds']['total']:.1f}s",
    ]
    for name, missing in figures["budget_shortfalls"].items():
        src = figures["sources"][name]
        lines.append(f"   ⚠️  BUDGET SHORTFALL: {name} ran dry at {src['tokens']:,} of {src['budget']:,} tokens "
                     f"({missing:,} missing)")
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------- --analyze-only

def analyze(cfg: CorpusConfig, counter: TokenCounter, mirror: Path | None, out: Path) -> int:
    """Sample each source, estimate documents per budget, write plan.json; no shards."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    rules = cfg.processing_params.cleaning_rules()
    rows = []
    for source in cfg.sources:
        try:
            rows.append(_sample_source(cfg, source, counter, mirror, rules))
        except DataError as exc:
            message = str(exc)
            raise DataError(message if message.startswith("source '") else f"source '{source.name}': {message}") from None
    total_tokens = sum(r["budget_tokens"] for r in rows)
    for r in rows:
        r["percent"] = round(100 * r["budget_tokens"] / total_tokens, 2)
    total_docs = sum(r["estimated_documents"] for r in rows)
    plan = {"config": _config_record(cfg, counter), "token_counting": counter.describe(), "sources": rows,
            "total": {"tokens": total_tokens, "estimated_documents": total_docs,
                      "estimated_shards": max(1, math.ceil(total_tokens / cfg.processing_params.shard_max_tokens))}}
    try:
        atomic_write_json(out / "plan.json", plan)
    except OSError as exc:
        raise ArtifactError(f"cannot write {out / 'plan.json'}: {exc.strerror or exc}") from None
    print_plan(plan, out)
    return 0


def _sample_source(cfg: CorpusConfig, source: SourceSpec, counter: TokenCounter, mirror: Path | None,
                   rules: CleaningRules) -> dict:
    pp, skips, reader_skips = cfg.processing_params, Counter(), Counter()
    docs = tokens = chars = records = 0
    exhausted = True
    for record in open_source(source, mirror, reader_skips):
        records += 1
        for text in clean_record(record, source.text_field, rules, skips):
            docs, tokens, chars = docs + 1, tokens + counter(text), chars + len(text)
        if docs >= pp.analyze_sample_docs or chars >= pp.analyze_sample_chars:
            exhausted = False
            break
    budget = cfg.budget(source)
    if docs == 0:
        raise DataError(f"source '{source.name}' yielded no usable documents in its first {records:,} records "
                        f"(skipped: {_fmt_skips(skips + reader_skips) or 'none'})")
    per_doc = tokens / docs
    row = {"name": source.name, "type": source.type, "where": _where(source), "budget_tokens": budget,
           "sample_records": records, "sample_documents": docs, "sample_tokens": tokens,
           "tokens_per_document": round(per_doc, 1), "chars_per_token": round(chars / max(tokens, 1), 3),
           "estimated_documents": math.ceil(min(budget, tokens if exhausted else budget) / per_doc),
           "sample_skipped": dict(skips + reader_skips), "source_exhausted_in_sample": exhausted}
    if exhausted and tokens < budget * (1 - BUDGET_TOLERANCE):
        row["warning"] = f"source holds only {tokens:,} tokens, below its budget of {budget:,}"
        log.warning("⚠️  %s: the whole source holds only %s tokens, below its budget of %s",
                    source.name, f"{tokens:,}", f"{budget:,}")
    return row


def print_plan(plan: dict, out: Path) -> None:
    how = "exact" if plan["token_counting"]["method"] == "exact" else "estimated, characters/4"
    lines = [f"📋 Corpus plan ({how} token counts) -> {out / 'plan.json'}"]
    for r in plan["sources"]:
        note = f"  ⚠️  {r['warning']}" if "warning" in r else ""
        lines.append(f"   {r['name']}: ~{human_count(r['estimated_documents'])} samples "
                     f"({human_count(r['budget_tokens'])} tokens, {r['percent']:g}%; "
                     f"~{r['tokens_per_document']:,.0f} tokens/doc){note}")
    t = plan["total"]
    lines.append(f"   TOTAL: ~{human_count(t['estimated_documents'])} samples, {human_count(t['tokens'])} tokens, "
                 f"~{t['estimated_shards']} shards")
    print("\n".join(lines), flush=True)
