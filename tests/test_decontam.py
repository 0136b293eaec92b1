"""Decontamination (lmforge.data.decontam): the corpus stage and sft-data drop, report or ignore
training documents that share a word 13-gram with an evaluation item.

The evaluation sets are small made-up fixtures written here in each dataset's hub schema,
under a temporary mirror laid out as LMFORGE_MIRROR expects; never copies of the real sets.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmforge.artifacts import load_manifest
from lmforge.cli import main as cli_main
from lmforge.data.decontam import DecontaminationParams, NgramIndex, build_index, ngram_hashes, words_of

ROOT = Path(__file__).resolve().parents[1]

# A made-up WikiText page, tokenised as WikiText is (" @-@ ", " @,@ ", spaced punctuation).
PAGE_TITLE = "Harbour of Vell"
PAGE = (f" = {PAGE_TITLE} = \n \n The Harbour of Vell is a small tidal port on the eastern shore of the "
        "Sorrel estuary , built in 1 @,@ 642 by the merchants of the Lower Vell guild . Its stone quay @-@ wall "
        "was rebuilt twice after the great storm surges of the winter , and the port still handles timber , "
        "salt and the painted ceramic tiles for which the region is known . \n")
# The same passage as a Wikipedia article would write it: other case, punctuation and number format.
PLANTED = ("History. THE HARBOUR OF VELL is a small tidal port on the eastern shore of the Sorrel Estuary, built in "
           "1,642 by the merchants of the Lower Vell guild. Its stone quay-wall was rebuilt twice after storms.")
PIQA_GOAL = "To keep a cast iron skillet from rusting after washing it by hand in warm soapy water"
BOOLQ_PASSAGE = ("The northern lighthouse keepers of the Amber Coast were required to record the colour of the "
                 "evening sky in a bound ledger every night from the spring equinox until the first frost.")
# Common phrases that also occur (shorter than 13 words each) inside the evaluation items.
COMMON = ["it is one of the most important", "on the eastern shore of the", "after washing it by hand",
          "in the winter", "and the port still handles", "the first frost of the year", "What is the capital of France?"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def eval_mirror(tmp_path_factory) -> Path:
    """WikiText-2 test, BoolQ validation and PIQA validation, in their hub schemas."""
    root = tmp_path_factory.mktemp("eval_mirror")
    other_page = " = Quiet Fields = \n \n " + " ".join(f"word{i}" for i in range(60)) + " . \n"
    write_jsonl(root / "EleutherAI/wikitext_document_level/wikitext-2-raw-v1/test/test-00000.jsonl.gz",
                [{"page": PAGE}, {"page": other_page}])
    write_jsonl(root / "aps/super_glue/boolq/validation/validation-00000.jsonl.gz",
                [{"question": "did keepers record the sky colour", "passage": BOOLQ_PASSAGE, "idx": 0, "label": 1},
                 {"question": "is the sky green", "passage": "No.", "idx": 1, "label": 0}])
    write_jsonl(root / "baber/piqa/validation/validation-00000.jsonl.gz",
                [{"goal": PIQA_GOAL, "sol1": "Dry it on the stove and oil it lightly.", "sol2": "Leave it wet.",
                  "label": 0}])
    return root


def training_rows(extra: list[str]) -> list[dict]:
    clean = [f"Document {i}: " + " ".join(COMMON) + f" and a sentence about topic number {i} for variety."
             for i in range(6)]
    return [{"text": t} for t in clean + extra]


def corpus_config(tmp_path: Path, data: Path, mode: str | None) -> str:
    cfg = {"sources": [{"name": "local", "type": "local", "paths": [str(data)], "tokens": 1_000_000}],
           "processing_params": {"min_chars": 20}}
    if mode is not None:
        cfg["decontamination"] = {"mode": mode}
    path = tmp_path / f"corpus_{mode}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def shard_texts(out: Path) -> list[str]:
    return [json.loads(line)["text"] for p in sorted((out / "shards").glob("*.jsonl.gz"))
            for line in gzip.open(p, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("planted")
    return write_jsonl(tmp / "train.jsonl.gz", training_rows([
        "Intro to a long article. " + PLANTED + " Later sections talk about other things entirely.",
        "Cleaning tips: " + PIQA_GOAL.lower() + ", dry it at once.",
    ]))


def run_corpus(tmp_path: Path, data: Path, mode: str | None, mirror: Path) -> dict:
    out = tmp_path / f"out_{mode}"
    assert cli_main(["corpus", "--config", corpus_config(tmp_path, data, mode), "--output-dir", str(out),
                     "--mirror", str(mirror), "--log-level", "WARNING"]) == 0
    return load_manifest(out, "corpus")["figures"] | {"_texts": shard_texts(out)}


def test_planted_test_page_is_dropped_and_counted(tmp_path, planted, eval_mirror, capsys):
    fig = run_corpus(tmp_path, planted, "drop", eval_mirror)
    d = fig["decontamination"]
    assert fig["documents"] == 6 and len(fig["_texts"]) == 6
    assert not any("Vell" in t or "skillet" in t for t in fig["_texts"])
    assert d["mode"] == "drop" and d["ngram"] == 13
    assert d["documents_dropped"] == d["contaminated_documents"] == 2 and d["documents_checked"] == 8
    src = d["sources"]["local"]
    assert src.pop("examples")[0].startswith("Intro to a long article. History. THE HARBOUR OF VELL")
    assert src == {"checked": 8, "contaminated": 2, "dropped": 2, "by_eval_set": {"piqa": 1, "wikitext2_test": 1}}
    wiki = d["eval_sets"]["wikitext2_test"]
    assert wiki["items"] == 2 and wiki["items_touched"] == 1 and wiki["touched"] == [PAGE_TITLE]
    assert d["eval_sets"]["piqa"]["items_touched"] == 1
    assert d["eval_sets"]["boolq_validation"]["items_touched"] == 0
    assert d["eval_sets"]["boolq_validation"]["items_too_short"] == 1  # "No." holds no 13-gram
    assert d["eval_items_touched"] == 2
    # sets that the mirror lacks are listed, not fatal
    assert "hellaswag" in d["missing"] and "Rowan/hellaswag" in d["missing"]["hellaswag"]
    assert "2 contaminated documents, 2 dropped" in capsys.readouterr().out
    from lmforge.pipeline.report import write_report

    report = write_report(tmp_path).read_text()  # REPORT.md's evaluation section names it too
    assert "`out_drop` (corpus, drop, 13-grams): 2 contaminated documents (2 dropped); per source: local 2/8" in report
    assert "wikitext2_test 1/2 items (1 documents)" in report


def test_report_mode_counts_but_keeps(tmp_path, planted, eval_mirror):
    fig = run_corpus(tmp_path, planted, "report", eval_mirror)
    d = fig["decontamination"]
    assert fig["documents"] == 8 and any("Vell" in t for t in fig["_texts"])
    assert d["contaminated_documents"] == 2 and d["documents_dropped"] == 0


def test_off_mode_checks_nothing(tmp_path, planted, eval_mirror):
    for mode in ("off", None):  # off is also the schema default (the plan's configs say drop)
        fig = run_corpus(tmp_path, planted, mode, eval_mirror)
        assert fig["documents"] == 8 and fig["decontamination"] == {"mode": "off"}


def test_no_false_positive_on_short_common_phrases(eval_mirror):
    index = build_index(DecontaminationParams(mode="drop"), eval_mirror)
    assert len(index.hashes) > 0
    # every common phrase (each under 13 words) also occurs inside an evaluation item
    text = " ".join(COMMON * 3) + " " + " ".join(reversed(COMMON))
    assert index.check(text) is None
    # 12 consecutive words of the page are not enough, 13 are
    words = words_of(PAGE)
    assert index.check(" ".join(words[10:22])) is None
    assert index.check(" ".join(words[10:23])) is not None
    # an evaluation item shorter than n words is never matched, and is counted as unchecked
    small = NgramIndex(13)
    small.add_set("sft_eval_prompts", "test", [("capital", "What is the capital of France?")])
    small.freeze()
    assert small.sets["sft_eval_prompts"].too_short == 1
    assert small.check("Quiz night. What is the capital of France? Everyone knew it was Paris, of course.") is None


def test_hashing_is_exact_on_the_evaluation_side():
    """Windows are hashed in place: the hash of words[i:i+n] equals the hash of that window alone."""
    rng = np.random.default_rng(0)
    values = rng.integers(1, 2 ** 63, size=40, dtype=np.uint64)
    grams = ngram_hashes(values, 13)
    assert len(grams) == 28
    assert all(ngram_hashes(values[i:i + 13], 13)[0] == grams[i] for i in range(28))
    assert len(set(grams.tolist())) == 28


def test_mode_and_sets_are_validated(tmp_path, planted, capsys):
    for bad, needle in (({"mode": "delete"}, "decontamination.mode"),
                        ({"eval_sets": ["wikitext2_test", "mmlu"]}, "unknown evaluation set 'mmlu'"),
                        ({"ngram": 2}, "decontamination.ngram")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"sources": [{"name": "s", "type": "local", "paths": [str(planted)],
                                                 "tokens": 100}], "decontamination": bad}))
        assert cli_main(["corpus", "--config", str(path), "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def alpaca_with_a_boolq_passage(tmp_path: Path) -> Path:
    """20 clean Alpaca rows and one whose input is BoolQ's passage."""
    rows = [{"instruction": f"Say something about item {i}.", "input": "", "output": f"Item {i} is fine."}
            for i in range(20)]
    rows.append({"instruction": "Summarise this passage.", "input": BOOLQ_PASSAGE, "output": "Sky colours."})
    return write_jsonl(tmp_path / "alpaca.jsonl.gz", rows)


