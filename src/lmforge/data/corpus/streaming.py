"""Phase 1: stream each source, clean, deduplicate and budget it into its per-source cache.

A source's cache is committed part by part (every cache_part_tokens tokens), so a killed
run resumes from its last committed part with --use-cache.
"""

from __future__ import annotations

import array
import time
from collections import Counter
from pathlib import Path

from lmforge.artifacts import atomic_write_bytes
from lmforge.data.corpus.cache import SourceCache, SourceState, after_commit, source_fingerprint
from lmforge.data.corpus.inputs import open_source, where
from lmforge.data.corpus.report import fmt_skips, report_source
from lmforge.data.corpus.schema import CorpusConfig, SourceSpec
from lmforge.data.corpus.shards import JsonlGzWriter
from lmforge.data.decontam import NgramIndex, Tally, screen
from lmforge.data.text_clean import TokenCounter, clean_record, dedup_key, truncate_to_tokens
from lmforge.errors import DataError
from lmforge.log import get_logger, human_count, progress

log = get_logger(__name__)


class SourceStreamer:
    """Streams one source into its cache, resuming from a saved state."""

    def __init__(self, cfg: CorpusConfig, source: SourceSpec, cache: SourceCache, state: SourceState,
                 counter: TokenCounter, seen: set[int], mirror: Path | None, index: NgramIndex | None = None):
        self.cfg, self.source, self.cache, self.state = cfg, source, cache, state
        self.index, self.tally = index, Tally.from_dict(state.decontamination)
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
        # Checked before budgeting, on the whole cleaned document: a dropped one costs no budget.
        if screen(self.index, self.cfg.decontamination.mode, self.tally, text):
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
        if self.index is not None:
            st.decontamination = self.tally.to_dict()
        now = time.perf_counter()
        st.seconds += now - self._clock
        self._clock = now
        self.cache.save(st)
        after_commit()

    def _log_progress(self, started: float) -> None:
        st = self.state
        rate = st.docs / max(time.perf_counter() - started, 1e-9)
        log.info("   %s: %s docs, %s/%s tokens, %.0f docs/s", self.source.name, f"{st.docs:,}",
                 human_count(st.tokens), human_count(st.budget), rate)


def run_phase1(cfg: CorpusConfig, counter: TokenCounter, mirror: Path | None, cache_root: Path,
               use_cache: bool, ngrams: NgramIndex | None = None) -> list[SourceState]:
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
                log.info("🚀 Streaming %s: %s tokens (%s)", source.name, human_count(budget), where(source))
            else:
                cache.drop_uncommitted(state)
                log.info("🚀 Resuming %s from cache: %s docs, %s of %s tokens already done", source.name,
                         f"{state.docs:,}", human_count(state.tokens), human_count(budget))
            if cfg.processing_params.dedup:
                seen.update(cache.hashes(state))  # what committed parts of this source already hold
            try:
                state = SourceStreamer(cfg, source, cache, state, counter, seen, mirror, ngrams).run()
            except DataError as exc:
                raise DataError(f"source '{source.name}': {exc}") from None
            report_source(state)
        if state.docs == 0:
            raise DataError(f"source '{source.name}' yielded no usable documents "
                            f"(read {state.records_read:,} records; skipped: {fmt_skips(state.all_skips()) or 'none'})")
        states.append(state)
    return states
