"""Gzip-compressed JSON-lines files: a deterministic atomic writer and a reader."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

from lmforge.artifacts import atomic_path
from lmforge.data.sources import parse_json_record
from lmforge.errors import DataError


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


def read_jsonl_gz(path: Path, skips: Counter | None = None) -> Iterator[dict]:
    """The records of a (gzipped) JSON-lines shard, lazily.

    Lines that are not UTF-8, not JSON or not an object are skipped and counted in
    `skips` by reason; a truncated or unreadable file is a DataError naming it.
    """
    skips = skips if skips is not None else Counter()
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for raw in handle:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skips["invalid_utf8"] += 1
                    continue
                record = parse_json_record(line, skips)
                if record is not None:
                    yield record
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read shard {path}: {type(exc).__name__}: {exc}") from None
