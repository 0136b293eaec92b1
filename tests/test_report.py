"""`lmforge report`: REPORT.md and its plots from a run directory's artifacts and metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmforge.artifacts import atomic_write_json, write_manifest
from lmforge.cli import main as cli
from lmforge.pipeline.report import find_value, read_metrics

from test_verify import build_run, _sha

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(path: Path, steps: int, start_loss: float) -> None:
    rows = [{"step": s, "loss": start_loss * math.exp(-s / 20), "lr": 3e-4 * min(1, s / 5), "grad_norm": 1 / s,
             "tokens": 512 * s, "tok_per_s": 1000.0 + s} for s in range(1, steps + 1)]
    rows += [{"step": 10, "val_loss": 4.2}, {"step": 20, "val_loss": 3.1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")


def build_report_run(root: Path, tokenizer: Path) -> Path:
    """A run tree with a runner record, training metrics and evaluation results."""
    run = build_run(root, tokenizer)
    sha = _sha(tokenizer)
    pre = run / "checkpoints/pretrain/tiny"
    _metrics(pre / "metrics.jsonl", 40, 9.0)
    final = pre / "final"
    write_manifest(final, "pretrain", config={}, outputs=["model.safetensors"], tokenizer_sha256=sha,
                   figures={"final_loss": 2.95, "tokens_per_sec": 1234.5, "steps": 40})
    sft = run / "checkpoints/sft/tiny"
    (sft / "final").mkdir(parents=True)
    (sft / "final/model.safetensors").write_bytes(b"w")
    _metrics(sft / "metrics.jsonl", 30, 2.5)
    write_manifest(sft / "final", "sft", config={}, outputs=["model.safetensors"], tokenizer_sha256=sha,
                   figures={"steps": 30})
    ev = run / "evaluation_results/sft/tiny"
    ev.mkdir(parents=True)
    atomic_write_json(ev / "results.json", {"tokenizer_sha256": sha, "metrics": {
        "sft_perplexity": 41.25, "boolq": {"accuracy": 0.7, "stderr": 0.01}, "smoke": {"quality": 0.72}}})
    write_manifest(ev, "eval-sft", config={}, outputs=["results.json"], tokenizer_sha256=sha)
    pre_eval = run / "evaluation_results/pretrain/tiny"
    atomic_write_json(pre_eval / "results.json", {"tokenizer_sha256": sha, "wikitext": {"word_perplexity": 61.5},
                                                  "boolq": {"accuracy": 0.6}})
    write_manifest(pre_eval, "eval", config={}, outputs=["results.json"], tokenizer_sha256=sha)
    stages = {"pretrain": ("checkpoints/pretrain", 5, "pretrain", 120.0), "sft": ("checkpoints/sft", 8, "sft", 33.3),
              "eval": ("evaluation_results/pretrain/tiny", 6, "eval", 12.0),
              "eval-sft": ("evaluation_results/sft/tiny", 9, "eval-sft", 7.5),
              "tokenizer": ("data/models/tokenizers/spm_32k", 2, "tokenizer", 3.0)}
    atomic_write_json(run / "pipeline_run.json", {"pipeline": "p.json", "stages": {
        name: {"index": i, "verb": verb, "status": "ran", "ran_wall_s": wall, "ran_cpu_s": 2 * wall, "output": str(run / out)}
        for name, (out, i, verb, wall) in stages.items()}})
    return run


def test_report_has_metrics_plots_timings_and_lineage(tmp_path, tiny_tokenizer, capsys):
    run = build_report_run(tmp_path / "run", tiny_tokenizer)
    assert cli(["report", str(run)]) == 0
    assert "REPORT.md" in capsys.readouterr().out
    text = (run / "REPORT.md").read_text()
    # the plan's reference tables, expected beside obtained
    assert "## Reference metrics" in text and "| Métrique | Attendu | Obtenu | source |" in text
    assert "| Final Loss | 2.8-3.2 | 2.950 |" in text
    assert "| WikiText-2 PPL | 45-70 | 61.5 |" in text
    assert "| BoolQ Accuracy | 58-68% | 60.0% |" in text
    assert "| Tokens/sec (4090) | ~600-800 | 1,234 (CPU: not comparable) |" in text \
        or "| Tokens/sec (4090) | ~600-800 | 1,235 (CPU: not comparable) |" in text
    assert "| SFT Perplexity | 35-50 | 41.2 |" in text
    assert "| BoolQ Accuracy | 68-75% | 70.0% |" in text
    assert "| Smoke Quality | 0.65-0.80 | 0.72 (format-only) |" in text
    assert "| VRAM (BF16) | ~8-12 GB | n/a |" in text                  # a CPU run has none: said, not invented
    # SFT final loss falls back to the last logged loss
    last = 2.5 * math.exp(-30 / 20)
    assert f"| Final Loss | 1.5-2.0 | {last:.3f} | metrics.jsonl" in text
    # timings and stages
    assert "| 5 | pretrain | pretrain | ran | 2.0 min | 4.0 min |" in text
    assert "| 9 | eval-sft | eval-sft | ran | 7.5 s | 15.0 s |" in text
    # plots exist, are PNGs and are linked
    for stage in ("pretrain", "sft"):
        for kind in ("loss", "lr", "grad_norm", "throughput"):
            png = run / "plots" / f"{stage}_{kind}.png"
            assert png.read_bytes()[:8] == PNG_MAGIC
            assert f"](plots/{stage}_{kind}.png)" in text
    # lineage and machine
    assert "## Tokenizer lineage" in text and "Verdict: all artifacts agree" in text
    assert "## Machine" in text and "CPU cores" in text


def test_report_shows_a_lineage_failure(tmp_path, tiny_tokenizer):
    run = build_report_run(tmp_path / "run", tiny_tokenizer)
    write_manifest(run / "evaluation_results/sft/tiny", "eval-sft", config={}, outputs=["results.json"])
    assert cli(["report", str(run)]) == 0
    assert "Verdict: FAILED" in (run / "REPORT.md").read_text()


def test_report_without_runner_record_scans_the_directory(tmp_path, tiny_tokenizer):
    run = build_run(tmp_path / "run", tiny_tokenizer)
    assert cli(["report", str(run)]) == 0
    text = (run / "REPORT.md").read_text()
    assert "stages found by their manifests" in text and "| | pack |" in text
    assert "No metrics.jsonl found." in text


def test_report_on_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_find_value_and_metrics_reader(tmp_path):
    data = {"wikitext": {"word_perplexity": 50.0}, "tasks": {"boolq": {"acc": 0.61, "n": 3}}, "flag": True}
    assert find_value(data, ("word_perplexity",)) == 50.0
    assert find_value(data, ("boolq.accuracy", "boolq.acc")) == 0.61
    assert find_value(data, ("flag",)) is None and find_value(data, ("missing",)) is None
    _metrics(tmp_path / "m.jsonl", 3, 1.0)
    rows = read_metrics(tmp_path / "m.jsonl")
    assert len(rows) == 5 and rows[0]["step"] == 1                          # the bad line is skipped


def test_throughput_falls_back_to_logged_median(tmp_path, tiny_tokenizer):
    run = build_report_run(tmp_path / "run", tiny_tokenizer)
    final = run / "checkpoints/pretrain/tiny/final"
    write_manifest(final, "pretrain", config={}, outputs=["model.safetensors"], tokenizer_sha256=_sha(tiny_tokenizer),
                   figures={"final_loss": 2.95})
    assert cli(["report", str(run)]) == 0
    text = (run / "REPORT.md").read_text()
    assert "| Tokens/sec (4090) | ~600-800 | 1,020 (CPU: not comparable) | metrics.jsonl (median of 40 logged values" in text


# ---------------------------------------------------------------- honest reports

def _results(run: Path, rel: str, data: dict) -> None:
    path = run / rel / "results.json"
    old = json.loads(path.read_text())
    atomic_write_json(path, {**old, **data})


def test_headings_are_english_and_french_stays_in_the_reference_table(tmp_path, tiny_tokenizer):
    import re

    run = build_report_run(tmp_path / "run", tiny_tokenizer)
    assert cli(["report", str(run)]) == 0
    text = (run / "REPORT.md").read_text()
    headings = re.findall(r"^#+ .*$", text, flags=re.M)
    assert headings and not [h for h in headings if re.search(r"[éèàç]|Métrique|Attendu|Obtenu", h)], headings


def test_degenerate_and_baseline_classifiers_are_flagged(tmp_path, tiny_tokenizer):
    run = build_report_run(tmp_path / "run", tiny_tokenizer)
    _results(run, "evaluation_results/pretrain/tiny", {"boolq": {
        "accuracy": 0.5, "accuracy_stderr": 0.035, "majority_baseline": 0.5, "yes_rate": 0.0}})
    _results(run, "evaluation_results/sft/tiny", {"metrics": {}, "boolq": {
        "accuracy": 0.63, "accuracy_stderr": 0.034, "majority_baseline": 0.62, "yes_rate": 0.4}})
    assert cli(["report", str(run)]) == 0
    text = (run / "REPORT.md").read_text()
    assert "| BoolQ Accuracy | 58-68% | 50.0% (degenerate: always 'no') |" in text
    assert "The model answered 'no' to every question" in text
    assert "| BoolQ Accuracy | 68-75% | 63.0% (≈ majority baseline) |" in text
    assert "within one standard error (3.4%) of always answering the majority class (62.0%)" in text


def test_a_real_classifier_is_not_flagged(tmp_path, tiny_tokenizer):
    run = build_report_run(tmp_path / "run", tiny_tokenizer)
    _results(run, "evaluation_results/pretrain/tiny", {"boolq": {
        "accuracy": 0.66, "accuracy_stderr": 0.03, "majority_baseline": 0.55, "yes_rate": 0.48}})
    assert cli(["report", str(run)]) == 0
    assert "| BoolQ Accuracy | 58-68% | 66.0% |" in (run / "REPORT.md").read_text()


def test_derived_data_is_named_in_results_and_report(tmp_path, tiny_tokenizer, monkeypatch):
    """A mirror written by quickstart-data says what its sets are; results and REPORT.md repeat it."""
    from lmforge.evaluation.datasets import hub_source, load_boolq
    from lmforge.data.quickstart_data import DERIVED_MARKER, DERIVED_WHAT

    mirror = tmp_path / "q" / "mirror"
    boolq_dir = mirror / "aps/super_glue/boolq/validation"
    boolq_dir.mkdir(parents=True)
    (boolq_dir / "quickstart.jsonl").write_text(json.dumps(
        {"question": "does it mention x", "passage": "x y", "label": 1, "idx": 0}) + "\n")
    hub = ("aps/super_glue", "boolq", "validation")
    assert hub_source(hub, mirror) == "aps/super_glue (boolq, validation)"     # a plain mirror: the real name
    atomic_write_json(tmp_path / "q" / DERIVED_MARKER, {"datasets": DERIVED_WHAT})
    source = load_boolq(mirror=mirror, hub=hub).source
    assert source.startswith("derived quickstart data: generated 'does the text mention") and "not the real" in source

    run = build_report_run(tmp_path / "run", tiny_tokenizer)
    _results(run, "evaluation_results/pretrain/tiny", {
        "wikitext": {"word_perplexity": 61.5, "source": hub_source(("EleutherAI/wikitext_document_level",
                                                                     "wikitext-2-raw-v1", "test"), mirror)},
        "boolq": {"accuracy": 0.6, "source": source}})
    assert cli(["report", str(run)]) == 0
    text = (run / "REPORT.md").read_text()
    assert "| WikiText-2 PPL | 45-70 | 61.5 (derived data) |" in text
    assert "| BoolQ Accuracy | 58-68% | 60.0% (derived data) |" in text
    assert "so it is not a WikiText-2 figure" in text and "so it is not a BoolQ figure" in text


def test_plot_helpers_tokens_axis_and_plan_ranges():
    from lmforge.pipeline.report import _at_tokens, _tokens_axis, expected_range

    assert expected_range("2.8-3.2") == (2.8, 3.2) and expected_range("~600-800") == (600.0, 800.0)
    assert expected_range("~8-12 GB") == (8.0, 12.0) and expected_range("n/a") is None
    axis = _tokens_axis([{"step": 10, "tokens": 5120}, {"step": 20, "tokens": 10240}, {"step": 15, "val_loss": 3.0}])
    assert _at_tokens([10, 15, 20], axis) == [5120, 7680, 10240]     # evaluation steps placed on the tokens axis
