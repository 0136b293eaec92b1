"""REPORT.md's evaluation section (lmforge.evaluation.report_table): the all-tasks table and decontamination lines."""

from __future__ import annotations

from pathlib import Path

from lmforge.evaluation.report_table import decontamination_lines, evaluation_table


def task(acc, se, chance, near, **extra):
    return {"acc": acc, "acc_stderr": se, "chance": chance, "near_chance": near, **extra}


def test_table_marks_scores_near_their_baseline():
    pre = {"wikitext": {"word_perplexity": 812.3},
           "boolq": {"accuracy": 0.3783, "accuracy_stderr": 0.0085, "majority_baseline": 0.6217},
           "zero_shot": {"tasks": {"piqa": task(0.58, 0.011, 0.5, False, acc_norm=0.55, acc_norm_stderr=0.011,
                                                acc_norm_near_chance=False),
                                   "copa": task(0.52, 0.05, 0.5, True)}}}
    sft = {"boolq": {"accuracy": 0.6217, "accuracy_stderr": 0.0085, "majority_baseline": 0.6217},
           "zero_shot": {"tasks": {"piqa": task(0.59, 0.011, 0.5, False)}}}
    rows = evaluation_table(pre, sft)
    assert "| WikiText-2 | word perplexity (lower is better) | - | 812.30 | - |" in rows
    boolq = next(r for r in rows if r.startswith("| BoolQ | acc"))
    # pretrain answers "no" to everything: far *below* the majority rate, so it is not "≈ chance" but not signal
    # either; SFT sits exactly on the majority rate: flagged
    assert "0.3783 ± 0.0085 |" in boolq and "0.6217 ± 0.0085 (≈ chance)" in boolq
    assert "| piqa | acc | 0.500 | 0.5800 ± 0.0110 | 0.5900 ± 0.0110 |" in rows
    assert "| piqa | acc_norm | 0.500 | 0.5500 ± 0.0110 | - |" in rows
    assert "| copa | acc | 0.500 | 0.5200 ± 0.0500 (≈ chance) | - |" in rows


def test_decontamination_lines_per_artifact():
    block = {"mode": "drop", "ngram": 13, "contaminated_documents": 5, "documents_dropped": 5,
             "sources": {"wikipedia": {"checked": 4863, "contaminated": 5}},
             "eval_sets": {"wikitext2_test": {"items_touched": 1, "items_checked": 62, "contaminated_documents": 1},
                           "sft_eval_prompts": {"items_touched": 0, "items_checked": 0}},
             "missing": {"piqa": "not in the mirror"}}
    by_stage = {"corpus": [(Path("runs/x/corpus"), {"figures": {"decontamination": block}}),
                           (Path("runs/x/tok_corpus"), {"figures": {"decontamination": {"mode": "off"}}})]}
    lines = decontamination_lines(by_stage)
    assert lines[0].startswith("- `corpus` (corpus, drop, 13-grams): 5 contaminated documents (5 dropped)")
    assert "wikipedia 5/4863" in lines[0] and "wikitext2_test 1/62 items (1 documents)" in lines[0] and "sft_eval_prompts" not in lines[0]
    assert "not checked (missing): piqa" in lines[0]
    assert lines[1] == "- `tok_corpus` (corpus): decontamination off"


def test_sft_summary_says_why_there_is_no_boolq_change_against_pretraining():
    """A pretrain result on another number of questions is found but not compared: the summary
    must say that, not that there are no pretrain results."""
    from lmforge.evaluation.sft_suite import why_not_compared

    assert why_not_compared(None) == "no pretrain results to compare"
    other_count = {"pretrain_results": "evaluation_results/pretrain/tiny/results.json",
                   "pretrain": {"accuracy": 0.6, "examples": 50}, "boolq_accuracy_pretrain": 0.6,
                   "boolq_accuracy_sft": 0.55, "boolq_delta": None, "comparable": False}
    text = why_not_compared(other_count)
    assert "pretrain scored 50 BoolQ questions" in text and "same limit" in text
    no_boolq = {**other_count, "pretrain": None, "boolq_accuracy_pretrain": None}
    assert "has no BoolQ accuracy" in why_not_compared(no_boolq)
