"""Evaluation data: WikiText document rebuild, BoolQ schemas, caps, skipped records."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from lmforge.errors import DataError
from lmforge.evaluation.datasets import is_article_heading, load_boolq, load_wikitext, rebuild_wikitext_documents

RAW = [" = Alpha = \n", " Alpha is a letter . \n", " = = History = = \n", " It is old . \n",
       " = = = Use = = = \n", " = Beta = \n", " Beta follows Alpha . \n"]


def test_headings():
    assert is_article_heading(" = Alpha = \n")
    assert not is_article_heading(" = = History = = \n")
    assert not is_article_heading(" = = = Use = = = \n")
    assert not is_article_heading(" x = y = \n")


def test_rebuild_splits_at_top_level_headings_and_keeps_lines_verbatim():
    docs = list(rebuild_wikitext_documents(["\n", " \n", *RAW]))
    # The whitespace-only preamble before the first heading is dropped; sub-headings stay inside.
    assert docs == ["".join(RAW[:5]), "".join(RAW[5:])]


def test_local_raw_file_caps_and_invalid_lines(tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_bytes("".join(RAW).encode() + b" bad \xff byte \n")
    skips = Counter()
    full = load_wikitext(path, skips=skips)
    assert len(full.records) == 2 and not full.partial and full.source == str(path)
    assert skips == {"invalid_utf8_line": 1}
    capped = load_wikitext(path, limit=1)
    assert capped.records == ["".join(RAW[:5])] and capped.partial
    assert not load_wikitext(path, limit=2).partial  # the cap equals the data: complete


def test_local_jsonl_pages_and_errors(tmp_path):
    path = tmp_path / "pages.jsonl"
    path.write_text(json.dumps({"page": "".join(RAW[:2])}) + "\n" + json.dumps({"page": "  "}) + "\n"
                    + json.dumps({"text": "x"}) + "\n{broken\n")
    skips = Counter()
    loaded = load_wikitext(path, skips=skips)
    assert loaded.records == ["".join(RAW[:2])]
    assert skips == {"empty_page": 1, "missing_page": 1, "malformed_json": 1}
    with pytest.raises(DataError, match="not found"):
        load_wikitext(tmp_path / "missing.raw")
    (tmp_path / "empty.raw").write_text("\n\n")
    with pytest.raises(DataError, match="no WikiText document"):
        load_wikitext(tmp_path / "empty.raw")


def test_boolq_both_schemas_and_bad_records(tmp_path):
    rows = [{"question": "is it", "passage": "It is.", "label": 1, "idx": 7},  # SuperGLUE
            {"question": "was it", "passage": "It was not.", "answer": False, "title": "T"},  # original BoolQ
            {"question": "q", "passage": "p", "label": -1},  # unlabeled test split
            {"question": "", "passage": "p", "label": 0},
            {"question": "q", "passage": "p"}]
    path = tmp_path / "boolq.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    skips = Counter()
    loaded = load_boolq(path, skips=skips)
    assert [(e.label, e.idx, e.passage) for e in loaded.records] == [(1, 7, "It is."), (0, 1, "It was not.")]
    assert skips == {"bad_label": 1, "missing_question": 1, "missing_label": 1}
    assert load_boolq(path, limit=1).partial and not load_boolq(path, limit=2).partial


def test_hub_sources_go_through_the_mirror(tmp_path):
    wt = tmp_path / "EleutherAI" / "wikitext_document_level" / "wikitext-2-raw-v1" / "test"
    bq = tmp_path / "aps" / "super_glue" / "boolq" / "validation"
    wt.mkdir(parents=True)
    bq.mkdir(parents=True)
    (wt / "test-00000.jsonl").write_text(json.dumps({"page": "".join(RAW)}) + "\n")
    (bq / "validation-00000.jsonl").write_text(json.dumps({"question": "q", "passage": "p", "label": 0, "idx": 0}) + "\n")
    assert load_wikitext(mirror=tmp_path).records == ["".join(RAW)]
    assert load_boolq(mirror=tmp_path).records[0].label == 0


@pytest.mark.realdata
def test_rebuilt_raw_file_equals_the_document_level_dataset(mirror):
    """The mirror's raw WikiText-2 test file, rebuilt, gives the document-level pages byte for byte."""
    raw = Path(mirror).parent / "data" / "wikitext2" / "test.raw"
    if not raw.is_file():
        pytest.skip(f"no raw WikiText file at {raw}")
    rebuilt = load_wikitext(raw).records
    pages = load_wikitext(mirror=mirror).records
    assert len(pages) == 62 and rebuilt == pages
