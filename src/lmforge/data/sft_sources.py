"""SFT sources turned into conversations (lists of ChatML messages).

Formats:
- "alpaca" (tatsu-lab/alpaca): instruction + input -> one user message (the input
  follows the instruction after a blank line), output -> the assistant reply.
- "oasst1" (OpenAssistant/oasst1): flat messages linked by `parent_id`. Trees are
  rebuilt from `message_id`/`parent_id`; each conversation is a root-to-leaf path,
  trimmed so it ends on an assistant message. `paths="best"` keeps one path per tree,
  choosing at every step the best-ranked child (rank 0 first; unranked children after
  ranked ones, in file order); `paths="all"` keeps every distinct path. Messages that
  are deleted or whose `lang` is not listed are pruned with their whole subtree.
  Broken dumps are tolerated and counted: a repeated `message_id` keeps its first
  message, messages below a missing parent or on a `parent_id` cycle are skipped, a
  rank that is not a number counts as unranked.
- "messages": records that already hold `{"messages": [{"role", "content"}...]}`.

Records come from a hub id through `lmforge.data.sources.stream_hub` (so `LMFORGE_MIRROR`
redirects them) or from local files through `stream_files`. Every record that does
not become a conversation is counted in `skips` by reason.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from lmforge.config import spec
from lmforge.data.sources import stream_files, stream_hub

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass
class SourceConfig:
    """Where an SFT dataset comes from and how to read it."""

    format: str = spec("alpaca", choices=("alpaca", "oasst1", "messages"), help="record layout")
    hub_id: str | None = spec(None, help="Hugging Face dataset id, e.g. tatsu-lab/alpaca")
    hub_config: str | None = spec(None, help="dataset config name on the hub")
    split: str = spec("train", help="split to read")
    files: list[str] | None = spec(None, help="local files or globs instead of hub_id")
    languages: list[str] | None = spec(None, help="oasst1: keep only these `lang` codes (null: all)")
    paths: str = spec("best", choices=("best", "all"), help="oasst1: best-ranked path per tree, or all paths")

    def check(self) -> list[str]:
        if not self.hub_id and not self.files:
            return ["source: set hub_id or files"]
        return []


# ---------------------------------------------------------------- Alpaca

def alpaca_messages(record: dict) -> tuple[list[dict] | None, str | None]:
    """(messages, None) or (None, skip reason) for one Alpaca record."""
    instruction, extra, output = (record.get(k) for k in ("instruction", "input", "output"))
    if not isinstance(instruction, str) or not isinstance(output, str):
        return None, "missing_field"
    if extra is not None and not isinstance(extra, str):
        return None, "bad_input_field"  # dropping it would train on a question without its input
    if not instruction.strip() or not output.strip():
        return None, "empty"
    user = instruction.strip()
    if isinstance(extra, str) and extra.strip():
        user += "\n\n" + extra.strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}], None


# ---------------------------------------------------------------- OASST1

@dataclass
class _Node:
    record: dict
    order: int
    children: list["_Node"] = field(default_factory=list)

    @property
    def message(self) -> dict:
        return {"role": OASST_ROLES[self.record["role"]], "content": self.record["text"].strip()}

    @property
    def sort_key(self) -> tuple:
        rank = _rank(self.record)
        return (rank is None, rank if rank is not None else 0.0, self.order)


def _rank(record: dict) -> float | None:
    """The message's rank as a number; None (unranked) when absent or not a finite number.

    Numeric strings ("1") count as their number: a dump re-exported through CSV has them.
    """
    rank = record.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, (int, float, str)):
        return None
    try:
        value = float(rank)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _usable(record: dict, languages: list[str] | None, skips: Counter) -> bool:
    if not all(isinstance(record.get(k), str) for k in ("message_id", "text", "role")):
        skips["missing_field"] += 1
    elif not (record.get("parent_id") is None or isinstance(record["parent_id"], str)):
        skips["bad_parent_id"] += 1
    elif record["role"] not in OASST_ROLES:
        skips["bad_role"] += 1
    elif record.get("deleted"):
        skips["deleted"] += 1
    elif languages is not None and record.get("lang") not in languages:
        skips["language_filtered"] += 1
    elif not record["text"].strip():
        skips["empty"] += 1
    else:
        return True
    return False


def build_trees(records, languages: list[str] | None = None, skips: Counter | None = None) -> list[_Node]:
    """Roots of the message trees, children sorted best-first; pruned messages drop their subtree."""
    skips = skips if skips is not None else Counter()
    nodes: dict[str, _Node] = {}
    for order, record in enumerate(records):
        if not _usable(record, languages, skips):
            continue
        if record["message_id"] in nodes:
            skips["duplicate_message_id"] += 1  # the first message with an id wins
            continue
        nodes[record["message_id"]] = _Node(record, order)
    roots = []
    for node in nodes.values():
        parent_id = node.record.get("parent_id")
        if parent_id is None:
            roots.append(node)
        elif parent_id in nodes:
            nodes[parent_id].children.append(node)
        else:
            # Parent pruned (deleted, other language) or absent from this subset.
            skips["orphan_message"] += 1
    _count_detached(nodes, roots, skips)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.sort_key)
    roots.sort(key=lambda n: n.order)
    return roots


def _count_detached(nodes: dict[str, _Node], roots: list[_Node], skips: Counter) -> None:
    """Count the messages no root reaches, beyond the orphans already counted.

    They hang below an orphan ("orphan_subtree") or on a parent_id cycle ("parent_cycle");
    every message has one parent, so the walk from the roots never enters a cycle.
    """
    reached: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        reached.add(id(node))
        stack.extend(node.children)
    for node in nodes.values():
        if id(node) not in reached and node.record["parent_id"] in nodes:
            skips[_detached_reason(node, nodes)] += 1


def _detached_reason(node: _Node, nodes: dict[str, _Node]) -> str:
    seen: set[str] = set()
    parent_id = node.record["parent_id"]
    while parent_id in nodes:
        if parent_id in seen:
            return "parent_cycle"
        seen.add(parent_id)
        parent_id = nodes[parent_id].record.get("parent_id")
    return "orphan_subtree"


def _trim_to_assistant(path: list[_Node]) -> list[_Node]:
    while path and path[-1].record["role"] != "assistant":
        path = path[:-1]
    return path


def best_path(root: _Node) -> list[_Node]:
    """Root to leaf, taking the best-ranked child at every step."""
    path = [root]
    while path[-1].children:
        path.append(path[-1].children[0])
    return _trim_to_assistant(path)


def all_paths(root: _Node) -> list[list[_Node]]:
    """Every distinct root-to-leaf path, each trimmed to end on an assistant message."""
    found: list[list[_Node]] = []
    seen: set[tuple[str, ...]] = set()
    stack = [[root]]
    while stack:
        path = stack.pop()
        if path[-1].children:
            stack.extend(path + [child] for child in reversed(path[-1].children))
            continue
        trimmed = _trim_to_assistant(path)
        key = tuple(n.record["message_id"] for n in trimmed)
        if trimmed and key not in seen:
            seen.add(key)
            found.append(trimmed)
    return found


def oasst_conversations(records, languages: list[str] | None = None, paths: str = "best",
                        skips: Counter | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(tree id, messages) for each conversation kept from OASST1-style records."""
    skips = skips if skips is not None else Counter()
    for root in build_trees(records, languages, skips):
        if root.record["role"] != "prompter":
            skips["tree_not_starting_with_prompter"] += 1
            continue
        chosen = [best_path(root)] if paths == "best" else all_paths(root)
        chosen = [p for p in chosen if p]
        if not chosen:
            skips["tree_without_reply"] += 1
        for path in chosen:
            yield root.record["message_id"], [n.message for n in path]


# ---------------------------------------------------------------- any source

def read_records(source: SourceConfig, skips: Counter, files: list[str] | None = None,
                 mirror: str | None = None) -> Iterator[dict]:
    """Raw records: local files (flag or config) first, else the hub id (or its mirror)."""
    chosen = files or source.files
    if chosen:
        return stream_files(chosen, skips=skips)
    return stream_hub(source.hub_id, source.hub_config, source.split, mirror=mirror, skips=skips)


def iter_conversations(source: SourceConfig, skips: Counter, files: list[str] | None = None,
                       mirror: str | None = None) -> Iterator[tuple[str, list[dict]]]:
    """(group id, messages) pairs; a group (a record, an OASST1 tree) never straddles splits."""
    records = read_records(source, skips, files, mirror)
    if source.format == "oasst1":
        yield from oasst_conversations(records, source.languages, source.paths, skips)
        return
    for n, record in enumerate(records):
        if source.format == "alpaca":
            messages, reason = alpaca_messages(record)
        else:
            messages = record.get("messages")
            reason = None if isinstance(messages, list) and all(isinstance(m, dict) for m in messages) else "missing_field"
            messages = None if reason else [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        if messages is None:
            skips[reason] += 1
            continue
        yield str(n), messages

