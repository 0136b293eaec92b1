"""Evaluation data: WikiText-2 documents and BoolQ examples, from the hub or local files.

Hub datasets stream through `lmforge.data.sources.stream_hub`, so `LMFORGE_MIRROR` (or
`--mirror`) redirects them to a local mirror like every other source:

- WikiText: `EleutherAI/wikitext_document_level`, config `wikitext-2-raw-v1`, split
  `test`, field `page` (one whole article per record).
- BoolQ: `aps/super_glue`, config `boolq`, split `validation` (label 1 = yes).

Local files:
- WikiText: a raw file of lines (`wiki.test.raw`), rebuilt into articles at every
  top-level ` = Title = ` heading, exactly as the document-level dataset was built;
  or JSON lines with a `page` field.
- BoolQ: JSON lines in the SuperGLUE schema (question, passage, label 0/1, idx) or the
  original BoolQ schema (question, passage, answer true/false, title; the passage is
  used as given, without the title).

Records that cannot be used are skipped and counted by reason in the caller's Counter.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from lmforge.data.sources import JSON_SUFFIXES, resolve_mirror, stream_files, stream_hub
from lmforge.errors import DataError
from lmforge.evaluation.boolq import BoolQExample

WIKITEXT_HUB = ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test")
BOOLQ_HUB = ("aps/super_glue", "boolq", "validation")


@dataclass
class Loaded:
    """Records read under an optional cap; `partial` when the cap cut the data short."""

    records: list
    partial: bool
    source: str


def is_article_heading(line: str) -> bool:
    """True for a top-level ` = Title = ` line; ` = = Section = = ` lines are not."""
    collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
    return collapsed.startswith("= ") and collapsed.endswith(" =")


def rebuild_wikitext_documents(lines: Iterable[str]) -> Iterator[str]:
    """Group raw WikiText lines (each ending in "\\n") into articles, one per top-level heading.

    Lines are kept byte for byte, newlines included, so the rebuilt pages equal the
    document-level dataset's `page` field. Whitespace-only groups are dropped.
    """
    page: list[str] = []
    for line in lines:
        if is_article_heading(line) and page:
            text = "".join(page)
            if text.strip():
                yield text
            page = []
        page.append(line)
    text = "".join(page)
    if text.strip():
        yield text


def _raw_lines(path: Path, skips: Counter) -> Iterator[str]:
    """Lines of a text file split on "\\n" only (Unicode line separators stay inside lines)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle):
            if number == 0 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                skips["invalid_utf8_line"] += 1


def _capped(records: Iterator, limit: int | None) -> tuple[list, bool]:
    """Up to `limit` records, and whether more were left (reads at most one extra)."""
    taken = []
    for record in records:
        if limit is not None and len(taken) >= limit:
            return taken, True
        taken.append(record)
    return taken, False


def load_wikitext(local_file: str | os.PathLike | None = None, *, limit: int | None = None,
                  mirror: str | os.PathLike | None = None, skips: Counter | None = None,
                  hub: tuple[str, str | None, str] = WIKITEXT_HUB, field: str = "page") -> Loaded:
    """WikiText articles (original, tokenised text) from a local file or the hub."""
    skips = skips if skips is not None else Counter()
    if local_file:
        path = Path(local_file)
        if not path.is_file():
            raise DataError(f"WikiText file not found: {path}")
        if path.name.endswith(JSON_SUFFIXES):
            pages = _pages_from_records(stream_files([str(path)], skips=skips), field, skips)
        else:
            pages = rebuild_wikitext_documents(_raw_lines(path, skips))
        source = str(path)
    else:
        pages = _pages_from_records(stream_hub(*hub, mirror=mirror, skips=skips), field, skips)
        source = hub_source(hub, mirror)
    records, partial = _capped(pages, limit)
    if not records:
        raise DataError(f"no WikiText document could be read from {source}")
    return Loaded(records, partial, source)


def _pages_from_records(records: Iterable[dict], field: str, skips: Counter) -> Iterator[str]:
    for record in records:
        page = record.get(field)
        if not isinstance(page, str):
            skips[f"missing_{field}"] += 1
        elif not page.strip():
            skips["empty_page"] += 1
        else:
            yield page


def load_boolq(local_file: str | os.PathLike | None = None, *, limit: int | None = None,
               mirror: str | os.PathLike | None = None, skips: Counter | None = None,
               hub: tuple[str, str | None, str] = BOOLQ_HUB) -> Loaded:
    """BoolQ examples from a local JSON-lines file (either schema) or the hub."""
    skips = skips if skips is not None else Counter()
    if local_file:
        path = Path(local_file)
        if not path.is_file():
            raise DataError(f"BoolQ file not found: {path}")
        records, source = stream_files([str(path)], skips=skips), str(path)
    else:
        records, source = stream_hub(*hub, mirror=mirror, skips=skips), hub_source(hub, mirror)
    examples, partial = _capped(_boolq_examples(records, skips), limit)
    if not examples:
        raise DataError(f"no usable BoolQ example could be read from {source}")
    return Loaded(examples, partial, source)


DERIVED_PREFIX = "derived quickstart data"


def hub_source(hub: tuple[str, str | None, str], mirror: str | os.PathLike | None = None) -> str:
    """How results name a hub dataset: its id, unless the mirror serves derived stand-in data.

    The quickstart's mirror (lmforge.data.quickstart_data) holds a DERIVED.json that says what
    each of its "hub" sets really is; results must not claim the real dataset for it.
    """
    import json

    name = f"{hub[0]} ({hub[1]}, {hub[2]})"
    root = resolve_mirror(mirror)
    marker = root / "DERIVED.json" if root is not None else None
    if marker is None or not marker.is_file():
        return name
    try:
        what = json.loads(marker.read_text(encoding="utf-8")).get("datasets", {}).get(hub[0])
    except (OSError, ValueError, AttributeError):
        what = None
    if not what:
        return name
    return f"{DERIVED_PREFIX}: {what} (in the place of {name}; not the real dataset)"


def is_derived(source: str | None) -> bool:
    return bool(source) and str(source).startswith(DERIVED_PREFIX)


def boolq_example(record: dict, position: int) -> BoolQExample | str:
    """A BoolQExample, or the reason the record is unusable."""
    question, passage = record.get("question"), record.get("passage")
    if not isinstance(question, str) or not question.strip():
        return "missing_question"
    if not isinstance(passage, str) or not passage.strip():
        return "missing_passage"
    if "label" in record:  # SuperGLUE schema
        label = record["label"]
        if label not in (0, 1) or isinstance(label, bool):
            return "bad_label"
    elif isinstance(record.get("answer"), bool):  # original BoolQ schema
        label = int(record["answer"])
    else:
        return "missing_label"
    return BoolQExample(question=question, passage=passage, label=int(label), idx=record.get("idx", position))


def _boolq_examples(records: Iterable[dict], skips: Counter) -> Iterator[BoolQExample]:
    for position, record in enumerate(records):
        example = boolq_example(record, position)
        if isinstance(example, str):
            skips[example] += 1
        else:
            yield example
