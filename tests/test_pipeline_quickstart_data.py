"""The quickstart's offline evaluation and SFT data, derived from a corpus artifact."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmforge.artifacts import load_manifest, sha256_file
from lmforge.data.quickstart_data import MIRROR_FILES, PRETRAIN_CORPUS, RAW_WIKITEXT, QuickstartDataConfig, build, cli
from lmforge.data.sources import stream_hub


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_corpus) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("qdata") / "out"
    return out, build(tiny_corpus, out, QuickstartDataConfig(boolq_items=40, alpaca_items=50, oasst_trees=10))


def test_heldout_documents_leave_the_training_corpus(built, tiny_corpus):
    out, figures = built
    train_ids = {json.loads(line)["id"] for p in sorted((out / PRETRAIN_CORPUS / "shards").glob("*.jsonl.gz"))
                 for line in gzip.open(p, "rt")}
    source_ids = {json.loads(line)["id"] for p in sorted((tiny_corpus / "shards").glob("*.jsonl.gz"))
                  for line in gzip.open(p, "rt")}
    assert len(train_ids) == figures["train_documents"] and figures["heldout_documents"] >= 8
    assert len(source_ids - train_ids) == figures["heldout_documents"]
    load_manifest(out / PRETRAIN_CORPUS, "corpus", verify="sha256")        # a valid corpus artifact for `pack`
    pages = (out / RAW_WIKITEXT).read_text()
    assert pages.count(" = \n") == figures["wikitext_pages"] and pages.startswith(" = ")
    train_text = " ".join(json.loads(line)["text"] for p in (out / PRETRAIN_CORPUS / "shards").glob("*.gz")
                          for line in gzip.open(p, "rt"))
    first_paragraph = pages.split("\n \n")[1].strip()
    assert first_paragraph and first_paragraph not in " ".join(train_text.split())   # held out, really


def test_boolq_items_are_balanced_and_true(built):
    out, _ = built
    items = _rows(out / MIRROR_FILES["boolq"])
    assert len(items) == 40 and sum(i["label"] for i in items) == 20
    for item in items:
        assert set(item) == {"question", "passage", "idx", "label"}
        word = item["question"].removeprefix("does the text mention ")
        assert (word in item["passage"].lower()) == bool(item["label"])


def test_alpaca_and_oasst_schemas(built):
    out, _ = built
    pairs = _rows(out / MIRROR_FILES["alpaca"])
    assert len(pairs) == 50 and all(set(p) == {"instruction", "input", "output", "text"} for p in pairs)
    assert all(p["output"] and p["text"].endswith(p["output"]) for p in pairs)
    messages = _rows(out / MIRROR_FILES["oasst1"])
    ids = {m["message_id"] for m in messages}
    assert all(m["parent_id"] is None or m["parent_id"] in ids for m in messages)
    assert {m["role"] for m in messages} == {"prompter", "assistant"}
    roots = [m for m in messages if m["parent_id"] is None]
    assert len(roots) == 10 and all(m["role"] == "prompter" for m in roots)


def test_mirror_reads_through_the_hub_code_path(built):
    out, _ = built
    pages = list(stream_hub("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test", mirror=out / "mirror"))
    boolq = list(stream_hub("aps/super_glue", "boolq", "validation", mirror=out / "mirror"))
    assert pages and "page" in pages[0] and len(boolq) == 40


def test_deterministic_and_up_to_date(built, tiny_corpus, tmp_path, capsys):
    out, _ = built
    again = tmp_path / "again"
    args = ["--corpus-dir", str(tiny_corpus), "--output-dir", str(again),
            "--set", "boolq_items=40", "--set", "alpaca_items=50", "--set", "oasst_trees=10"]
    assert cli(args) == 0
    for rel in [RAW_WIKITEXT, *MIRROR_FILES.values()]:
        assert sha256_file(again / rel) == sha256_file(out / rel), rel
    assert cli(args) == 0
    assert "up to date, skipping" in capsys.readouterr().err


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    assert cli(["--corpus-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_training_shards_carry_no_file_name_or_time_in_their_gzip_header(built):
    """A temp name (with its pid) in the header made every rebuild's bytes, and so the corpus's
    identity, differ: everything downstream reran after an identical rebuild."""
    out, _ = built
    shards = sorted((out / PRETRAIN_CORPUS / "shards").glob("*.jsonl.gz"))
    assert shards
    for shard in shards:
        header = shard.read_bytes()[:10]
        assert header[3] & 0x08 == 0, f"{shard.name}: FNAME set"  # gzip FLG.FNAME
        assert header[4:8] == b"\0\0\0\0", f"{shard.name}: MTIME set"
