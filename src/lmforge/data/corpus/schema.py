"""The corpus config: its schema, loading with `--set` overrides, and its manifest record."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmforge.config import config_from_dict, parse_set_overrides, read_config_file, spec, to_dict
from lmforge.data.builtin_corpus import BUILTIN_CORPORA
from lmforge.data.decontam import DecontaminationParams
from lmforge.data.text_clean import NORMALIZATION_FORMS, CleaningRules, TokenCounter
from lmforge.errors import ConfigError

STAGE = "corpus"
BUDGET_TOLERANCE = 0.005  # a source within 0.5% of its budget has met it


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
    decontamination: DecontaminationParams = spec(default_factory=DecontaminationParams)

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
    raw = read_config_file(p)
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


def config_record(cfg: CorpusConfig, counter: TokenCounter) -> dict:
    """The resolved config as stored in the manifest (and compared for up-to-date checks)."""
    described = counter.describe()
    described.pop("tokenizer_dir", None)  # the same tokenizer elsewhere is the same counter
    corpus = to_dict(cfg)
    if cfg.decontamination.mode == "off":
        corpus.pop("decontamination")  # as before the check existed: corpora built then stay up to date
    return {"corpus": corpus, "budgets": {s.name: cfg.budget(s) for s in cfg.sources}, "token_counter": described}
