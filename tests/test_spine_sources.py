"""Hub mirror resolution and tolerant local reading (the shared sources layer)."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from lmforge.errors import DataError
from lmforge.data.sources import mirror_files, stream_files, stream_hub


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mirror_lookup_order(tmp_path):
    _write_jsonl(tmp_path / "org/ds/cfg/test/a.jsonl", [{"n": 1}])
    _write_jsonl(tmp_path / "org/ds/cfg/b.jsonl", [{"n": 2}])
    _write_jsonl(tmp_path / "org/ds/train/c.jsonl", [{"n": 3}])
    _write_jsonl(tmp_path / "org/ds/d.jsonl", [{"n": 4}])
    assert [r["n"] for r in stream_hub("org/ds", "cfg", "test", mirror=tmp_path)] == [1]
    assert [r["n"] for r in stream_hub("org/ds", "cfg", "validation", mirror=tmp_path)] == [2]
    assert [r["n"] for r in stream_hub("org/ds", None, "train", mirror=tmp_path)] == [3]
    assert [r["n"] for r in stream_hub("org/ds", None, "other", mirror=tmp_path)] == [4]


def test_mirror_env_and_missing_dataset(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "org/ds/x.jsonl", [{"n": 1}])
    monkeypatch.setenv("LMFORGE_MIRROR", str(tmp_path))
    assert list(stream_hub("org/ds")) == [{"n": 1}]
    with pytest.raises(DataError, match="not in the mirror"):
        list(stream_hub("org/other"))
    with pytest.raises(DataError, match="invalid hub dataset id"):
        mirror_files(tmp_path, "../etc", None, "train")


def test_bad_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"text": "ok"}\n{broken\n\xff\xfe{"text": "bad utf8"}\n[1, 2]\n\n{"text": "end"}\n')
    skips = Counter()
    assert [r["text"] for r in stream_files([str(path)], skips=skips)] == ["ok", "end"]
    assert skips == Counter({"malformed_json": 1, "invalid_utf8": 1, "not_an_object": 1})


def test_text_files_are_paragraphs_and_globs_expand(tmp_path):
    (tmp_path / "a.txt").write_text("first para\nline two\n\n\nsecond\n")
    (tmp_path / "b.txt").write_text("third")
    texts = [r["text"] for r in stream_files("*.txt", base_dir=tmp_path)]
    assert texts == ["first para\nline two", "second", "third"]
    with pytest.raises(DataError, match="no file matches"):
        list(stream_files("*.jsonl", base_dir=tmp_path))
