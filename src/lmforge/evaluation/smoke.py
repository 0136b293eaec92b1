"""Smoke tests for a chat model: machine-checkable rules on its replies, scored 0-1.

Each smoke case is a prompt with optional expectations (keywords, a regex). A reply is
the text the model generated after `<|im_start|>assistant\\n`, up to (not including)
its first `<|im_end|>`, plus whether generation actually stopped on `<|im_end|>`.

Rules (each passes or fails):
- ends_with_im_end: generation stopped on `<|im_end|>` before the token limit.
- no_role_leakage: the reply does not start another turn: no `<|im_start|>` /
  `<|im_end|>` text, no line that opens with a role name ("user:", "assistant\\n"...)
  and no Alpaca-style "### Instruction" / "### Response" header.
- not_empty: at least `min_words` words with a letter or digit.
- no_degenerate_repetition: at most `max_repeated_ngram_share` of the word n-grams
  are repeats, and no word repeats more than `max_word_run` times in a row.
- keywords (when the case lists some): at least one keyword occurs, case-insensitive,
  as a whole word or phrase (`keywords_all`: every one of them).
- regex (when the case gives one): the pattern matches somewhere (case-insensitive).

Quality score of a case = passed rules / applicable rules, except that an empty reply
scores 0 (an empty answer trivially passes the repetition and leakage rules, and must
not earn credit for it). The suite's quality score is the mean over cases, in [0, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lmforge.config import spec

_ROLE_LEAK = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|^\s*(user|assistant|system|human|prompter)\s*(:|\n|$)|###\s*(instruction|response|input)",
    re.IGNORECASE | re.MULTILINE,
)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class SmokeRules:
    min_words: int = spec(1, min=1, help="words a reply needs to count as not empty")
    ngram: int = spec(3, min=1, help="n-gram size for the repetition rule")
    max_repeated_ngram_share: float = spec(0.5, min=0.0, max=1.0, help="largest share of repeated n-grams allowed")
    max_word_run: int = spec(4, min=1, help="longest run of one word repeated back to back")


@dataclass
class SmokeCase:
    name: str = spec(help="short identifier")
    prompt: str = spec(help="the user message")
    system: str | None = spec(None, help="optional system message")
    keywords: list[str] = spec(default_factory=list, help="at least one must occur (case-insensitive)")
    keywords_all: bool = spec(False, help="require every keyword instead of one")
    regex: str | None = spec(None, help="a pattern the reply must match (case-insensitive)")

    def check(self) -> list[str]:
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                return [f"regex: invalid pattern {self.regex!r}: {exc}"]
        return []


@dataclass
class SmokeResult:
    case: str
    reply: str
    rules: dict[str, bool] = field(default_factory=dict)
    score: float = 0.0


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ends_with_im_end(stopped_on_im_end: bool) -> bool:
    return bool(stopped_on_im_end)


def no_role_leakage(reply: str) -> bool:
    return _ROLE_LEAK.search(reply) is None


def not_empty(reply: str, rules: SmokeRules) -> bool:
    return len(words(reply)) >= rules.min_words


def no_degenerate_repetition(reply: str, rules: SmokeRules) -> bool:
    tokens = words(reply)
    run = longest = 1 if tokens else 0
    for previous, current in zip(tokens, tokens[1:]):
        run = run + 1 if current == previous else 1
        longest = max(longest, run)
    if longest > rules.max_word_run:
        return False
    grams = [tuple(tokens[i:i + rules.ngram]) for i in range(len(tokens) - rules.ngram + 1)]
    if len(grams) < 2:
        return True
    repeated_share = 1 - len(set(grams)) / len(grams)
    return repeated_share <= rules.max_repeated_ngram_share


# The rules that judge what a reply says (the others judge its form).
CONTENT_RULES = ("keywords", "regex")


def has_keywords(reply: str, keywords: list[str], require_all: bool = False) -> bool:
    found = [re.search(rf"(?<!\w){re.escape(k.lower())}(?!\w)", reply.lower()) is not None for k in keywords]
    return all(found) if require_all else any(found)


def matches_regex(reply: str, pattern: str) -> bool:
    return re.search(pattern, reply, re.IGNORECASE) is not None


def score_reply(case: SmokeCase, reply: str, stopped_on_im_end: bool, rules: SmokeRules) -> SmokeResult:
    """Apply every applicable rule to one reply and score it."""
    checks = {
        "ends_with_im_end": ends_with_im_end(stopped_on_im_end),
        "no_role_leakage": no_role_leakage(reply),
        "not_empty": not_empty(reply, rules),
        "no_degenerate_repetition": no_degenerate_repetition(reply, rules),
    }
    if case.keywords:
        checks["keywords"] = has_keywords(reply, case.keywords, case.keywords_all)
    if case.regex:
        checks["regex"] = matches_regex(reply, case.regex)
    score = sum(checks.values()) / len(checks) if checks["not_empty"] else 0.0
    return SmokeResult(case=case.name, reply=reply, rules=checks, score=score)


def quality_score(results: list[SmokeResult]) -> float:
    """Mean case score, 0 for an empty suite."""
    return sum(r.score for r in results) / len(results) if results else 0.0


def rule_pass_rates(results: list[SmokeResult]) -> dict[str, float]:
    """Share of cases passing each rule (over the cases where it applies)."""
    totals: dict[str, list[int]] = {}
    for r in results:
        for name, ok in r.rules.items():
            totals.setdefault(name, []).append(int(ok))
    return {name: sum(v) / len(v) for name, v in totals.items()}
