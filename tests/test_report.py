"""`lmforge report`: REPORT.md and its plots from a run directory's artifacts and metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmforge.artifacts import atomic_write_json, write_manifest
from lmforge.cli import main as cli
from lmforge.report import find_value, read_metrics

from test_verify import build_run, _sha

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(path: Path, steps: int, start_loss: float) -> None:
    rows = [{"step": s, "loss": start_loss * math.exp(-s / 20), "lr": 3e-4 * min(1, s / 5),
             "tok_per_s": 1000.0 + s} for s in range(1, steps + 1)]
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
    assert "## Métriques de Référence" in text
    assert "| Final Loss | 2.8-3.2 | 2.950 |" in text
    assert "| WikiText-2 PPL | 45-70 | 61.5 |" in text
    assert "| BoolQ Accuracy | 58-68% | 60.0% |" in text
    assert "| Tokens/sec (4090) | ~600-800 | 1,234 |" in text or "| Tokens/sec (4090) | ~600-800 | 1,235 |" in text
    assert "| SFT Perplexity | 35-50 | 41.2 |" in text
    assert "| BoolQ Accuracy | 68-75% | 70.0% |" in text
    assert "| Smoke Quality | 0.65-0.80 | 0.72 |" in text
    assert "| VRAM (BF16) | ~8-12 GB | n/a |" in text                  # a CPU run has none: said, not invented
    # SFT final loss falls back to the last logged loss
    last = 2.5 * math.exp(-30 / 20)
    assert f"| Final Loss | 1.5-2.0 | {last:.3f} | metrics.jsonl" in text
    # timings and stages
    assert "| 5 | pretrain | pretrain | ran | 2.0 min | 4.0 min |" in text
    assert "| 9 | eval-sft | eval-sft | ran | 7.5 s | 15.0 s |" in text
    # plots exist, are PNGs and are linked
    for stage in ("pretrain", "sft"):
        for kind in ("loss", "lr", "throughput"):
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
    assert "| Tokens/sec (4090) | ~600-800 | 1,020 | metrics.jsonl (median of 40 logged values" in text
