"""Every stage that reads hub data, run through the CLI on a mirror full of malformed records.

The mirror is written here, under tmp_path, in the hub layout `LMFORGE_MIRROR` expects
(`org/name/[config/][split/]files`), for every dataset of the user's plan: C4,
Gutenberg, FineWeb-Edu, Wikipedia (corpus), WikiText-2 and BoolQ (eval, eval-sft),
Alpaca and OASST1 (sft-data). Each dataset holds a few good rows with realistic text
and, around them, what real dumps contain when something went wrong: truncated JSON,
invalid UTF-8, arrays/numbers/strings instead of objects, null/missing/non-string
fields, empty and whitespace-only texts, a line of several MB, wrong types, a BOM,
CRLF line ends, an empty file, a parquet file with an extra column.

Expected behaviour (DESIGN.md, "Errors and bad input"): bad records are skipped and
counted by reason in the manifest/results, the run succeeds on the good ones; a source
that yields nothing usable, or a file that cannot be read at all (a gzip cut short),
ends with one `error:` line, exit code 2, no traceback and no manifest.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GIANT_CHARS = 3_000_000  # one JSON line of several MB

# ---------------------------------------------------------------- realistic rows

WEB_PARAGRAPHS = [
    "Beginners BBQ Class Taking Place in Missoula! Do you want to get better at making delicious BBQ? You will have "
    "the opportunity, put this on your calendar now. Thursday, September 22nd join World Class BBQ Champion, Tony "
    "Balay from Lonestar Smoke Rangers. He will be teaching a beginner level class for everyone who wants to get "
    "better with their culinary skills.",
    "Discussion in 'Mac OS X Lion (10.7)' started by axboi87, Jan 20, 2012. I've got a 500gb internal drive and a "
    "240gb SSD. When trying to restore using disk utility i'm given the error \"Not enough space on disk ____ to "
    "restore\" But I shouldn't have to do that!!! Any ideas or workarounds before resorting to the above?",
    "Foil plaid lycra and spandex shortall with metallic slinky insets. Attached metallic elastic belt with O-ring. "
    "Headband included. Great hip hop or jazz dance costume. Made in the USA. The fabric stretches in every "
    "direction, so dancers can move freely while the metallic panels catch the stage lights at every turn.",
    "How many backlinks per day for new site? Discussion in 'Black Hat SEO' started by Omoplata, Dec 3, 2010. "
    "1) for a newly created site, what's the max # backlinks per day I should do to be safe? 2) how long do I "
    "have to let my site age before I can start making more blinks? I did about 6000 forum profiles every 24 hours.",
]
EDU_PARAGRAPHS = [
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize "
    "foods from carbon dioxide and water. Photosynthesis in plants generally involves the green pigment "
    "chlorophyll and generates oxygen as a byproduct. Students can observe it by placing pondweed in water.",
    "The water cycle describes how water evaporates from the surface of the earth, rises into the atmosphere, "
    "cools and condenses into clouds, and falls again to the surface as precipitation. The water falling on land "
    "collects in rivers and lakes, soil, and porous layers of rock, and much of it flows back into the oceans.",
    "Fractions represent parts of a whole. The number on the bottom, the denominator, tells how many equal parts "
    "the whole is divided into, and the number on top, the numerator, tells how many of those parts are being "
    "counted. Teachers often begin with pizzas and chocolate bars because children can see the equal pieces.",
]
WIKI_ARTICLES = [
    "Church (building). A church building, church house, or simply church, is a building used for Christian "
    "worship services and other Christian religious activities. The earliest identified Christian church is a "
    "house church founded between 233 and 256. From the 11th through the 14th centuries, a wave of cathedral "
    "building and the construction of smaller parish churches occurred across Western Europe.",
    "Connie Young Yu (born 1941) is a Chinese American writer, historian, and lecturer. She has written about "
    "the history of Chinese Americans and Asian Americans, and her work on the immigration station at Angel "
    "Island helped preserve the poems that detainees carved into its walls during the early twentieth century.",
    "Riverside Cemetery Gatehouse is a historic office building located in Riverside Cemetery. It was built in "
    "1880, and is a one-story, brick building in the Gothic Revival style. It features a steeply pitched roof, "
    "pointed arch openings and decorative bargeboards. It was listed on the National Register of Historic Places.",
]
BOOK = ("CHAPTER I. It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be on his first "
        "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he "
        "is considered the rightful property of some one or other of their daughters.\n\n")
WIKITEXT_PAGES = [
    " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor . He had a guest "
    "@-@ starring role on the television series The Bill in 2000 . \n = = Career = = \n In 2006 , Boulter "
    "starred alongside Whishaw in the play Citizenship written by Mark Ravenhill . \n",
    " = Du Fu = \n Du Fu ( 712 – 770 ) was a prominent Chinese poet of the Tang dynasty . Along with Li Bai , he "
    "is frequently called the greatest of the Chinese poets . \n",
    " = Kiss You ( One Direction song ) = \n \" Kiss You \" is a song recorded by English @-@ Irish boy band One "
    "Direction for their second studio album , Take Me Home ( 2012 ) . \n",
]
BOOLQ_ROWS = [
    {"question": "does ethanol take more energy make that produces",
     "passage": "All biomass goes through at least some of these steps: it needs to be grown, collected, dried, "
                "fermented, distilled, and burned. All of these steps require resources and an infrastructure.",
     "idx": 0, "label": 0},
    {"question": "is house tax and property tax are same",
     "passage": "Property tax or 'house tax' is a local tax on buildings, along with appurtenant land. It is "
                "imposed on the Possessor (not the custodian of property as per 1978, 44th amendment).",
     "idx": 1, "label": 1},
    {"question": "is pain experienced in a missing body part or paralyzed area",
     "passage": "Phantom pain sensations are described as perceptions that an individual experiences relating "
                "to a limb or an organ that is not physically part of the body.",
     "idx": 2, "label": 1},
    {"question": "is harry potter and the escape from gringotts a roller coaster ride",
     "passage": "Harry Potter and the Escape from Gringotts is an indoor steel roller coaster at Universal "
                "Studios Florida, a theme park located within the Universal Orlando Resort.",
     "idx": 3, "label": 1},
]
ALPACA_ROWS = [
    ("Give three tips for staying healthy.", "",
     "1. Eat a balanced diet and make sure to include plenty of fruits and vegetables.\n2. Exercise regularly to "
     "keep your body active and strong.\n3. Get enough sleep and maintain a consistent sleep schedule."),
    ("What are the three primary colors?", "", "The three primary colors are red, blue, and yellow."),
    ("Describe the structure of an atom.", "",
     "An atom is made up of a nucleus, which contains protons and neutrons, surrounded by electrons that travel "
     "in orbits around the nucleus."),
    ("Identify the odd one out.", "Twitter, Instagram, Telegram", "Telegram"),
    ("Translate the sentence into French.", "Thank you very much.", "Merci beaucoup."),
]


def alpaca_record(instruction: str, extra: str, output: str) -> dict:
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes "
              f"the request.\n\n### Instruction:\n{instruction}\n\n")
    if extra:
        prompt += f"### Input:\n{extra}\n\n"
    return {"instruction": instruction, "input": extra, "output": output, "text": prompt + f"### Response:\n{output}"}


def oasst_message(mid: str, parent: str | None, role: str, text: str, tree: str, rank=None, **extra) -> dict:
    record = {"message_id": mid, "parent_id": parent, "text": text, "role": role, "lang": "en", "review_count": 3,
              "review_result": True, "deleted": False, "rank": rank, "synthetic": False, "model_name": None,
              "message_tree_id": tree, "tree_state": "ready_for_export"}
    record.update(extra)
    return record


def oasst_rows() -> list[dict]:
    """Three good trees, then every way a tree can be broken."""
    q = "How can I find the best 401k plan for my needs?"
    a = "The first step is to research your options: compare fees, the fund choices and the employer match."
    rows = [
        oasst_message("t1-q", None, "prompter", q, "t1"),
        oasst_message("t1-a0", "t1-q", "assistant", a, "t1", rank=0),
        oasst_message("t1-a1", "t1-q", "assistant", "Ask your employer for the plan documents first.", "t1", rank="1"),
        oasst_message("t1-a2", "t1-q", "assistant", "Pick any plan; they are all the same.", "t1", rank="worst"),
        oasst_message("t2-q", None, "prompter", "What is the capital of France?", "t2"),
        oasst_message("t2-a", "t2-q", "assistant", "The capital of France is Paris.", "t2", rank=0),
        oasst_message("t2-q2", "t2-a", "prompter", "And how many people live there?", "t2"),
        oasst_message("t2-a2", "t2-q2", "assistant", "About 2.1 million people live in the city proper.", "t2", rank=0),
        oasst_message("t3-q", None, "prompter", "Write a haiku about the sea.", "t3"),
        oasst_message("t3-a", "t3-q", "assistant", "Grey waves fold and break,\nsalt wind combs the empty shore,\n"
                                                     "gulls argue with tide.", "t3", rank=0),
        # duplicate id: the first message of that id wins, the second is counted
        oasst_message("t3-a", "t3-q", "assistant", "A duplicate that must not replace the reply.", "t3", rank=1),
        # a reply whose parent is not in the file, with a child of its own
        oasst_message("lost-a", "no-such-message", "assistant", "I answer a question nobody kept.", "t4", rank=0),
        oasst_message("lost-q", "lost-a", "prompter", "Follow-up under the lost reply.", "t4"),
        # two messages that are each other's parent, and one that is its own parent
        oasst_message("cyc-a", "cyc-b", "prompter", "Which came first?", "t5"),
        oasst_message("cyc-b", "cyc-a", "assistant", "The chicken, then the egg.", "t5", rank=0),
        oasst_message("self", "self", "prompter", "I am my own parent.", "t6"),
        oasst_message("t7-q", None, "moderator", "An unknown role.", "t7"),
        oasst_message("t8-q", None, "prompter", "A deleted question.", "t8", deleted=True),
        oasst_message("t9-q", None, "prompter", "A question without a language.", "t9"),
    ]
    del rows[-1]["lang"]
    rows.append(oasst_message("t10-q", None, "prompter", None, "t10"))  # null text
    return rows


# ---------------------------------------------------------------- malformed files

def bad_lines(text_field: str) -> list[bytes]:
    """Lines every JSON-lines reader must survive; each is one skipped record."""
    return [
        b'{"' + text_field.encode() + b'": "a record cut in the midd',  # truncated JSON
        b'{"' + text_field.encode() + b'": "caf\xe9 cr\xe8me, latin-1 bytes in a UTF-8 file"}',  # invalid UTF-8
        b'["an", "array", "instead", "of", "an", "object"]',
        b"42",
        b'"just a string"',
        b"null",
    ]


def write_jsonl(path: Path, rows: list, *, gz: bool = True, bom: bool = False, crlf: bool = False) -> Path:
    """Rows are dicts (serialised) or raw bytes (written as they are)."""
    end = b"\r\n" if crlf else b"\n"
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + end for r in rows)
    data = (b"\xef\xbb\xbf" if bom else b"") + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def text_rows(texts: list[str], field: str = "text", **extra) -> list[dict]:
    return [{field: t, **extra} for t in texts]


def field_problems(field: str) -> list[dict]:
    """Objects whose text field is unusable."""
    return [{field: None}, {"other": "no text field at all"}, {field: 12345}, {field: ["a", "list"]},
            {field: ""}, {field: "   \n\t  "}]


def write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def build_mirror(root: Path) -> Path:
    """A malformed mirror of every dataset the plan reads; returns its root."""
    # C4: BOM + CRLF, every bad line and field, a giant one-line record, an empty file.
    c4 = root / "allenai/c4/en/train"
    giant = {"text": "word " * (GIANT_CHARS // 5), "url": "https://example.com/minified"}
    write_jsonl(c4 / "c4-train.00000-of-01024.json.gz",
                [text_rows(WEB_PARAGRAPHS[:1])[0], *bad_lines("text"), *field_problems("text"), giant,
                 *text_rows(WEB_PARAGRAPHS[1:], timestamp="2019-04-25 12:57:54")], bom=True, crlf=True)
    (c4 / "c4-train.00001-of-01024.json.gz").write_bytes(b"")  # an empty file
    write_jsonl(c4 / "c4-train.00002-of-01024.json.gz", [])  # a valid gzip holding nothing
    # Gutenberg: one good book among bad lines, and a parquet file with an extra column.
    gutenberg = root / "manu/project_gutenberg/en"
    write_jsonl(gutenberg / "en-00000.jsonl.gz", [*bad_lines("text"), {"id": "1342", "text": BOOK * 5},
                                                  *field_problems("text")])
    write_parquet(gutenberg / "en-00001.parquet", {"id": ["84"], "text": [BOOK.replace("CHAPTER I", "Letter 1") * 4],
                                                   "downloads": [12345]})
    # FineWeb-Edu: plain (uncompressed) JSON lines with CRLF, a whitespace-only file.
    fineweb = root / "HuggingFaceFW/fineweb-edu/sample-10BT/train"
    write_jsonl(fineweb / "000_00000.jsonl", [*text_rows(EDU_PARAGRAPHS, dump="sample-10BT", language="en"),
                                              *bad_lines("text"), *field_problems("text")], gz=False, crlf=True)
    (fineweb / "000_00001.jsonl").write_text("\n   \n\n")
    # Wikipedia: good articles, bad lines, a BOM.
    wiki = root / "wikimedia/wikipedia/20231101.en/train"
    write_jsonl(wiki / "train-00000.jsonl.gz", [*bad_lines("text"), *text_rows(WIKI_ARTICLES, url=""),
                                                *field_problems("text")], bom=True)
    # WikiText-2: pages among bad lines and bad `page` fields.
    wikitext = root / "EleutherAI/wikitext_document_level/wikitext-2-raw-v1/test"
    write_jsonl(wikitext / "test-00000.jsonl.gz", [{"page": WIKITEXT_PAGES[0]}, *bad_lines("page"),
                                                   *field_problems("page"), *text_rows(WIKITEXT_PAGES[1:], "page")],
                bom=True, crlf=True)
    # BoolQ: good examples, then wrong labels, missing idx, missing question/passage.
    boolq = root / "aps/super_glue/boolq/validation"
    good = BOOLQ_ROWS
    broken = [{**good[0], "label": "yes"}, {**good[1], "label": 2}, {**good[2], "label": None},
              {**good[3], "label": True}, {k: v for k, v in good[0].items() if k != "label"},
              {**good[1], "question": None}, {**good[2], "passage": "  "}, {**good[3], "question": 7}]
    no_idx = {k: v for k, v in good[3].items() if k != "idx"}
    write_jsonl(boolq / "validation-00000.jsonl.gz", [*good[:3], *bad_lines("question"), *broken, no_idx], crlf=True)
    # Alpaca: good rows, bad lines, wrong field types.
    alpaca = root / "tatsu-lab/alpaca/train"
    good_alpaca = [alpaca_record(*row) for row in ALPACA_ROWS]
    broken_alpaca = [{**good_alpaca[0], "instruction": None}, {**good_alpaca[1], "output": 3},
                     {k: v for k, v in good_alpaca[2].items() if k != "output"}, {**good_alpaca[3], "output": " \n "},
                     {**good_alpaca[4], "input": ["not", "text"]}]
    write_jsonl(alpaca / "train-00000.jsonl.gz", [*good_alpaca[:3], *bad_lines("instruction"), *broken_alpaca,
                                                  *good_alpaca[3:]], bom=True)
    # OASST1: broken trees (see oasst_rows) among bad lines.
    oasst = root / "OpenAssistant/oasst1/train"
    write_jsonl(oasst / "train-00000.jsonl.gz", [*oasst_rows()[:5], *bad_lines("text"), *oasst_rows()[5:]], crlf=True)
    return root


def truncated_gzip(path: Path, texts: list[str]) -> Path:
    """A .json.gz cut in the middle of its deflate stream, as an interrupted download leaves it."""
    data = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts).encode(), mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def build_broken_mirror(root: Path) -> Path:
    """The malformed mirror, plus files no run can get past: a C4 gzip cut short after a good
    file, a Wikipedia, a WikiText and an Alpaca holding no usable record, a BoolQ gzip cut short."""
    build_mirror(root)
    truncated_gzip(root / "allenai/c4/en/train/c4-train.00003-of-01024.json.gz", WEB_PARAGRAPHS * 200)
    for path, field in [("wikimedia/wikipedia/20231101.en/train/train-00000.jsonl.gz", "text"),
                        ("EleutherAI/wikitext_document_level/wikitext-2-raw-v1/test/test-00000.jsonl.gz", "page"),
                        ("tatsu-lab/alpaca/train/train-00000.jsonl.gz", "instruction")]:
        write_jsonl(root / path, [*bad_lines(field), *field_problems(field)])
    boolq = root / "aps/super_glue/boolq/validation/validation-00000.jsonl.gz"
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in BOOLQ_ROWS * 300).encode(), mtime=0)
    boolq.write_bytes(data[: len(data) // 2])
    return root


# ---------------------------------------------------------------- running the CLI

@pytest.fixture(scope="module")
def mirrors(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("malformed_mirrors")
    return {"malformed": build_mirror(base / "malformed"), "broken": build_broken_mirror(base / "broken")}


def lmforge(mirror: Path, *argv: str) -> subprocess.CompletedProcess:
    """`python -m lmforge.cli ...` as a user runs it, reading hub data from `mirror`."""
    env = {**os.environ, "LMFORGE_MIRROR": str(mirror), "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *argv, "--log-level", "WARNING"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_clean_failure(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> str:
    """Exit 2, exactly one `error:` line holding every needle, no traceback, no manifest."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (out / "manifest.json").exists()
    return errors[0]


