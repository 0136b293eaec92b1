"""Where records come from: the Hugging Face hub (streamed), a local mirror of it, or local files.

All three go through `datasets` streaming. Hub datasets are redirected to a local
mirror, without touching the user's config, when `LMFORGE_MIRROR` (or a `--mirror`
flag) names a directory laid out as

    DIR/org/name/[config/][split/]files      (.jsonl .json .jsonl.gz .json.gz .parquet .txt)

or as a hub repository is, each split's files named by it (`data/train-00000.parquet`).

JSON-lines files are streamed line by line and parsed here, so one malformed line or
invalid UTF-8 costs that record only: it is skipped and counted by reason in the
caller's `Counter`, never silently dropped and never fatal. A UTF-8 byte-order mark at
the start of a file is dropped; CRLF line ends are whitespace to the JSON parser.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

from lmforge.artifacts import sha256_file
from lmforge.data.builtin_corpus import stream_builtin as _stream_builtin
from lmforge.errors import DataError
from lmforge.log import get_logger

log = get_logger(__name__)

MIRROR_ENV = "LMFORGE_MIRROR"
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz")
PARQUET_SUFFIXES = (".parquet",)
ARRAY_SUFFIXES = (".json", ".json.gz")  # may hold one JSON array instead of JSON lines
_UNREADABLE = (OSError, EOFError, zlib.error)  # a truncated gzip, an unreadable file
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by surrogateescape
DATA_SUFFIXES = JSON_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_mirror(mirror: str | os.PathLike | None = None) -> Path | None:
    """The mirror directory from the argument, else from $LMFORGE_MIRROR, else None."""
    chosen = mirror if mirror else os.environ.get(MIRROR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"mirror directory {path} does not exist (from {'--mirror' if mirror else MIRROR_ENV})")
    return path


def mirror_files(mirror: Path, hub_id: str, config: str | None, split: str) -> list[str]:
    """Data files for `hub_id`/config/split in the mirror.

    The first of these directories that holds files for the split wins: config/split,
    config, config/data (and config's dashes as folders: sample-10BT -> sample/10BT),
    split, the dataset's root, data. A split directory is searched
    recursively. Any other directory may hold several splits' files, as hub repositories
    do (`c4-train.00000.json.gz` beside `c4-validation.00000.json.gz`): there the split is
    read from the file names, with the keywords `datasets` uses, and files that name no
    split are taken only when none names the one asked for.
    """
    if not _HUB_ID.match(hub_id) or ".." in hub_id:
        raise DataError(f"invalid hub dataset id {hub_id!r}: expected 'org/name'")
    for part, what in ((config, "config"), (split, "split")):
        if part is not None and (not _NAME.match(part) or ".." in part):
            raise DataError(f"invalid {what} name {part!r} for {hub_id}")
    base = mirror / hub_id
    candidates = [(base / config / split, True), (base / config, False), (base / config / "data", False)] \
        if config else []
    if config and "-" in config:  # FineWeb's `sample-10BT` config is its repository's sample/10BT folder
        candidates.append((base / config.replace("-", "/"), False))
    candidates += [(base / split, True), (base, False), (base / "data", False)]
    seen: list[str] = []
    for directory, is_split_dir in candidates:
        # The names were checked above, so every candidate lies under the mirror; its folders
        # may be symbolic links (a mirror assembled from several disks or dataset copies).
        if not directory.is_dir():
            continue
        files = _data_files(directory, recursive=is_split_dir)
        chosen = files if is_split_dir else _files_of_split(files, split)
        if chosen:
            return [str(f) for f in chosen]
        if files:
            found = sorted({s for f in files if (s := _split_named_by(f, split))})
            seen.append(f"{directory} holds split(s) {', '.join(found)} only")
        else:
            seen.append(f"{directory} holds no data files ({', '.join(DATA_SUFFIXES)})")
    looked = ", ".join(str(c) for c, _ in candidates)
    raise DataError(f"{hub_id} (config {config}, split {split}) is not in the mirror {mirror}: "
                    + ("; ".join(seen) if seen else f"looked for {looked}"))


# The keywords by which `datasets` tells a file's split from its name.
_SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
                   "test": ("test", "testing", "eval", "evaluation")}


def _data_files(directory: Path, *, recursive: bool) -> list[Path]:
    """Data files in `directory`, sorted. Hidden files and folders are never data (lmforge's own
    .lmforge-sha256.json cache lives beside data files)."""
    found = _walk_files(directory) if recursive else directory.iterdir()
    return sorted(p for p in found if p.is_file() and p.name.endswith(DATA_SUFFIXES)
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def _walk_files(directory: Path) -> Iterator[Path]:
    """Every file below `directory`, through linked folders too (pathlib's rglob skips them),
    in name order, hidden folders left out. Each real folder is read once, and a link to
    `directory` itself or to a folder above it is not followed (it would loop, or pull in
    the other splits beside this one)."""
    root = os.path.realpath(directory)
    above = {os.path.realpath(parent) for parent in directory.parents}  # as the mirror names them, links resolved
    visited = {root}
    for top, folders, files in os.walk(directory, followlinks=True):
        keep = []
        for name in sorted(folders):
            real = os.path.realpath(os.path.join(top, name))
            if name.startswith(".") or real in visited or real in above or root.startswith(real + os.sep):
                continue
            visited.add(real)
            keep.append(name)
        folders[:] = keep
        yield from (Path(top) / name for name in files)


def _split_named_by(path: Path, wanted: str) -> str | None:
    """The split a file's name declares (`wanted` itself, or a standard one), or None."""
    stem = path.name[: -len(next(s for s in DATA_SUFFIXES if path.name.endswith(s)))]
    words = set(re.split(r"[^a-z]+", stem.lower()))
    if wanted.lower() in words:
        return wanted
    return next((split for split, keys in _SPLIT_KEYWORDS.items() if words.intersection(keys)), None)


def _files_of_split(files: list[Path], split: str) -> list[Path]:
    """The files naming `split`; else those naming no split at all."""
    named = {f: _split_named_by(f, split) for f in files}
    return [f for f in files if named[f] == split] or [f for f in files if named[f] is None]


def stream_hub(hub_id: str, config: str | None = None, split: str = "train", *,
               mirror: str | os.PathLike | None = None, skips: Counter | None = None) -> Iterator[dict]:
    """Records of a hub dataset, streamed; read from the mirror when one is configured."""
    root = resolve_mirror(mirror)
    if root is not None:
        files = mirror_files(root, hub_id, config, split)
        log.debug("%s: reading %d mirror file(s) under %s", hub_id, len(files), root)
        yield from stream_files(files, skips=skips)
        return
    yield from _stream_from_hub(hub_id, config, split)


def data_access_errors() -> tuple[type[BaseException], ...]:
    """What `datasets` raises for data that cannot be reached or read: network and file errors
    (OSError, the hub's HTTP errors included), unknown configs and malformed files (ValueError,
    Arrow errors), and the library's own DatasetsError family. Anything else raised while
    streaming is a bug, in lmforge or below it, and keeps its traceback."""
    import datasets.exceptions
    import pyarrow

    return OSError, ValueError, pyarrow.ArrowException, datasets.exceptions.DatasetsError


def _stream_from_hub(hub_id: str, config: str | None, split: str) -> Iterator[dict]:
    import datasets

    errors = data_access_errors()
    where = f"hub dataset {hub_id} (config {config}, split {split})"
    advice = (f"if this machine is offline, set {MIRROR_ENV} (or --mirror) to a local mirror "
              "holding it, or point the source at local files")
    try:
        dataset = datasets.load_dataset(hub_id, config, split=split, streaming=True)
        iterator = iter(dataset)
    except errors as exc:
        raise DataError(f"cannot open {where}: {type(exc).__name__}: {exc}; {advice}") from None
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except errors as exc:
            raise DataError(f"reading {where} failed: {type(exc).__name__}: {exc}; {advice}") from None
        yield record


def expand_paths(paths: str | list[str], base_dir: str | os.PathLike | None = None) -> list[str]:
    """Expand globs (relative to base_dir) into a sorted list of existing data files."""
    patterns = [paths] if isinstance(paths, str) else list(paths)
    found: list[str] = []
    for pattern in patterns:
        full = str(Path(base_dir) / pattern) if base_dir and not os.path.isabs(pattern) else pattern
        matches = sorted(glob.glob(os.path.expanduser(full), recursive=True))
        if not matches:
            raise DataError(f"no file matches {pattern!r}" + (f" (relative to {base_dir})" if base_dir else ""))
        found += [m for m in matches if os.path.isfile(m)]
    unknown = [f for f in found if not f.endswith(DATA_SUFFIXES)]
    if unknown:
        raise DataError(f"unsupported file type: {unknown[0]} (supported: {', '.join(DATA_SUFFIXES)})")
    return found


def stream_files(paths: str | list[str], *, skips: Counter | None = None,
                 base_dir: str | os.PathLike | None = None) -> Iterator[dict]:
    """Records of local files through `datasets` streaming, one file after another.

    JSON lines (or a .json file's array) -> their objects; .txt -> {"text": paragraph}
    (blank-line separated);
    parquet -> its rows.
    """
    skips = skips if skips is not None else Counter()
    for path in expand_paths(paths, base_dir):
        if path.endswith(JSON_SUFFIXES):
            yield from _stream_json_lines(path, skips)
        elif path.endswith(TEXT_SUFFIXES):
            yield from _stream_text(path, skips)
        else:
            yield from _stream_parquet(path)


def _load_streaming(builder: str, path: str, **kwargs):
    import datasets

    try:
        return datasets.load_dataset(builder, data_files={"train": [path]}, split="train", streaming=True, **kwargs)
    except data_access_errors() as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None


def _raw_lines(path: str) -> Iterator[bytes]:
    """Lines of a (gzipped) file as bytes. A UTF-8 byte-order mark at its start (files saved
    by Windows tools) is dropped: it is not part of the first record."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        first = next(handle, None)
        if first is not None:
            yield first.removeprefix(codecs.BOM_UTF8)
            yield from handle


def _cannot_read(path: str, exc: BaseException) -> DataError:
    return DataError(f"cannot read {path}: {type(exc).__name__}: {exc}")


def _decoded_lines(path: str, skips: Counter) -> Iterator[str]:
    """Lines of a (gzipped) text file as an IterableDataset, decoded line by line.

    datasets' own text builder decodes whole chunks (and ignores `encoding_errors`
    for compressed files), so one bad byte would abort the file: here each line is
    decoded alone and an invalid one is skipped and counted.
    """
    import datasets

    def generate(path: str):
        for raw in _raw_lines(path):
            try:
                yield {"line": raw.decode("utf-8")}
            except UnicodeDecodeError:
                yield {"line": None}

    dataset = datasets.IterableDataset.from_generator(generate, gen_kwargs={"path": path})
    try:
        for row in dataset:
            if row["line"] is None:
                skips["invalid_utf8"] += 1
            else:
                yield row["line"]
    except _UNREADABLE as exc:
        raise _cannot_read(path, exc) from None


def parse_json_record(line: str, skips: Counter) -> dict | None:
    """One JSON-lines record as a dict, or None for a blank line or a bad record
    (counted in `skips` as malformed_json or not_an_object)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON, a 5000-digit number, nesting 100k deep
        skips["malformed_json"] += 1
        return None
    if not isinstance(record, dict):
        skips["not_an_object"] += 1
        return None
    return record


def _stream_json_lines(path: str, skips: Counter) -> Iterator[dict]:
    """Records of a JSON-lines file, or of a `.json` file holding one array of records
    (`[{...}, {...}]`, the other layout `datasets`' json builder reads, common for
    instruction sets saved with `json.dump`)."""
    if path.endswith(ARRAY_SUFFIXES) and _holds_one_array(path):
        yield from _array_file_records(path, skips)
        return
    for line in _decoded_lines(path, skips):
        record = parse_json_record(line, skips)
        if record is not None:
            yield record


def _holds_one_array(path: str) -> bool:
    """Whether a `.json` file is one JSON array rather than JSON lines, from its first lines:
    its first non-blank line opens an array that either continues on the next lines or is
    the file's only content. (JSON lines whose first record happens to be an array stay
    JSON lines, read as a stream.)"""
    try:
        content = (raw.strip() for raw in _raw_lines(path))
        first = next((line for line in content if line), b"")
        if not first.startswith(b"["):
            return False
        try:
            json.loads(first.decode("utf-8", errors="surrogateescape"))
        except (ValueError, RecursionError):
            return True  # the array goes on past its first line
        return next((line for line in content if line), None) is None
    except _UNREADABLE:
        return False  # the JSON-lines reader reports it


def _array_file_records(path: str, skips: Counter) -> Iterator[dict]:
    """The objects of a file holding one JSON array, read whole and decoded one element at
    a time. A non-object element is skipped (not_an_object), an element holding bytes that
    are not UTF-8 too (invalid_utf8); text after the closing bracket is read as JSON lines.
    Broken JSON ends the reading (malformed_json, with a warning saying how much was left)."""
    try:
        raw = b"".join(_raw_lines(path))
    except _UNREADABLE as exc:
        raise _cannot_read(path, exc) from None
    text = raw.decode("utf-8", errors="surrogateescape")
    del raw
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        position = _skip_separators(text, position)
        if position >= len(text) or text[position] == "]":
            break
        start = position
        try:
            element, position = decoder.raw_decode(text, position)
        except (ValueError, RecursionError):
            skips["malformed_json"] += 1  # no way to find the next element's start after a broken one
            log.warning("%s: the JSON array breaks at character %s; the %s characters after it were not read",
                        path, f"{start:,}", f"{len(text) - start:,}")
            return
        if _UNDECODABLE.search(text, start, position):
            skips["invalid_utf8"] += 1
        elif isinstance(element, dict):
            yield element
        else:
            skips["not_an_object"] += 1
    if position >= len(text):
        skips["malformed_json"] += 1  # cut before its closing bracket
        return
    for line in text[position + 1:].split("\n"):  # JSON lines after the array
        if _UNDECODABLE.search(line):
            skips["invalid_utf8"] += 1
        elif (record := parse_json_record(line, skips)) is not None:
            yield record


def _skip_separators(text: str, position: int) -> int:
    while position < len(text) and (text[position].isspace() or text[position] == ","):
        position += 1
    return position


def _stream_text(path: str, skips: Counter) -> Iterator[dict]:
    """Plain text: documents are paragraphs separated by blank lines."""
    paragraph: list[str] = []
    for line in _decoded_lines(path, skips):
        if line.strip():
            paragraph.append(line.rstrip("\r\n"))
        elif paragraph:
            yield {"text": "\n".join(paragraph)}
            paragraph = []
    if paragraph:
        yield {"text": "\n".join(paragraph)}


def _stream_parquet(path: str) -> Iterator[dict]:
    rows = iter(_load_streaming("parquet", path))
    errors = data_access_errors()
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except errors as exc:  # a corrupt or truncated parquet file fails while iterating, not on open
            raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
        yield row


def stream_builtin(name: str) -> Iterator[dict]:
    """Records {"id", "text"} of a built-in offline corpus (see lmforge.data.builtin_corpus)."""

    yield from _stream_builtin(name)


def data_fingerprint(*, hub: tuple[str, str | None, str] | None = None, files: str | list[str] | None = None,
                     mirror: str | os.PathLike | None = None) -> dict:
    """What a stage's input data were, for its up-to-date check.

    Local files are identified by sha256; a hub dataset read through a mirror by its
    mirror files' paths, sizes and modification times (cheap, and any replacement of
    the data changes it); a hub dataset read from the hub by its id only.
    """

    if files:
        patterns = [files] if isinstance(files, str) else list(files)
        found = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(pattern), recursive=True)})
        return {"files": {path: sha256_file(path) for path in found if os.path.isfile(path)}}
    if hub is None:
        return {}
    root = resolve_mirror(mirror)
    if root is None:
        return {"hub": list(hub)}
    listed = mirror_files(root, *hub)
    return {"hub": list(hub), "mirror_files": {p: [os.path.getsize(p), int(os.path.getmtime(p))] for p in listed}}
