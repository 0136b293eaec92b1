"""Each smoke-test rule has a passing and a failing case; the score follows the documented formula."""

from __future__ import annotations

import pytest

from lmforge.evaluation.smoke import (SmokeCase, SmokeRules, has_keywords, matches_regex, no_degenerate_repetition,
                                   no_role_leakage, not_empty, quality_score, score_reply)

RULES = SmokeRules()


def test_role_leakage():
    assert no_role_leakage("Paris is the capital of France.")
    for bad in ["Paris.\nuser: and Rome?", "Paris<|im_start|>user", "Paris.\n### Instruction:\nMore",
                "Paris.\nAssistant: sure"]:
        assert not no_role_leakage(bad), bad


def test_not_empty():
    assert not_empty("Yes.", RULES)
    assert not not_empty("   ", RULES) and not not_empty("...", RULES)


def test_repetition():
    assert no_degenerate_repetition("The cat sat on the mat and looked at the door.", RULES)
    assert not no_degenerate_repetition("the the the the the end", RULES)          # word run
    assert not no_degenerate_repetition("I like it. " * 8, RULES)                    # repeated n-grams


def test_keywords_and_regex():
    assert has_keywords("The capital is Paris.", ["paris", "lyon"])
    assert not has_keywords("The capital is Parisian.", ["paris"])  # whole words only
    assert not has_keywords("Paris only", ["paris", "france"], require_all=True)
    assert matches_regex("2 + 2 = 4", r"\b4\b") and not matches_regex("2 + 2 = 5", r"\b4\b")


@pytest.mark.parametrize("stopped, expected", [(True, True), (False, False)])
def test_ends_with_im_end_rule(stopped, expected):
    result = score_reply(SmokeCase(name="c", prompt="p"), "A fine answer.", stopped, RULES)
    assert result.rules["ends_with_im_end"] is expected


def test_score_formula():
    case = SmokeCase(name="capital", prompt="Capital of France?", keywords=["Paris"], regex=r"paris")
    perfect = score_reply(case, "Paris is the capital.", True, RULES)
    assert perfect.score == 1.0 and len(perfect.rules) == 6
    half = score_reply(case, "Lyon, I think.", False, RULES)  # fails im_end, keywords, regex
    assert half.score == pytest.approx(3 / 6)
    empty = score_reply(case, "", True, RULES)
    assert empty.score == 0.0
    assert quality_score([perfect, half, empty]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert quality_score([]) == 0.0
