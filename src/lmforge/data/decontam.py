"""Decontamination: training documents that share a word n-gram with an evaluation item.

The check is GPT-3's: text is lower-cased and cut into words, and a training document
that shares one n-gram (13 words by default) with an evaluation item is contaminated.
A word is a run of ASCII letters and digits or non-ASCII characters (UTF-8 bytes >= 0x80);
ASCII punctuation, '_' and whitespace separate words, so WikiText's ` @-@ ` / ` @,@ `
tokenisation and a Wikipedia article's `1,642` give the same words. ASCII letters are
folded to lower case; other scripts are compared as written (both sides are NFC).

Everything is vectorised over the UTF-8 bytes with numpy: each word is hashed from its
length and its first and last 8 bytes (two gathers), every window of n word hashes by a
polynomial built by doubling (arithmetic mod 2**64). Only the evaluation side is stored:
the sorted n-gram hashes with the item each came from (12 bytes per evaluation n-gram)
and a fixed 16 MiB table of their top bits. A training document's n-grams are ruled out
by one gather in that table (~3% pass for 500K evaluation n-grams), the rest found by
binary search, and all are forgotten: memory never grows with the training data.

Items shorter than n words cannot be checked (they hold no n-gram) and are counted as
such: a short common phrase never flags a document. Modes: `drop` removes contaminated
documents, `report` keeps them and counts, `off` does nothing (and loads nothing).

Evaluation sets (`eval_sets`): wikitext2_test, boolq_validation, sft_eval_prompts (the
smoke-test prompts of an SFT evaluation config), and zero_shot (the datasets of the
zero-shot tasks, lmforge.evaluation.zeroshot_tasks, that the mirror holds) or single task names.
They are read by the same mirror rules as every source (LMFORGE_MIRROR / --mirror); a
set that cannot be read is logged and listed under `missing`, never fatal.
"""

from __future__ import annotations

import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

from lmforge.artifacts import read_json, sha256_file
from lmforge.config import project_file, spec
from lmforge.data.sources import data_fingerprint, mirror_files, stream_files
from lmforge.errors import ConfigError, DataError
from lmforge.evaluation.datasets import BOOLQ_HUB, WIKITEXT_HUB, load_boolq, load_wikitext
from lmforge.evaluation.zeroshot_tasks import TASKS, record_text
from lmforge.log import get_logger

log = get_logger(__name__)

BASE_SETS = ("wikitext2_test", "boolq_validation", "sft_eval_prompts", "zero_shot")
DEFAULT_SFT_EVAL_CONFIG = "config/evaluation/sft_standard.json"
TOUCHED_LISTED = 25  # touched items named in the manifest per evaluation set (the count is always exact)
_GRAM_MULT = np.uint64(1099511628211)  # odd multiplier of the n-gram polynomial (arithmetic mod 2**64)
_HEAD_MULT = np.uint64(0x9E3779B97F4A7C15)
_TAIL_MULT = np.uint64(0xC2B2AE3D27D4EB4F)
_LEN_MULT = np.uint64(0x165667B19E3779F9)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
TABLE_BITS = 24  # prefilter: one byte per slot, 16 MiB, ~3% of slots set by 500K evaluation n-grams


@dataclass
class DecontaminationParams:
    mode: Literal["drop", "report", "off"] = spec(
        "off", help="drop: remove training documents sharing an n-gram with an evaluation item; "
                    "report: keep them, count them; off: no check")
    ngram: int = spec(13, min=5, max=64, help="words per n-gram (GPT-3 used 13)")
    eval_sets: list[str] = spec(default_factory=lambda: list(BASE_SETS),
                                help="wikitext2_test, boolq_validation, sft_eval_prompts, zero_shot, or task names")
    sft_eval_config: str = spec(DEFAULT_SFT_EVAL_CONFIG, help="SFT evaluation config whose smoke prompts are checked")
    hub_fallback: bool = spec(False, help="with no mirror, stream WikiText-2 and BoolQ from the hub (an offline "
                                          "machine then waits ~25 s per set before listing it missing)")

    def check(self) -> list[str]:

        if not isinstance(self.eval_sets, list):
            return []
        known = (*BASE_SETS, *TASKS)
        return [f"eval_sets: unknown evaluation set {name!r} (known: {', '.join(known)})"
                for name in self.eval_sets if name not in known]


