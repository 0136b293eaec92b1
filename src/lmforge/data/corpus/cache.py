"""Phase 1's per-source cache: committed parts, their dedup hashes and the saved state that resumes a run.

OUTPUT_DIR/cache/NN_name/ holds part_NNNNN.jsonl.gz (clean documents with their token
counts), hashes_NNNNN.u64 (their dedup keys) and state.json, saved after every committed part.
"""

from __future__ import annotations

import array
import os
import shutil
import signal
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from lmforge.artifacts import atomic_write_json, child_dir, read_json, sha256_json
from lmforge.config import to_dict
from lmforge.data.corpus.schema import BUDGET_TOLERANCE, CorpusConfig, SourceSpec
from lmforge.data.corpus.shards import read_jsonl_gz
from lmforge.data.decontam import identity as decontam_identity
from lmforge.data.text_clean import TokenCounter

# Test-only hook: the process kills itself (SIGKILL) right after committing this many
# cache parts, to prove that `--use-cache` resumes a run killed during phase 1.
KILL_AFTER_PARTS_ENV = "LMFORGE_CORPUS_KILL_AFTER_PARTS"


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
    decontamination: dict = field(default_factory=dict)  # lmforge.data.decontam.Tally of this source

    def all_skips(self) -> dict:
        return dict(sorted((Counter(self.skips) + Counter(self.reader_skips)).items()))


def shortfall(st: SourceState) -> int:
    """Tokens missing from a source that ran dry (0 when within tolerance)."""
    missing = st.budget - st.tokens
    return missing if st.exhausted and missing > BUDGET_TOLERANCE * st.budget else 0


class SourceCache:
    """cache/NN_name/: part_NNNNN.jsonl.gz (docs with token counts), hashes_NNNNN.u64, state.json."""

    def __init__(self, cache_root: Path, index: int, name: str):

        # A source name becomes a folder name: "../x" must not lead writes out of the cache.
        self.dir = child_dir(cache_root, f"{index:02d}_{name}", f"sources[{index}].name")

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
    check = decontam_identity(cfg.decontamination)
    extra = {"decontamination": check} if check else {}  # absent when off: caches built before stay valid
    return sha256_json({**extra, "source": to_dict(source), "budget": cfg.budget(source), "phase1": phase1,
                        "counter": [method["method"], method.get("tokenizer_sha256")],
                        "previous": previous if pp.dedup else None})


_parts_committed = 0


def after_commit() -> None:
    """Count a committed part; honours the test-only KILL_AFTER_PARTS_ENV hook."""
    global _parts_committed
    _parts_committed += 1
    limit = os.environ.get(KILL_AFTER_PARTS_ENV)
    if limit and _parts_committed >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)
