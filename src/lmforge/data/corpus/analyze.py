"""--analyze-only: sample each source, estimate documents per budget, write plan.json (no shards)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from lmforge.artifacts import atomic_write_json
from lmforge.data.corpus.inputs import open_source, where
from lmforge.data.corpus.report import fmt_skips, print_plan
from lmforge.data.corpus.schema import BUDGET_TOLERANCE, CorpusConfig, SourceSpec, config_record
from lmforge.data.text_clean import CleaningRules, TokenCounter, clean_record
from lmforge.errors import ArtifactError, DataError
from lmforge.log import get_logger

log = get_logger(__name__)


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
    plan = {"config": config_record(cfg, counter), "token_counting": counter.describe(), "sources": rows,
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
                        f"(skipped: {fmt_skips(skips + reader_skips) or 'none'})")
    per_doc = tokens / docs
    row = {"name": source.name, "type": source.type, "where": where(source), "budget_tokens": budget,
           "sample_records": records, "sample_documents": docs, "sample_tokens": tokens,
           "tokens_per_document": round(per_doc, 1), "chars_per_token": round(chars / max(tokens, 1), 3),
           "estimated_documents": math.ceil(min(budget, tokens if exhausted else budget) / per_doc),
           "sample_skipped": dict(skips + reader_skips), "source_exhausted_in_sample": exhausted}
    if exhausted and tokens < budget * (1 - BUDGET_TOLERANCE):
        row["warning"] = f"source holds only {tokens:,} tokens, below its budget of {budget:,}"
        log.warning("⚠️  %s: the whole source holds only %s tokens, below its budget of %s",
                    source.name, f"{tokens:,}", f"{budget:,}")
    return row
