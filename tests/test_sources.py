"""lmforge.data.sources: local files of every kind, the hub mirror's resolution order, bad input."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from lmforge.errors import DataError
from lmforge.data.sources import mirror_files, stream_builtin, stream_files, stream_hub


def _jsonl(path, records, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def test_local_files_of_each_kind_and_globs(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"text": "alpha"}])
    _jsonl(tmp_path / "b.jsonl.gz", [{"text": "beta"}], gz=True)
    _jsonl(tmp_path / "c.json", [{"text": "gamma"}])
    (tmp_path / "d.txt").write_text("first paragraph\nstill first\n\n\nsecond paragraph\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["epsilon", "zeta"], "n": [1, 2]}), tmp_path / "e.parquet")
    texts = [r["text"] for r in stream_files(["*.json*", "d.txt", "e.parquet"], base_dir=tmp_path)]
    assert texts == ["alpha", "beta", "gamma", "first paragraph\nstill first", "second paragraph", "epsilon", "zeta"]


def test_bad_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "good one"}\n{not json\n"a string"\n\xff\xfe{"text": "x"}\n\n{"text": "good two"}\n')
    skips: Counter = Counter()
    assert [r["text"] for r in stream_files(str(path), skips=skips)] == ["good one", "good two"]
    assert skips == Counter(malformed_json=1, not_an_object=1, invalid_utf8=1)


def test_json_file_holding_one_array_of_records(tmp_path):
    """`.json` files saved with json.dump (one array, pretty-printed or not, gzipped or not)
    give their records as datasets' json builder would; bad elements are counted."""
    records = [{"instruction": f"task {i}", "output": "done"} for i in range(3)]
    (tmp_path / "pretty.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "one_line.json.gz").write_bytes(gzip.compress(("\ufeff" + json.dumps(records)).encode(), mtime=0))
    assert list(stream_files(["pretty.json", "one_line.json.gz"], base_dir=tmp_path)) == records * 2

    # a non-object element costs itself; a file cut mid-element keeps what came before the cut
    (tmp_path / "cut.json").write_text('[{"text": "a"}, 5, ["x"],\n {"text": "b"},\n {"text": "c')
    skips: Counter = Counter()
    assert [r["text"] for r in stream_files(str(tmp_path / "cut.json"), skips=skips)] == ["a", "b"]
    assert skips == Counter(not_an_object=2, malformed_json=1)

    # JSON lines in a .json file whose first record is an array: that record is the bad one
    (tmp_path / "lines.json").write_text('["not", "a record"]\n{"text": "kept"}\n{"text": "kept too"}\n')
    skips = Counter()
    assert [r["text"] for r in stream_files(str(tmp_path / "lines.json"), skips=skips)] == ["kept", "kept too"]
    assert skips == Counter(not_an_object=1)

    # a byte that is not UTF-8 costs its own element only; lines after the closing bracket are
    # JSON lines (a one-line array followed by more lines is JSON lines itself, as in a .jsonl)
    pretty = json.dumps([{"text": "before"}, {"text": "caf\u00e9"}, {"text": "after \u2028 sep"}], indent=1)
    bad_byte = pretty.encode().replace("caf\\u00e9".encode(), b"caf\xe9") + b'\n{"text": "trailing"}\n'
    (tmp_path / "bad_byte.json").write_bytes(bad_byte)
    skips = Counter()
    assert [r["text"] for r in stream_files(str(tmp_path / "bad_byte.json"), skips=skips)] == \
        ["before", "after \u2028 sep", "trailing"]
    assert skips == Counter(invalid_utf8=1)
    (tmp_path / "array_then_lines.json").write_text('[{"text": "a"}, {"text": "b"}]\n{"text": "c"}\n')
    skips = Counter()
    assert [r["text"] for r in stream_files(str(tmp_path / "array_then_lines.json"), skips=skips)] == ["c"]
    assert skips == Counter(not_an_object=1)

    # an array as a later line of JSON lines is one bad record, whatever follows it
    (tmp_path / "later.json").write_text('{"text": "first"}\n["bad"]\n{"text": "last"}\n')
    skips = Counter()
    assert [r["text"] for r in stream_files(str(tmp_path / "later.json"), skips=skips)] == ["first", "last"]
    assert skips == Counter(not_an_object=1)


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no file matches"):
        list(stream_files(str(tmp_path / "nothing*.jsonl")))


@pytest.mark.parametrize("present, expected", [
    (["en/train", "en", "train", ""], "en/train"),
    (["en", "train", ""], "en"),
    (["train", ""], "train"),
    ([""], ""),
])
def test_mirror_resolution_order(tmp_path, present, expected):
    base = tmp_path / "org" / "name"
    for rel in present:  # each candidate directory holds a file naming itself
        (base / rel).mkdir(parents=True, exist_ok=True)
        _jsonl(base / rel / "data.jsonl", [{"text": rel or "root"}])
    assert mirror_files(tmp_path, "org/name", "en", "train") == [str(base / expected / "data.jsonl")]
    assert [r["text"] for r in stream_hub("org/name", "en", "train", mirror=tmp_path)] == [expected or "root"]


def test_mirror_without_config_uses_split_dir(tmp_path):
    (tmp_path / "manu/project_gutenberg/en").mkdir(parents=True)
    _jsonl(tmp_path / "manu/project_gutenberg/en/books.jsonl", [{"id": "1", "text": "A book."}])
    assert [r["text"] for r in stream_hub("manu/project_gutenberg", None, "en", mirror=tmp_path)] == ["A book."]


def test_dataset_missing_from_mirror_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_MIRROR", str(tmp_path))
    with pytest.raises(DataError, match=r"allenai/c4 \(config en, split train\) is not in the mirror"):
        list(stream_hub("allenai/c4", "en", "train"))


def test_mirror_refuses_ids_that_escape_it(tmp_path):
    with pytest.raises(DataError, match="invalid"):
        mirror_files(tmp_path, "../etc", None, "train")
    with pytest.raises(DataError, match="invalid config"):
        mirror_files(tmp_path, "org/name", "../../x", "train")


def test_mirror_assembled_from_linked_folders(tmp_path):
    """Dataset, config and split folders may be symbolic links to data elsewhere; a split
    folder's linked subfolders are searched too, and a link back up is read once, not forever."""
    disk = tmp_path / "disk2"
    for folder in ("c4_en", "split_data/shard", "dataset"):
        (disk / folder).mkdir(parents=True)
    _jsonl(disk / "c4_en" / "c4-train.00000.json.gz", [{"text": "c4"}], gz=True)
    _jsonl(disk / "split_data" / "shard" / "part.jsonl", [{"text": "deep"}])
    (disk / "split_data" / "shard" / "loop").symlink_to(disk / "split_data")   # a cycle
    (disk / "dataset" / "train").symlink_to(disk / "split_data")               # a linked split folder

    mirror = tmp_path / "mirror"
    (mirror / "allenai" / "c4").mkdir(parents=True)
    (mirror / "allenai" / "c4" / "en").symlink_to(disk / "c4_en")               # a linked config folder
    (mirror / "org").mkdir()
    (mirror / "org" / "name").symlink_to(disk / "dataset")                      # a linked dataset folder
    assert [r["text"] for r in stream_files(mirror_files(mirror, "allenai/c4", "en", "train"))] == ["c4"]
    assert [r["text"] for r in stream_files(mirror_files(mirror, "org/name", None, "train"))] == ["deep"]

    # a link up to the dataset folder does not pull the validation split into train
    (disk / "dataset" / "validation").mkdir()
    _jsonl(disk / "dataset" / "validation" / "v.jsonl", [{"text": "val"}])
    (disk / "split_data" / "up").symlink_to(disk / "dataset")
    assert [r["text"] for r in stream_files(mirror_files(mirror, "org/name", None, "train"))] == ["deep"]


def test_builtin_source_hook():
    first = next(stream_builtin("python_stdlib"))
    assert first["id"].startswith("docstrings:") and len(first["text"]) > 40
    with pytest.raises(Exception, match="unknown built-in corpus"):
        next(stream_builtin("nope"))


def test_mirror_as_a_hub_repository_splits_by_file_name(tmp_path):
    """A config folder holding every split's files, named as the hub names them, gives each split
    its own; a repository's data/ folder is found; a split folder is searched recursively."""
    c4 = tmp_path / "allenai/c4/en"
    c4.mkdir(parents=True)
    _jsonl(c4 / "c4-train.00000-of-01024.json.gz", [{"text": "train doc"}], gz=True)
    _jsonl(c4 / "c4-validation.00000-of-00008.json.gz", [{"text": "validation doc"}], gz=True)
    assert [r["text"] for r in stream_hub("allenai/c4", "en", "train", mirror=tmp_path)] == ["train doc"]
    assert [r["text"] for r in stream_hub("allenai/c4", "en", "validation", mirror=tmp_path)] == ["validation doc"]
    with pytest.raises(DataError, match=r"holds split\(s\) train, validation only"):
        mirror_files(tmp_path, "allenai/c4", "en", "test")

    alpaca = tmp_path / "tatsu-lab/alpaca/data"
    alpaca.mkdir(parents=True)
    _jsonl(alpaca / "train-00000-of-00001-a09b74b3.jsonl", [{"instruction": "i"}])
    assert mirror_files(tmp_path, "tatsu-lab/alpaca", None, "train") == [str(alpaca / "train-00000-of-00001-a09b74b3.jsonl")]

    nested = tmp_path / "org/name/cfg/test/part-1"
    nested.mkdir(parents=True)
    _jsonl(nested / "000.jsonl", [{"text": "deep"}])
    _jsonl(nested / ".cache.jsonl", [{"text": "hidden"}])
    assert [r["text"] for r in stream_hub("org/name", "cfg", "test", mirror=tmp_path)] == ["deep"]


def test_wikitext_config_folder_with_all_splits_reads_the_test_split_only(tmp_path):
    """The evaluation's split must not be diluted by train/validation files beside it."""
    cfg = tmp_path / "EleutherAI/wikitext_document_level/wikitext-2-raw-v1"
    cfg.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        _jsonl(cfg / f"{split}-00000-of-00001.jsonl", [{"page": f"a {split} page"}])
    assert [r["page"] for r in stream_hub("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test",
                                          mirror=tmp_path)] == ["a test page"]


def test_hub_snapshot_of_a_dashed_config_is_found_in_its_folders(tmp_path):
    sample = tmp_path / "HuggingFaceFW/fineweb-edu/sample/10BT"
    sample.mkdir(parents=True)
    _jsonl(sample / "000_00000.jsonl", [{"text": "edu"}])
    assert [r["text"] for r in stream_hub("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", mirror=tmp_path)] == ["edu"]
    gutenberg = tmp_path / "manu/project_gutenberg/data"
    gutenberg.mkdir(parents=True)
    _jsonl(gutenberg / "de-00000-of-00003.jsonl", [{"text": "Buch"}])
    _jsonl(gutenberg / "en-00000-of-00052.jsonl", [{"text": "Book"}])
    assert [r["text"] for r in stream_hub("manu/project_gutenberg", None, "en", mirror=tmp_path)] == ["Book"]
