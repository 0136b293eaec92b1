"""Offline evaluation and SFT data derived from a corpus (the quickstart's stand-in for the hub).

    python -m lmforge.data.quickstart_data --corpus-dir runs/quickstart/data/corpus \\
        --output-dir runs/quickstart/data/quickstart

The quickstart must run with no network and no third-party files, yet steps 6–9 need
WikiText-2, BoolQ, Alpaca and OASST1. This step builds small data sets with the same
schemas from the built-in corpus, deterministically (a seeded hash decides everything):

- a **held-out split**: a few documents (by hash of their id) are removed from the
  corpus; `pretrain_corpus/` is the corpus artifact without them, so perplexity is
  measured on text the model never trained on;
- **WikiText-style** pages of the held-out documents (` = Title = ` heading, then
  paragraphs), as `wiki.test.raw` and as `{"page": ...}` records;
- **BoolQ-schema** items `{question, passage, idx, label}` on held-out paragraphs:
  "does the text mention <word>", yes when the word occurs in the passage, no when it
  was drawn from another document and does not; half and half;
- **Alpaca-schema** pairs `{instruction, input, output, text}` from the training
  documents: summarise in one sentence (the first), continue the text (the next
  sentence), does it mention a word (yes/no), give a title (the heading);
- **OASST1-schema** message trees (flat messages linked by `parent_id`, roles
  `prompter`/`assistant`, ranked replies): "Tell me about <title>", then "Tell me more".

They are written as a hub mirror (`mirror/<org>/<name>/<config>/<split>/quickstart.jsonl`),
so the plan's own eval and SFT configs read them unchanged with
`LMFORGE_MIRROR=<output-dir>/mirror`. None of it measures what the real sets measure;
it exercises the same code paths, offline, in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from pathlib import Path

from lmforge.artifacts import (
    atomic_write_json,
    atomic_write_text,
    load_manifest,
    prepare_output_dir,
    verify_file,
    write_manifest,
)
from lmforge.cli import Parser, add_flag_aliases
from lmforge.config import config_from_dict, load_config, parse_set_overrides, spec, to_dict
from lmforge.data.corpus.shards import JsonlGzWriter, read_jsonl_gz
from lmforge.errors import LmforgeError
from lmforge.log import setup_logging
from lmforge.pipeline.stage import StagePlan, run_stage

STAGE = "quickstart-data"
MIRROR_FILES = {
    "wikitext": "mirror/EleutherAI/wikitext_document_level/wikitext-2-raw-v1/test/quickstart.jsonl",
    "boolq": "mirror/aps/super_glue/boolq/validation/quickstart.jsonl",
    "alpaca": "mirror/tatsu-lab/alpaca/train/quickstart.jsonl",
    "oasst1": "mirror/OpenAssistant/oasst1/train/quickstart.jsonl",
}
RAW_WIKITEXT = "wiki.test.raw"
# Beside the derived sets: says, to every reader of the mirror, what they really are.
DERIVED_MARKER = "mirror/DERIVED.json"
DERIVED_WHAT = {
    "EleutherAI/wikitext_document_level": "WikiText-style pages of held-out Python documentation",
    "aps/super_glue": "generated 'does the text mention <word>' yes/no questions on Python documentation",
    "tatsu-lab/alpaca": "instruction pairs generated from Python documentation",
    "OpenAssistant/oasst1": "conversation trees generated from Python documentation",
}
PRETRAIN_CORPUS = "pretrain_corpus"
ALPACA_PROMPT = ("Below is an instruction that describes a task{with_input}. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_WORD = re.compile(r"[a-z]{6,}")
STOPWORDS = set("""should would could returns return because before between through however within without
                 object objects function functions argument arguments default defaults string strings""".split())


@dataclasses.dataclass
class QuickstartDataConfig:
    heldout_fraction: float = spec(0.05, min=0.0, max=0.5, help="share of documents held out for evaluation")
    min_heldout_docs: int = spec(8, min=1, help="hold out at least this many documents")
    boolq_items: int = spec(200, min=2, help="yes/no items (half yes, half no)")
    alpaca_items: int = spec(600, min=1, help="instruction/response pairs")
    oasst_trees: int = spec(100, min=1, help="two-turn conversation trees")
    max_passage_chars: int = spec(600, min=100, help="longest passage or input, in characters")
    seed: int = spec(0, help="seed of every choice (hash-based, no global RNG)")


# ---------------------------------------------------------------- text helpers

def _rank(seed: int, *parts: object) -> int:
    """A deterministic pseudo-random integer from a seed and any values."""
    key = "\x1f".join(map(str, (seed, *parts))).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def paragraphs(text: str, max_chars: int) -> list[str]:
    """Prose paragraphs: blank-line separated, whitespace collapsed, code and tiny fragments dropped."""
    result = []
    for block in re.split(r"\n\s*\n", text):
        if ">>>" in block or block.startswith((" ", "\t")) and "    " in block[:8]:
            continue
        para = " ".join(block.split())
        letters = sum(c.isalpha() or c == " " for c in para)
        if len(para.split()) >= 8 and letters >= 0.85 * len(para):
            result.append(para[:max_chars].rsplit(" ", 1)[0] if len(para) > max_chars else para)
    return result


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def title_of(text: str) -> str:
    """A short heading: the first line's first words, without trailing punctuation."""
    first = " ".join(text.strip().splitlines()[0].split()[:7]) if text.strip() else "Untitled"
    return first.rstrip(".,;:!?") or "Untitled"