def succeeded(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# What every bad_lines() + field_problems() block costs, by reason, in the corpus.
READER_SKIPS = {"malformed_json": 1, "invalid_utf8": 1, "not_an_object": 4}
FIELD_SKIPS = {"null_text": 1, "missing_text_field": 1, "non_string_text": 2, "empty": 2}
CORPUS = "config/pretrain/corpus/tokenizer_training_mix.json"  # the plan's config, verbatim


# ---------------------------------------------------------------- corpus (plan steps 1 and 3)

def test_corpus_skips_and_counts_every_bad_record(tmp_path, mirrors):
    out = tmp_path / "tokenizer_corpus"
    proc = succeeded(lmforge(mirrors["malformed"], "corpus", "--config", CORPUS, "--output-dir", str(out),
                             "--use-cache", "--set", "sources.c4.tokens=100000"))
    figures = manifest(out)["figures"]
    sources = figures["sources"]
    assert {name: s["documents"] for name, s in sources.items()} == {
        "c4": 4, "gutenberg": 2, "fineweb_edu": 3, "wikipedia": 3}  # gutenberg: the book + the parquet row
    expected = {**READER_SKIPS, **FIELD_SKIPS}
    assert sources["c4"]["skipped"] == {**expected, "giant_line": 1}
    for name in ("gutenberg", "fineweb_edu", "wikipedia"):
        assert sources[name]["skipped"] == expected, name
    assert figures["skipped"]["not_an_object"] == 16
    assert "Skipped records:" in proc.stdout and "giant_line=1" in proc.stdout
    texts = []
    for shard in (out / "shards").glob("*.jsonl.gz"):
        texts += [json.loads(line)["text"] for line in gzip.open(shard, "rt", encoding="utf-8")]
    assert len(texts) == 12
    assert WEB_PARAGRAPHS[0] in texts  # the first record, behind a BOM and with CRLF, is kept
    assert not any("\ufeff" in t or "\r" in t for t in texts)


def test_corpus_analyze_only_samples_through_bad_records(tmp_path, mirrors):
    out = tmp_path / "plan_only"
    succeeded(lmforge(mirrors["malformed"], "corpus", "--config", CORPUS, "--output-dir", str(out), "--analyze-only"))
    rows = {r["name"]: r for r in json.loads((out / "plan.json").read_text())["sources"]}
    assert rows["c4"]["sample_documents"] == 4
    assert rows["c4"]["sample_skipped"]["malformed_json"] == 1
    assert not (out / "manifest.json").exists()


def test_corpus_truncated_gzip_is_one_clear_error(tmp_path, mirrors):
    out = tmp_path / "corpus"
    proc = lmforge(mirrors["broken"], "corpus", "--config", CORPUS, "--output-dir", str(out))
    assert_clean_failure(proc, out, "source 'c4'", "c4-train.00003-of-01024.json.gz")
    assert not (out / "shards").exists()


def test_corpus_source_without_usable_record_is_one_clear_error(tmp_path, mirrors):
    config = json.loads((REPO / CORPUS).read_text())
    config["sources"] = [s for s in config["sources"] if s["name"] == "wikipedia"]
    path = tmp_path / "wikipedia_only.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "corpus"
    proc = lmforge(mirrors["broken"], "corpus", "--config", str(path), "--output-dir", str(out))
    error = assert_clean_failure(proc, out, "source 'wikipedia'", "no usable documents")
    assert "malformed_json=1" in error  # the reasons are in the message
    assert not (out / "shards").exists()


# ---------------------------------------------------------------- eval (plan step 6)

def eval_args(model: Path, tokenizer: Path, out: Path) -> list[str]:
    return ["eval", "--model_path", str(model), "--tokenizer_path", str(tokenizer), "--output_dir", str(out),
            "--device", "cpu", "--set", "generation.enabled=false", "--set", "runtime.max_length=64"]


def test_eval_skips_and_counts_bad_wikitext_and_boolq_records(tmp_path, mirrors, tiny_base_model, tiny_tokenizer):
    out = tmp_path / "eval"
    succeeded(lmforge(mirrors["malformed"], *eval_args(tiny_base_model, tiny_tokenizer, out)))
    results = json.loads((out / "results.json").read_text())
    wikitext, boolq = results["wikitext"], results["boolq"]
    assert wikitext["documents"] == 3  # the first page sits behind a BOM
    assert wikitext["skipped"] == {**READER_SKIPS, "missing_page": 4, "empty_page": 2}
    assert boolq["examples"] == 4  # 3 good + one without idx
    assert boolq["skipped"] == {**READER_SKIPS, "bad_label": 4, "missing_label": 1, "missing_question": 2,
                                "missing_passage": 1}
    items = [json.loads(line) for line in (out / "boolq_items.jsonl").read_text().splitlines()]
    assert [i["label"] for i in items] == [0, 1, 1, 1]
    assert manifest(out)["stage"] == "eval"


def test_eval_without_usable_wikitext_is_one_clear_error(tmp_path, mirrors, tiny_base_model, tiny_tokenizer):
    out = tmp_path / "eval"
    proc = lmforge(mirrors["broken"], *eval_args(tiny_base_model, tiny_tokenizer, out))
    assert_clean_failure(proc, out, "no WikiText document")
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------- sft-data (plan step 7)

def sft_data_args(name: str, tokenizer: Path, out: Path) -> list[str]:
    return ["sft-data", "--config", f"config/sft/datasets/{name}_chatml.json", "--tokenizer_dir", str(tokenizer),
            "--output_dir", str(out), "--set", "processing.val_fraction=0.2"]


def test_sft_data_alpaca_skips_and_counts_bad_records(tmp_path, mirrors, tiny_tokenizer):
    out = tmp_path / "alpaca_chatml"
    proc = succeeded(lmforge(mirrors["malformed"], *sft_data_args("alpaca", tiny_tokenizer, out)))
    figures = manifest(out)["figures"]
    assert sum(figures["examples"].values()) == 5
    assert figures["skipped"] == {**READER_SKIPS, "missing_field": 3, "empty": 1, "bad_input_field": 1}
    first = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert "Give three tips for staying healthy." in first["text"]  # the record behind the BOM
    assert "bad_input_field=1" in proc.stdout


def test_sft_data_oasst1_survives_broken_trees(tmp_path, mirrors, tiny_tokenizer):
    out = tmp_path / "oasst1_chatml"
    succeeded(lmforge(mirrors["malformed"], *sft_data_args("oasst1", tiny_tokenizer, out)))
    figures = manifest(out)["figures"]
    assert sum(figures["examples"].values()) == 3  # trees t1, t2 (two turns), t3
    assert figures["skipped"] == {
        **READER_SKIPS, "missing_field": 1, "bad_role": 1, "deleted": 1, "language_filtered": 1,
        "duplicate_message_id": 1, "orphan_message": 1, "orphan_subtree": 1, "parent_cycle": 3}
    texts = [json.loads(line)["text"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert any("compare fees" in t for t in texts)  # rank 0 beats rank "1" and the unrankable "worst"
    assert any("2.1 million" in t for t in texts)
    assert any("gulls argue" in t for t in texts) and not any("duplicate" in t for t in texts)


def test_sft_data_without_usable_record_is_one_clear_error(tmp_path, mirrors, tiny_tokenizer):
    out = tmp_path / "alpaca_chatml"
    proc = lmforge(mirrors["broken"], *sft_data_args("alpaca", tiny_tokenizer, out))
    assert_clean_failure(proc, out, "alpaca_chatml", "no usable conversation")
    assert not list(out.glob("*.bin"))


# ---------------------------------------------------------------- eval-sft (plan step 9, BoolQ part)

def eval_sft_args(model: Path, tokenizer: Path, out: Path) -> list[str]:
    return ["eval-sft", "--config", "config/evaluation/sft_standard.json", "--model_path", str(model),
            "--tokenizer_path", str(tokenizer), "--output_file", str(out / "results.json"),
            "--set", "sft_perplexity.enabled=false", "--set", "smoke.enabled=false", "--set", "runtime.device=cpu"]


def test_eval_sft_boolq_skips_and_counts_bad_records(tmp_path, mirrors, tiny_base_model, tiny_tokenizer):
    out = tmp_path / "sft_eval"
    succeeded(lmforge(mirrors["malformed"], *eval_sft_args(tiny_base_model, tiny_tokenizer, out)))
    results = json.loads((out / "results.json").read_text())
    for part in ("boolq", "boolq_chatml"):
        assert results[part]["examples"] == 4
        assert results[part]["skipped"]["bad_label"] == 4
        assert results[part]["skipped"]["malformed_json"] == 1
    assert manifest(out)["stage"] == "eval-sft"


def test_eval_sft_truncated_boolq_gzip_is_one_clear_error(tmp_path, mirrors, tiny_base_model, tiny_tokenizer):
    out = tmp_path / "sft_eval"
    proc = lmforge(mirrors["broken"], *eval_sft_args(tiny_base_model, tiny_tokenizer, out))
    assert_clean_failure(proc, out, "validation-00000.jsonl.gz")
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------- the readers themselves

def test_oasst_trees_tolerate_bad_ranks_duplicates_and_cycles():
    from collections import Counter

    from lmforge.data.sft_sources import build_trees

    skips: Counter = Counter()
    roots = build_trees(oasst_rows(), ["en"], skips)
    first = roots[0]
    assert [c.record["message_id"] for c in first.children] == ["t1-a0", "t1-a1", "t1-a2"]  # 0, "1", unranked
    assert skips["parent_cycle"] == 3 and skips["duplicate_message_id"] == 1 and skips["orphan_subtree"] == 1


def test_parquet_and_bom_through_the_shared_reader(tmp_path, mirrors):
    from collections import Counter

    from lmforge.errors import DataError
    from lmforge.data.sources import stream_files

    skips: Counter = Counter()
    parquet = mirrors["malformed"] / "manu/project_gutenberg/en/en-00001.parquet"
    rows = list(stream_files([str(parquet)], skips=skips))
    assert rows[0]["downloads"] == 12345 and rows[0]["text"].startswith("Letter 1")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(parquet.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt.parquet"):
        list(stream_files([str(corrupt)], skips=skips))
    assert not skips