def test_sft_data_drops_contaminated_conversations(tmp_path, tiny_tokenizer, eval_mirror):
    src = alpaca_with_a_boolq_passage(tmp_path)
    out = tmp_path / "sft"
    assert cli_main(["sft-data", "--config", str(ROOT / "config/sft/datasets/alpaca_chatml.json"),
                     "--tokenizer_dir", str(tiny_tokenizer), "--output_dir", str(out), "--input-files", str(src),
                     "--mirror", str(eval_mirror), "--log-level", "WARNING"]) == 0
    fig = load_manifest(out, "sft-data")["figures"]
    assert fig["skipped"].get("contaminated") == 1
    assert sum(fig["examples"].values()) == 20
    d = fig["decontamination"]
    assert d["mode"] == "drop" and d["documents_dropped"] == 1
    assert d["eval_sets"]["boolq_validation"]["touched"] == ["idx 0"]


def test_sft_data_is_redone_when_an_evaluation_set_appears_in_the_mirror(tmp_path, tiny_tokenizer, eval_mirror):
    """Data screened while BoolQ was missing are out of date once BoolQ is in the mirror."""
    src = alpaca_with_a_boolq_passage(tmp_path)
    mirror = tmp_path / "mirror"
    shutil.copytree(eval_mirror / "EleutherAI", mirror / "EleutherAI")  # WikiText only, no BoolQ yet
    out = tmp_path / "sft"
    argv = ["sft-data", "--config", str(ROOT / "config/sft/datasets/alpaca_chatml.json"), "--tokenizer_dir",
            str(tiny_tokenizer), "--output_dir", str(out), "--input-files", str(src), "--mirror", str(mirror),
            "--log-level", "WARNING"]
    assert cli_main(argv) == 0
    first = load_manifest(out, "sft-data")["figures"]
    assert "boolq_validation" in first["decontamination"]["missing"] and "contaminated" not in first["skipped"]

    shutil.copytree(eval_mirror / "aps", mirror / "aps")
    assert cli_main(argv) == 0  # not "up to date": rebuilt, now screened against BoolQ too
    again = load_manifest(out, "sft-data")["figures"]
    assert "boolq_validation" not in again["decontamination"]["missing"]
    assert again["skipped"].get("contaminated") == 1


