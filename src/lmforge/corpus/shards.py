"""Gzip-compressed JSON-lines files: a deterministic atomic writer and a reader."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterator

from ..artifacts import atomic_path


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
    """The records of a .jsonl.gz, one per line, lazily."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)
