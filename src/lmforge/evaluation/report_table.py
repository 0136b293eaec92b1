"""REPORT.md's evaluation section: every task in one table, pretrain against SFT, beside its chance
baseline, and what decontamination removed from the training data.

Called by lmforge.pipeline.report (one line); reads only what the stages wrote: the eval and eval-sft
results JSON files and the corpus / sft-data manifests' `decontamination` figures.

A score counts as signal when it lies more than 2 standard errors from its baseline: chance
for the zero-shot tasks (lmforge.evaluation.zeroshot.near_chance), the majority class for BoolQ. Small
models often answer every BoolQ question "no", which scores the majority rate and is no signal.
"""

from __future__ import annotations

import json
from pathlib import Path

NOT_SIGNAL = "≈ chance"


def _results(path: Path, manifest: dict) -> dict:
    """The results JSON an evaluation stage wrote (its first .json output), or {}."""
    names = [o.get("path") for o in manifest.get("outputs", []) if isinstance(o, dict)]
    for name in [n for n in names if n and n.endswith(".json")] + ["results.json"]:
        try:
            data = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def _pick(artifacts: list[tuple[Path, dict]]) -> dict:
    """The last evaluation of a stage that left results."""
    for path, manifest in reversed(artifacts or []):
        found = _results(path, manifest)
        if found:
            return found
    return {}


def _cell(score: float | None, stderr: float | None, flat: bool | None) -> str:
    if score is None:
        return "-"
    text = f"{score:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")
    return text + (f" ({NOT_SIGNAL})" if flat else "")


def _boolq_cell(bq: dict | None) -> str:
    if not isinstance(bq, dict) or not isinstance(bq.get("accuracy"), (int, float)):
        return "-"
    base = bq.get("majority_baseline")
    flat = None if base is None else abs(bq["accuracy"] - base) <= 2 * (bq.get("accuracy_stderr") or 0.0)
    return _cell(bq["accuracy"], bq.get("accuracy_stderr"), flat)


def _baseline(*blocks) -> str:
    base = next((b.get("majority_baseline") for b in blocks if isinstance(b, dict) and b.get("majority_baseline")
                 is not None), None)
    return "-" if base is None else f"{base:.3f} (majority)"


def _zero_shot_rows(pre: dict, sft: dict) -> list[str]:
    tasks_pre = (pre.get("zero_shot") or {}).get("tasks", {})
    tasks_sft = (sft.get("zero_shot") or {}).get("tasks", {})
    rows = []
    for name in list(dict.fromkeys([*tasks_pre, *tasks_sft])):
        a, b = tasks_pre.get(name, {}), tasks_sft.get(name, {})
        chance = a.get("chance", b.get("chance"))
        rows.append(f"| {name} | acc | {chance:.3f} | {_cell(a.get('acc'), a.get('acc_stderr'), a.get('near_chance'))} | "
                    f"{_cell(b.get('acc'), b.get('acc_stderr'), b.get('near_chance'))} |")
        if "acc_norm" in a or "acc_norm" in b:
            rows.append(f"| {name} | acc_norm | {chance:.3f} | "
                        f"{_cell(a.get('acc_norm'), a.get('acc_norm_stderr'), a.get('acc_norm_near_chance'))} | "
                        f"{_cell(b.get('acc_norm'), b.get('acc_norm_stderr'), b.get('acc_norm_near_chance'))} |")
    return rows


def evaluation_table(pre: dict, sft: dict) -> list[str]:
    """The table: one row per task and metric, baseline, pretrain, SFT."""
    lines = ["| task | metric | chance / baseline | pretrain | SFT |", "|---|---|---|---|---|"]
    wt = pre.get("wikitext") or {}
    if isinstance(wt.get("word_perplexity"), (int, float)):
        lines.append(f"| WikiText-2 | word perplexity (lower is better) | - | {wt['word_perplexity']:.2f} | - |")
    if pre.get("boolq") or sft.get("boolq"):
        lines.append(f"| BoolQ | acc | {_baseline(pre.get('boolq'), sft.get('boolq'))} | "
                     f"{_boolq_cell(pre.get('boolq'))} | {_boolq_cell(sft.get('boolq'))} |")
    if sft.get("boolq_chatml"):
        lines.append(f"| BoolQ (ChatML prompt) | acc | {_baseline(sft['boolq_chatml'])} | - | "
                     f"{_boolq_cell(sft['boolq_chatml'])} |")
    sp = sft.get("sft_perplexity") if isinstance(sft.get("sft_perplexity"), dict) else {}
    if isinstance(sp.get("perplexity"), (int, float)):
        lines.append(f"| SFT val split | perplexity (assistant tokens) | - | - | {sp['perplexity']:.2f} |")
    lines += _zero_shot_rows(pre, sft)
    return lines


def decontamination_lines(by_stage: dict) -> list[str]:
    """One line per corpus / sft-data artifact that ran the check, plus the evaluation items touched."""
    lines = []
    for stage in ("corpus", "sft-data"):
        for path, manifest in by_stage.get(stage, []):
            block = (manifest.get("figures") or {}).get("decontamination")
            if not block:
                continue
            if block.get("mode", "off") == "off":
                lines.append(f"- `{path.name}` ({stage}): decontamination off")
                continue
            per_source = ", ".join(f"{name} {s['contaminated']}/{s['checked']}" for name, s in block["sources"].items())
            touched = ", ".join(f"{name} {s['items_touched']}/{s['items_checked']} items "
                                f"({s.get('contaminated_documents', 0)} documents)"
                                for name, s in block["eval_sets"].items() if s["items_checked"])
            lines.append(f"- `{path.name}` ({stage}, {block['mode']}, {block['ngram']}-grams): "
                         f"{block['contaminated_documents']:,} contaminated documents "
                         f"({block['documents_dropped']:,} dropped); per source: {per_source or 'none'}; "
                         f"evaluation items touched: {touched or 'none checked'}"
                         + (f"; not checked (missing): {', '.join(block['missing'])}" if block["missing"] else ""))
    return lines


def evaluation_section(by_stage: dict, run_dir: Path) -> list[str]:
    """REPORT.md's "Evaluation" section (empty when no evaluation ran)."""
    pre, sft = _pick(by_stage.get("eval", [])), _pick(by_stage.get("eval-sft", []))
    decontam = decontamination_lines(by_stage)
    if not pre and not sft and not decontam:
        return []
    lines = ["## Evaluation: all tasks, pretrain against SFT", ""]
    if pre or sft:
        lines += ["Scores ± standard error. \"≈ chance\": within 2 standard errors of the chance (or, for BoolQ,",
                  "majority-class) baseline, so not evidence of skill at this model size.", ""]
        lines += evaluation_table(pre, sft) + [""]
    if decontam:
        lines += ["### Decontamination (13-gram overlap of training data with the evaluation sets)", ""]
        lines += decontam + [""]
    return lines