def test_data_identity_follows_the_sft_prompts_file_from_any_directory(tmp_path, monkeypatch):
    from lmforge.data.decontam import DecontaminationParams, data_identity

    monkeypatch.chdir(tmp_path)  # the shipped default is found outside the checkout's root
    shipped = data_identity(DecontaminationParams(mode="drop", eval_sets=["sft_eval_prompts"]), None)
    assert set(shipped["sft_eval_prompts"]) == {"sha256"}
    own = tmp_path / "eval[v2].json"  # glob characters in the name
    own.write_text(json.dumps({"smoke": {"cases": [{"name": "a", "prompt": "Say hi."}]}}))
    params = DecontaminationParams(mode="drop", eval_sets=["sft_eval_prompts"], sft_eval_config=str(own))
    before = data_identity(params, None)
    own.write_text(json.dumps({"smoke": {"cases": [{"name": "a", "prompt": "Say hello."}]}}))
    assert data_identity(params, None) != before != shipped


@pytest.mark.realdata
@pytest.mark.slow
def test_real_mirror_wikipedia_sample(tmp_path, mirror):
    """The issue's claim, on the real mirror: 5 Wikipedia articles share 13-grams with
    1 WikiText-2 test page and 3 BoolQ items (measured 2026-11-30, docs/corpus.md)."""
    cfg = tmp_path / "wiki.json"
    cfg.write_text(json.dumps({"sources": [{"name": "wikipedia", "type": "hf", "dataset": "wikimedia/wikipedia",
                                            "config": "20231101.en", "split": "train", "tokens": 100_000_000}],
                               "decontamination": {"mode": "drop"}}))
    out = tmp_path / "out"
    assert cli_main(["corpus", "--config", str(cfg), "--output-dir", str(out), "--mirror", str(mirror),
                     "--log-level", "WARNING"]) == 0
    d = load_manifest(out, "corpus")["figures"]["decontamination"]
    assert d["documents_dropped"] == 5
    assert d["eval_sets"]["wikitext2_test"]["items_touched"] == 1
    assert d["eval_sets"]["boolq_validation"]["items_touched"] == 3


def test_counts_survive_the_cache_and_a_mode_change_rebuilds_it(tmp_path, planted, eval_mirror):
    out = tmp_path / "cached"

    def build(mode: str) -> dict:
        assert cli_main(["corpus", "--config", corpus_config(tmp_path, planted, mode), "--output-dir", str(out),
                         "--mirror", str(eval_mirror), "--use-cache", "--force", "--log-level", "WARNING"]) == 0
        return load_manifest(out, "corpus")["figures"]

    first = build("drop")
    again = build("drop")  # every source from its cache: the counts come from the saved state
    assert again["decontamination"]["sources"] == first["decontamination"]["sources"]
    assert again["decontamination"]["eval_sets"] == first["decontamination"]["eval_sets"]
    assert again["documents"] == 6
    assert build("report")["documents"] == 8  # another mode: the cache is not reused
