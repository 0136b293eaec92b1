"""Alpaca and OASST1 conversion on small fixtures: fields, tree rebuild, best path, all paths, filters."""

from __future__ import annotations

import gzip
import json
from collections import Counter

from lmforge.data.sft_sources import SourceConfig, alpaca_messages, iter_conversations, oasst_conversations


def msg(mid, parent, role, text, rank=None, lang="en", deleted=False):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank,
            "lang": lang, "deleted": deleted, "message_tree_id": "t"}


# Tree (file order deliberately not best-first):
#   q1 (prompter)
#   ├── a1b rank 1   └── q2b
#   ├── a1a rank 0   ├── q2a ── a2x rank 1, a2y rank 0
#   │                └── q2c (fr) ── a2z rank 0
#   └── a1c deleted
OASST = [
    msg("q1", None, "prompter", "What is tea?"),
    msg("a1b", "q1", "assistant", "A drink (second best).", rank=1),
    msg("q2b", "a1b", "prompter", "Hot or cold?"),
    msg("a1a", "q1", "assistant", "A drink made from leaves.", rank=0),
    msg("q2a", "a1a", "prompter", "Which leaves?"),
    msg("a2x", "q2a", "assistant", "Maybe mint.", rank=1),
    msg("a2y", "q2a", "assistant", "Camellia sinensis.", rank=0),
    msg("q2c", "a1a", "prompter", "Quelles feuilles ?", lang="fr"),
    msg("a2z", "q2c", "assistant", "Du thé.", rank=0, lang="fr"),
    msg("a1c", "q1", "assistant", "Removed.", rank=0, deleted=True),
    msg("lonely", None, "prompter", "Anyone?"),
    msg("orphan", "missing-parent", "assistant", "Lost reply.", rank=0),
]


def texts(conv):
    return [(m["role"], m["content"]) for m in conv]


def test_alpaca_instruction_input_output():
    conv, reason = alpaca_messages({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"})
    assert reason is None
    assert texts(conv) == [("user", "Translate.\n\nBonjour"), ("assistant", "Hello")]
    conv, _ = alpaca_messages({"instruction": "Say hi.", "input": "", "output": "Hi"})
    assert texts(conv) == [("user", "Say hi."), ("assistant", "Hi")]
    assert alpaca_messages({"instruction": "x", "input": "", "output": " "}) == (None, "empty")
    assert alpaca_messages({"instruction": "x"}) == (None, "missing_field")


def test_oasst_best_path_follows_rank_zero_multi_turn():
    skips = Counter()
    convs = list(oasst_conversations(OASST, languages=["en"], paths="best", skips=skips))
    assert len(convs) == 1
    tree, conv = convs[0]
    assert tree == "q1"
    assert texts(conv) == [("user", "What is tea?"), ("assistant", "A drink made from leaves."),
                           ("user", "Which leaves?"), ("assistant", "Camellia sinensis.")]
    assert skips["deleted"] == 1 and skips["language_filtered"] == 2
    assert skips["orphan_message"] == 1 and skips["tree_without_reply"] == 1


def test_oasst_all_paths_trimmed_to_assistant_and_language_option():
    convs = [texts(c) for _, c in oasst_conversations(OASST, languages=None, paths="all")]
    endings = sorted(c[-1][1] for c in convs)
    assert endings == sorted(["A drink (second best).", "Maybe mint.", "Camellia sinensis.", "Du thé."])
    assert all(c[-1][0] == "assistant" for c in convs)
    # the unanswered follow-up "Hot or cold?" is trimmed away, leaving the first exchange
    assert [("user", "What is tea?"), ("assistant", "A drink (second best).")] in convs


def test_iter_conversations_from_local_files(tmp_path):
    path = tmp_path / "oasst.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in OASST:
            f.write(json.dumps(record) + "\n")
        f.write("{not json\n")
    skips = Counter()
    source = SourceConfig(format="oasst1", files=[str(path)], languages=["en"])
    convs = list(iter_conversations(source, skips))
    assert len(convs) == 1 and skips["malformed_json"] == 1