def _lower_table() -> np.ndarray:
    """Byte -> normalised byte: ASCII letters lower-cased, digits and bytes >= 0x80 kept, the rest 0 (a separator)."""
    table = np.zeros(256, np.uint8)
    for c in b"abcdefghijklmnopqrstuvwxyz0123456789":
        table[c] = c
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[c] = c + 32
    table[128:] = np.arange(128, 256)
    return table


_LOWER = _lower_table()
# masks keeping a word's first (head) / last (tail) min(length, 8) bytes of an 8-byte little-endian window
_HEAD_MASK = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
_TAIL_MASK = np.array([~((1 << (8 * (8 - k))) - 1) & (2 ** 64 - 1) for k in range(9)], dtype=np.uint64)


def _spans(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(buffer, codes, starts, ends): normalised UTF-8 bytes (0 = separator) inside a zero-padded
    buffer (8 bytes before, >= 8 after, whole 8-byte units), and each word's start/end offset."""
    raw = text.encode("utf-8")
    n = len(raw)
    buf = np.zeros((n + 23) // 8 * 8, np.uint8)
    codes = buf[8:8 + n]
    np.take(_LOWER, np.frombuffer(raw, np.uint8), out=codes)
    edges = np.diff(buf[7:9 + n].astype(np.bool_).view(np.int8))
    return buf, codes, np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def words_of(text: str) -> list[str]:
    """The normalised words of a text, as the hashes see them (for tests and docs)."""
    _, codes, starts, ends = _spans(text)
    return [codes[a:b].tobytes().decode("utf-8", "replace") for a, b in zip(starts, ends)]


def word_hashes(text: str) -> np.ndarray:
    """One 64-bit hash per normalised word, in order.

    A word is identified by its length, its first 8 and its last 8 bytes (the whole word
    when shorter): two words differing only in the middle of 17+ bytes collide, which the
    12 other words of a 13-gram make harmless. Cheap: no per-byte arithmetic, two gathers.
    """
    buf, _, starts, ends = _spans(text)
    if not len(starts):
        return np.zeros(0, np.uint64)
    # Element i of this (unaligned) view is the 8 bytes buf[i:i+8], i.e. codes[i-8:i].
    # Read as little-endian whatever the machine, so the byte masks mean the same everywhere.
    windows = np.lib.stride_tricks.as_strided(buf.view("<u8"), shape=(len(buf) - 7,), strides=(1,))
    lengths = np.minimum(ends - starts, 8)
    head = windows[starts + 8].astype(np.uint64) & _HEAD_MASK[lengths]
    tail = windows[ends].astype(np.uint64) & _TAIL_MASK[lengths]
    h = head * _HEAD_MULT
    h ^= (tail * _TAIL_MULT) >> np.uint64(7)
    h += (ends - starts).astype(np.uint64) * _LEN_MULT
    h ^= h >> np.uint64(31)  # mix, so the n-gram polynomial below is not linear in the bytes
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h


def ngram_hashes(values: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hashes sum_k values[i+k] * M**(n-1-k) of every window of n consecutive values (mod 2**64).

    Built by doubling: windows of 1, 2, 4, 8... values combine as H(a+b)[i] = H(a)[i] * M**b + H(b)[i+a],
    so 13-grams cost 5 passes over the document instead of 12.
    """
    count = len(values) - n + 1
    block, size = values, 1      # hashes of windows of `size` values, for every start
    acc, done = None, 0          # hashes of the first `done` values of each n-window
    for bit in range(n.bit_length()):
        if n >> bit & 1:
            part = block[done:done + count]
            acc = part.copy() if acc is None else acc * _GRAM_MULT ** np.uint64(size) + part
            done += size
        if done == n:
            break
        block = block[:len(block) - size] * _GRAM_MULT ** np.uint64(size) + block[size:]
        size *= 2
    return acc


# ---------------------------------------------------------------- evaluation sets

@dataclass
class EvalSet:
    """One evaluation set as indexed: where it came from and what could be checked."""

    name: str
    source: str
    items: int = 0
    too_short: int = 0
    ngrams: int = 0


def _wikitext_items(mirror: Path | None) -> tuple[str, Iterator[tuple[str, str]]]:

    data = load_wikitext(mirror=mirror)
    return data.source, ((page.strip().splitlines()[0].strip(" ="), page) for page in data.records)


def _boolq_items(mirror: Path | None) -> tuple[str, Iterator[tuple[str, str]]]:

    data = load_boolq(mirror=mirror)
    return data.source, ((f"idx {ex.idx}", f"{ex.passage}\n{ex.question}") for ex in data.records)


def _sft_prompt_items(config_path: str) -> tuple[str, Iterator[tuple[str, str]]]:

    path = project_file(config_path)
    if not path.is_file():
        raise DataError(f"SFT evaluation config {path} not found")
    raw = read_json(path, "SFT evaluation config")
    cases = ((raw.get("smoke") or {}).get("cases") or []) if isinstance(raw, dict) else []
    items = [(str(c.get("name", n)), c["prompt"]) for n, c in enumerate(cases)
             if isinstance(c, dict) and isinstance(c.get("prompt"), str)]
    return str(path), iter(items)


def _task_items(task_name: str, mirror: Path | None) -> tuple[str, Iterator[tuple[str, str]]]:

    task = TASKS[task_name]
    files = mirror_files(mirror, *task.hub)
    records = stream_files(files, skips=Counter())
    where = f"{task.hub_id} ({task.config or 'no config'}, {task.split})"
    return where, ((f"row {n}", record_text(r, task.text_fields)) for n, r in enumerate(records))


def expand_sets(names: Iterable[str]) -> list[str]:
    """Configured set names with `zero_shot` expanded into its task names (order kept, no repeats)."""

    out: list[str] = []
    for name in names:
        out += list(TASKS) if name == "zero_shot" else [name]
    return list(dict.fromkeys(out))


def open_set(name: str, params: DecontaminationParams, mirror: Path | None):
    """(where, iterator of (label, text)) for one evaluation set; DataError when it cannot be read."""
    if mirror is None and name != "sft_eval_prompts" and not (params.hub_fallback and name in BASE_SETS):
        raise DataError("no mirror (set LMFORGE_MIRROR or --mirror"
                        + (", or decontamination.hub_fallback=true to stream it from the hub)" if name in BASE_SETS
                           else "; zero-shot task data are read from the mirror only)"))
    if name == "wikitext2_test":
        return _wikitext_items(mirror)
    if name == "boolq_validation":
        return _boolq_items(mirror)
    if name == "sft_eval_prompts":
        return _sft_prompt_items(params.sft_eval_config)
    return _task_items(name, mirror)


# ---------------------------------------------------------------- the index

class NgramIndex:
    """Hashed n-grams of the evaluation items, and the check of one training text against them."""

    def __init__(self, n: int):
        self.n = n
        self.sets: dict[str, EvalSet] = {}
        self.missing: dict[str, str] = {}
        self.item_set: list[str] = []     # item number -> set name
        self.item_label: list[str] = []   # item number -> label (title, idx, case name, row)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.hashes = np.zeros(0, np.uint64)
        self.items = np.zeros(0, np.int32)
        self.table = np.zeros(0, np.bool_)
        self.seconds = 0.0

    # -- building

    def add_set(self, name: str, where: str, items: Iterable[tuple[str, str]]) -> None:
        info = self.sets[name] = EvalSet(name, where)
        for label, text in items:
            info.items += 1
            values = word_hashes(unicodedata.normalize("NFC", text))
            if len(values) < self.n:
                info.too_short += 1
                continue
            grams = np.unique(ngram_hashes(values, self.n))
            number = len(self.item_set)
            self.item_set.append(name)
            self.item_label.append(label)
            self._parts.append((grams, np.full(len(grams), number, np.int32)))
            info.ngrams += len(grams)

    def freeze(self) -> None:
        """Sort the hashes for binary search; drop the per-item parts."""
        if self._parts:
            hashes = np.concatenate([h for h, _ in self._parts])
            items = np.concatenate([i for _, i in self._parts])
            order = np.argsort(hashes, kind="stable")
            self.hashes, self.items = hashes[order], items[order]
            # Most training n-grams miss: one gather in a fixed table rules them out before any binary search.
            self.table = np.zeros(1 << TABLE_BITS, np.bool_)
            self.table[self.hashes >> np.uint64(64 - TABLE_BITS)] = True
        self._parts = []

    @property
    def memory_mb(self) -> float:
        return (self.hashes.nbytes + self.items.nbytes + self.table.nbytes) / 2 ** 20

    # -- checking

    def check(self, text: str) -> np.ndarray | None:
        """Item numbers sharing an n-gram with `text`, or None when it is clean."""
        n = self.n
        if not len(self.hashes):
            return None
        values = word_hashes(text)
        if len(values) < n:
            return None
        grams = ngram_hashes(values, n)
        grams = grams[self.table[grams >> np.uint64(64 - TABLE_BITS)]]
        if not len(grams):
            return None
        pos = np.searchsorted(self.hashes, grams)
        np.minimum(pos, len(self.hashes) - 1, out=pos)
        hit = self.hashes[pos] == grams
        if not hit.any():
            return None
        found = np.unique(grams[hit])
        lo = np.searchsorted(self.hashes, found, "left")
        hi = np.searchsorted(self.hashes, found, "right")
        return np.unique(np.concatenate([self.items[a:b] for a, b in zip(lo, hi)]))

    def sets_of(self, items: np.ndarray) -> set[str]:
        return {self.item_set[i] for i in items.tolist()}


def build_index(params: DecontaminationParams, mirror: Path | None) -> NgramIndex | None:
    """The index of the configured evaluation sets (None when mode is off)."""
    if params.mode == "off":
        return None
    started = time.perf_counter()
    index = NgramIndex(params.ngram)
    for name in expand_sets(params.eval_sets):
        try:
            where, items = open_set(name, params, mirror)
            index.add_set(name, where, items)
        except (DataError, ConfigError) as exc:
            index.sets.pop(name, None)
            index.missing[name] = str(exc)
            log.debug("decontamination: evaluation set %s not available: %s", name, exc)
    index.freeze()
    index.seconds = time.perf_counter() - started
    log.info("🧼 decontamination (%s, %d-grams): %s evaluation n-grams from %d set(s) (%.1f MB) in %.1fs",
             params.mode, index.n, f"{len(index.hashes):,}", len(index.sets), index.memory_mb, index.seconds)
    if index.missing:
        log.warning("⚠️  decontamination: %d evaluation set(s) not available, not checked: %s "
                    "(not in the mirror or unreachable; --log-level DEBUG says why for each)",
                    len(index.missing), ", ".join(index.missing))
    return index


# ---------------------------------------------------------------- counting

@dataclass
class Tally:
    """What the check found in one source (saved with the corpus cache state, so resumable)."""

    checked: int = 0
    contaminated: int = 0
    dropped: int = 0
    by_eval_set: dict = field(default_factory=dict)   # set name -> contaminated documents
    items: list = field(default_factory=list)         # item numbers touched (sorted, unique)
    examples: list = field(default_factory=list)      # the first contaminated documents' openings

    @classmethod
    def from_dict(cls, data: dict | None) -> "Tally":
        return cls(**(data or {}))

    def record(self, index: NgramIndex, hit: np.ndarray, dropped: bool, text: str = "") -> None:
        if len(self.examples) < TOUCHED_LISTED:
            self.examples.append(" ".join(text[:80].split()))
        self.contaminated += 1
        self.dropped += int(dropped)
        for name in index.sets_of(hit):
            self.by_eval_set[name] = self.by_eval_set.get(name, 0) + 1
        self.items = sorted(set(self.items).union(hit.tolist()))

    def to_dict(self) -> dict:
        return {"checked": self.checked, "contaminated": self.contaminated, "dropped": self.dropped,
                "by_eval_set": dict(sorted(self.by_eval_set.items())), "items": self.items,
                "examples": self.examples}


def screen(index: NgramIndex | None, mode: str, tally: Tally, text: str) -> bool:
    """Check one training text; count it; return True when it must be dropped."""
    if index is None:
        return False
    tally.checked += 1
    hit = index.check(text)
    if hit is None:
        return False
    tally.record(index, hit, dropped=mode == "drop", text=text)
    return mode == "drop"


def figures(params: DecontaminationParams, index: NgramIndex | None, tallies: dict[str, Tally]) -> dict:
    """The manifest's `decontamination` block: per source, per evaluation set, items touched."""
    if index is None:
        return {"mode": "off"}
    touched = sorted({i for t in tallies.values() for i in t.items})
    sets = {}
    for name, info in index.sets.items():
        mine = [i for i in touched if index.item_set[i] == name]
        sets[name] = {"source": info.source, "items": info.items, "items_checked": info.items - info.too_short,
                      "items_too_short": info.too_short, "ngrams": info.ngrams, "items_touched": len(mine),
                      "touched": [index.item_label[i] for i in mine[:TOUCHED_LISTED]],
                      "contaminated_documents": sum(t.by_eval_set.get(name, 0) for t in tallies.values())}
    return {"mode": params.mode, "ngram": params.ngram, "eval_sets": sets, "missing": dict(index.missing),
            "index": {"ngrams": int(len(index.hashes)), "memory_mb": round(index.memory_mb, 2), "seconds": round(index.seconds, 2)},
            "sources": {name: {k: v for k, v in t.to_dict().items() if k != "items"} for name, t in tallies.items()},
            "documents_checked": sum(t.checked for t in tallies.values()),
            "contaminated_documents": sum(t.contaminated for t in tallies.values()),
            "documents_dropped": sum(t.dropped for t in tallies.values()),
            "eval_items_touched": len(touched)}


def identity(params: DecontaminationParams) -> dict | None:
    """What a cache built with this check depends on (None when off, so old caches stay valid)."""
    if params.mode == "off":
        return None
    return {"mode": params.mode, "ngram": params.ngram, "eval_sets": list(params.eval_sets),
            "sft_eval_config": params.sft_eval_config, "hub_fallback": params.hub_fallback}


def data_identity(params: DecontaminationParams, mirror: Path | None) -> dict | None:
    """What the evaluation sets' data were (mirror files' sizes and times, or "unavailable"),
    so that a stage screened without a set is redone once the set appears (None when off)."""
    if params.mode == "off":
        return None
    found: dict = {}
    for name in expand_sets(params.eval_sets):
        try:
            found[name] = _set_data(name, params, mirror)
        except DataError:
            found[name] = "unavailable"
    return found


BASE_SET_HUBS = {"wikitext2_test": WIKITEXT_HUB, "boolq_validation": BOOLQ_HUB}


def _set_data(name: str, params: DecontaminationParams, mirror: Path | None) -> dict | str:
    if name == "sft_eval_prompts":
        path = project_file(params.sft_eval_config)
        return {"sha256": sha256_file(path)} if path.is_file() else "unavailable"
    hub = BASE_SET_HUBS.get(name) or (TASKS[name].hub if name in TASKS else None)
    if mirror is None:
        return "hub" if params.hub_fallback and name in BASE_SET_HUBS else "unavailable"
    return data_fingerprint(hub=hub, mirror=mirror) if hub else "unavailable"


def summary_line(block: dict) -> str:
    """One line for a stage's closing summary."""
    if block.get("mode", "off") == "off":
        return "   🧼 Decontamination: off"
    per_set = ", ".join(f"{name} {s['items_touched']}/{s['items_checked']} items"
                        for name, s in block["eval_sets"].items() if s["items_touched"])
    missing = f"; not checked (missing): {', '.join(block['missing'])}" if block["missing"] else ""
    return (f"   🧼 Decontamination ({block['mode']}, {block['ngram']}-grams): "
            f"{block['contaminated_documents']:,} contaminated documents, {block['documents_dropped']:,} dropped; "
            f"evaluation items touched: {per_set or 'none'}{missing}")