def content_words(text: str) -> list[str]:
    """Distinct lowercase words of 6+ letters, in order of appearance, minus a few function words."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        if w not in STOPWORDS:
            seen.setdefault(w, None)
    return list(seen)


# ---------------------------------------------------------------- reading and splitting the corpus

def read_corpus(corpus_dir: Path) -> tuple[dict, list[dict]]:
    """The corpus manifest and its records, shards verified against it."""

    manifest = load_manifest(corpus_dir, "corpus")
    records = []
    for entry in manifest["outputs"]:
        rel = entry["path"]
        if not rel.startswith("shards/"):
            continue
        verify_file(corpus_dir, manifest, rel)
        records += list(read_jsonl_gz(corpus_dir / rel))
    return manifest, records


def split_heldout(records: list[dict], cfg: QuickstartDataConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out): the held-out documents are those with the smallest seeded hash of their id."""
    usable = [r for r in records if paragraphs(r["text"], cfg.max_passage_chars)]
    count = max(cfg.min_heldout_docs, round(cfg.heldout_fraction * len(records)))
    count = min(count, len(usable) // 2)
    chosen = {r["id"] for r in sorted(usable, key=lambda r: _rank(cfg.seed, "heldout", r["id"]))[:count]}
    return [r for r in records if r["id"] not in chosen], [r for r in records if r["id"] in chosen]


# ---------------------------------------------------------------- the four data sets

def wikitext_page(record: dict, max_chars: int) -> str:
    """A page in WikiText's raw layout: ` = Title = `, blank lines, one paragraph per line."""
    body = "".join(f" {p} \n \n" for p in paragraphs(record["text"], max_chars * 4))
    return f" = {title_of(record['text'])} = \n \n{body}"


def boolq_items(heldout: list[dict], others: list[dict], cfg: QuickstartDataConfig) -> list[dict]:
    """Yes/no items on held-out paragraphs; even indices yes, odd indices no."""
    passages = [p for r in heldout for p in paragraphs(r["text"], cfg.max_passage_chars)]
    passages.sort(key=lambda p: _rank(cfg.seed, "boolq-passage", p))
    pool = [w for r in others[:400] for w in content_words(r["text"])[:20]]
    items: list[dict] = []
    for n in range(cfg.boolq_items * 3):
        if len(items) == cfg.boolq_items or not passages:
            break
        passage = passages[(n // 2) % len(passages)]      # each passage gets a yes and a no item
        inside = content_words(passage)
        want_yes = len(items) % 2 == 0
        if want_yes:
            candidates = inside
        else:
            present = set(passage.lower().split()) | set(inside)
            candidates = [w for w in pool if w not in present and w not in passage.lower()]
        if not candidates:
            continue
        word = candidates[_rank(cfg.seed, "boolq-word", n) % len(candidates)]
        items.append({"question": f"does the text mention {word}", "passage": passage,
                      "idx": len(items), "label": int(want_yes)})
    return items


def _alpaca(instruction: str, input_: str, output: str) -> dict:
    text = ALPACA_PROMPT.format(with_input=", paired with an input that provides further context" if input_ else "",
                                instruction=instruction, input_block=f"### Input:\n{input_}\n\n" if input_ else "",
                                output=output)
    return {"instruction": instruction, "input": input_, "output": output, "text": text}


def alpaca_pairs(train: list[dict], cfg: QuickstartDataConfig) -> list[dict]:
    """Four kinds of instruction, round robin, over training paragraphs."""
    units = [(r, p) for r in train for p in paragraphs(r["text"], cfg.max_passage_chars) if len(sentences(p)) >= 2]
    units.sort(key=lambda u: _rank(cfg.seed, "alpaca", u[0]["id"], u[1][:40]))
    pairs = []
    for n, (record, para) in enumerate(units[:cfg.alpaca_items]):
        sents = sentences(para)
        kind = n % 4
        if kind == 0:
            pairs.append(_alpaca("Summarize the following text in one sentence.", para, sents[0]))
        elif kind == 1:
            pairs.append(_alpaca("Continue this text.", sents[0], " ".join(sents[1:3])))
        elif kind == 2:
            words = content_words(para)
            yes = bool(words) and n % 8 == 2
            word = words[_rank(cfg.seed, "alpaca-word", n) % len(words)] if yes else "elephant"
            pairs.append(_alpaca(f'Does the following text mention "{word}"? Answer yes or no.', para,
                                 "Yes." if yes else "No."))
        else:
            pairs.append(_alpaca("Give a short title for this text.", para, title_of(record["text"])))
    return pairs


def oasst_messages(train: list[dict], cfg: QuickstartDataConfig) -> list[dict]:
    """Two-turn trees with a best (rank 0) and a weaker (rank 1) first reply."""
    docs = [r for r in train if len(sentences(" ".join(paragraphs(r["text"], 10_000)))) >= 4]
    docs.sort(key=lambda r: _rank(cfg.seed, "oasst", r["id"]))
    messages = []
    for t, record in enumerate(docs[:cfg.oasst_trees]):
        sents = sentences(" ".join(paragraphs(record["text"], 10_000)))
        tree = f"qs-tree-{t:04d}"

        def msg(n: int, parent: str | None, role: str, text: str, rank: int | None) -> dict:
            return {"message_id": f"{tree}-m{n}", "parent_id": parent, "message_tree_id": tree, "text": text,
                    "role": role, "lang": "en", "rank": rank, "deleted": False, "review_result": True}

        messages += [
            msg(0, None, "prompter", f"Tell me about {title_of(record['text'])}.", None),
            msg(1, f"{tree}-m0", "assistant", " ".join(sents[:2]), 0),
            msg(2, f"{tree}-m0", "assistant", "I do not know.", 1),
            msg(3, f"{tree}-m1", "prompter", "Tell me more.", None),
            msg(4, f"{tree}-m3", "assistant", " ".join(sents[2:4]), 0),
        ]
    return messages


# ---------------------------------------------------------------- writing

def _write_jsonl(path: Path, rows: list[dict]) -> None:

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_corpus(out: Path, records: list[dict], source_manifest: dict, shard_size: int = 2000) -> list[str]:
    """The training documents as a corpus artifact (same shard format as `lmforge corpus`)."""

    outputs = []
    for n, start in enumerate(range(0, len(records), shard_size)):
        rel = f"shards/shard_{n:04d}.jsonl.gz"
        # the corpus stage's writer: no temp file name or time in the gzip header, so a rebuild
        # gives the same bytes (and the same identity: nothing downstream reruns)
        writer = JsonlGzWriter(out / rel, compresslevel=9)
        try:
            for record in records[start:start + shard_size]:
                writer.write(record, tokens=0)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        outputs.append(rel)
    figures = {"documents": len(records), "shards": len(outputs),
               "characters": sum(len(r["text"]) for r in records)}
    write_manifest(out, "corpus", config=source_manifest.get("config"), outputs=outputs, figures=figures,
                   extra={"derived_from": "quickstart-data: the source corpus minus the held-out documents"})
    return outputs


def build(corpus_dir: Path, out: Path, cfg: QuickstartDataConfig) -> dict:
    """Write every data set and the manifest (last); return the figures."""

    manifest, records = read_corpus(corpus_dir)
    train, heldout = split_heldout(records, cfg)
    prepare_output_dir(out)
    write_corpus(out / PRETRAIN_CORPUS, train, manifest)
    pages = [wikitext_page(r, cfg.max_passage_chars) for r in heldout]
    atomic_write_text(out / RAW_WIKITEXT, "".join(pages))
    data = {"wikitext": [{"page": p} for p in pages], "boolq": boolq_items(heldout, train, cfg),
            "alpaca": alpaca_pairs(train, cfg), "oasst1": oasst_messages(train, cfg)}
    for name, rows in data.items():
        _write_jsonl(out / MIRROR_FILES[name], rows)
    atomic_write_json(out / DERIVED_MARKER, {"derived_by": "lmforge quickstart-data", "datasets": DERIVED_WHAT})
    figures = {"source_documents": len(records), "train_documents": len(train), "heldout_documents": len(heldout),
               "wikitext_pages": len(pages), "boolq_items": len(data["boolq"]),
               "boolq_yes_rate": round(sum(i["label"] for i in data["boolq"]) / max(1, len(data["boolq"])), 4),
               "alpaca_pairs": len(data["alpaca"]), "oasst_messages": len(data["oasst1"]),
               "oasst_trees": len(data["oasst1"]) // 5}
    write_manifest(out, STAGE, config=to_dict(cfg), inputs={"corpus": corpus_dir},
                   outputs=[RAW_WIKITEXT, *MIRROR_FILES.values(), DERIVED_MARKER], figures=figures,
                   extra={"mirror": str(out / "mirror"), "pretrain_corpus": str(out / PRETRAIN_CORPUS)})
    return figures


# ---------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus-dir", required=True, help="corpus artifact to derive the data from")
    parser.add_argument("--output-dir", required=True, help="where the data sets and the mirror go")
    parser.add_argument("--config", help="optional JSON config (QuickstartDataConfig keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--log-level", default="INFO", type=str.upper, help="logging verbosity")


def _config(args: argparse.Namespace) -> QuickstartDataConfig:
    overrides = parse_set_overrides(args.set)
    if args.config:
        return load_config(args.config, QuickstartDataConfig, overrides=overrides)
    return config_from_dict({}, QuickstartDataConfig, source="--set", overrides=overrides)


def describe(args: argparse.Namespace) -> dict[str, str]:
    cfg = _config(args)
    return {"held out": f"{cfg.heldout_fraction:.0%} of documents (at least {cfg.min_heldout_docs})",
            "items": f"{cfg.boolq_items} BoolQ, {cfg.alpaca_items} Alpaca, {cfg.oasst_trees} OASST1 trees",
            "mirror": str(Path(args.output_dir) / "mirror")}


def main(args: argparse.Namespace) -> int:
    cfg = _config(args)
    out, corpus_dir = Path(args.output_dir), Path(args.corpus_dir)
    plan = StagePlan(STAGE, out, to_dict(cfg), {"corpus": corpus_dir}, force=args.force)
    run_stage(plan, lambda p: build_and_report(corpus_dir, out, cfg))
    return 0


def build_and_report(corpus_dir: Path, out: Path, cfg: QuickstartDataConfig) -> dict:
    start = time.perf_counter()
    figures = build(corpus_dir, out, cfg)
    print(f"✅ Quickstart data ready in {time.perf_counter() - start:.1f}s: {out}")
    print(f"   📚 Pretrain corpus: {figures['train_documents']} documents "
          f"({figures['heldout_documents']} held out) -> {out / PRETRAIN_CORPUS}")
    print(f"   📝 WikiText-style pages: {figures['wikitext_pages']} -> {out / RAW_WIKITEXT}")
    print(f"   ❓ BoolQ-style items: {figures['boolq_items']} (yes rate {figures['boolq_yes_rate']:.0%})")
    print(f"   💬 Alpaca pairs: {figures['alpaca_pairs']}, OASST1 trees: {figures['oasst_trees']}")
    print(f"   🪞 Mirror: LMFORGE_MIRROR={out / 'mirror'}")
    return load_manifest(out, STAGE)


def cli(argv: list[str] | None = None) -> int:
    """`python -m lmforge.data.quickstart_data`: same error handling as the lmforge verbs."""

    parser = Parser(prog="python -m lmforge.data.quickstart_data", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    add_flag_aliases(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return main(args)
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(cli())
