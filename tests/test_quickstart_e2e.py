"""The offline quickstart end to end: `lmforge run config/quickstart/pipeline.json`.

All nine steps with the real verbs on the built-in corpus, then: every stage ran, the
lineage check passes, REPORT.md and its plots exist, pretraining loss clearly fell, the
SFT model answers in ChatML, a second run skips every stage, and a pipeline killed in
the middle of pretraining resumes and ends with the same loss as the uninterrupted run.
Marked `slow` (deselect with `-m "not slow"`); it runs in CI by default.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "config/quickstart/pipeline.json"
STAGES = ["corpus", "quickstart_data", "tokenizer", "pack", "pretrain", "eval", "sft_data_alpaca",
          "sft_data_oasst1", "sft", "eval_sft"]


def _env() -> dict[str, str]:
    # The offline path on purpose: a real mirror in the caller's environment would replace
    # the derived evaluation and SFT data.
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_MIRROR"}
    env["LMFORGE_PROGRESS"] = "0"
    return env


def lmforge(*argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *argv], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("quickstart") / "run"
    proc = lmforge("run", str(PIPELINE), "--run-dir", str(run))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run, proc


def _record(run: Path) -> dict:
    return json.loads((run / "pipeline_run.json").read_text())["stages"]


def _losses(metrics: Path) -> list[float]:
    return [row["loss"] for row in map(json.loads, metrics.read_text().splitlines()) if "loss" in row]


def test_every_stage_ran_and_lineage_holds(quickstart):
    run, proc = quickstart
    record = _record(run)
    assert [name for name in STAGES if record[name]["status"] == "ran"] == STAGES
    assert "all" in proc.stdout and "artifacts agree on one tokenizer" in proc.stdout
    check = lmforge("verify", str(run))
    assert check.returncode == 0, check.stdout
    assert "MISMATCH" not in check.stdout and "MISSING" not in check.stdout


def test_report_written_with_metrics_and_plots(quickstart):
    run, _ = quickstart
    text = (run / "REPORT.md").read_text()
    assert "## Reference metrics" in text and "Verdict: all artifacts agree" in text
    for label in ("| Final Loss | 2.8-3.2 |", "| WikiText-2 PPL | 45-70 |", "| SFT Perplexity | 35-50 |",
                  "| Smoke Quality | 0.65-0.80 |"):
        row = next(line for line in text.splitlines() if line.startswith(label))
        assert "n/a" not in row, row
    # the quickstart's evaluation data are derived stand-ins, and the report says so
    for label in ("| WikiText-2 PPL | 45-70 |", "| SFT Perplexity | 35-50 |"):
        assert "(derived data" in next(line for line in text.splitlines() if line.startswith(label))
    assert "format-only" in next(line for line in text.splitlines() if line.startswith("| Smoke Quality"))
    results = json.loads((run / "evaluation_results/pretrain/results.json").read_text())
    assert results["wikitext"]["source"].startswith("derived quickstart data")
    assert results["boolq"]["source"].startswith("derived quickstart data")
    for png in ("pretrain_loss", "pretrain_lr", "pretrain_grad_norm", "pretrain_throughput", "sft_loss"):
        assert (run / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_pretraining_loss_clearly_falls(quickstart):
    run, _ = quickstart
    losses = _losses(run / "checkpoints/pretrain/quickstart/metrics.jsonl")
    vocab = json.loads((run / "data/tokenizer/tokenizer_config.json").read_text())["vocab_size"]
    # An untrained model scores ln(vocab) (8.3 nats for 4,096 tokens); the first logged value
    # already averages the first 20 steps.
    assert losses[-1] < math.log(vocab) - 2.0, losses
    assert losses[-1] < losses[0] - 0.5, losses


def test_sft_model_answers_in_chatml(quickstart):
    """The merged SFT model carries the ChatML template and answers inside the assistant turn."""
    run, _ = quickstart
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "checkpoints/sft/quickstart/final")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                     add_generation_prompt=True)
    assert "<|im_start|>user\nHello<|im_end|>\n" in prompt and prompt.endswith("<|im_start|>assistant\n")
    results = json.loads((run / "evaluation_results/sft/results.json").read_text())
    rates = results["smoke"]["rule_pass_rates"]
    assert rates["no_role_leakage"] == 1.0 and rates["not_empty"] > 0


def test_sft_model_closes_its_turn_with_im_end(quickstart):
    """Answering in ChatML means ending the reply with <|im_end|>, as the SFT data taught."""
    run, _ = quickstart
    results = json.loads((run / "evaluation_results/sft/results.json").read_text())
    assert results["smoke"]["rule_pass_rates"]["ends_with_im_end"] >= 0.5, results["smoke"]


def test_second_run_skips_every_stage(quickstart):
    run, _ = quickstart
    proc = lmforge("run", str(PIPELINE), "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(run)
    assert [record[name]["status"] for name in STAGES] == ["skipped"] * len(STAGES)
    assert f"0 stage(s) ran, {len(STAGES)} skipped" in proc.stdout


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


# The kill test trains the quickstart's own configs, shortened (a reference, a killed run and
# its resume would cost three full pretraining stages at 600 steps).
SHORT_PRETRAIN = {"max_steps": 80, "warmup_steps": 8, "save_every": 20, "eval_every": 40, "log_every": 10}


def _short_pretrain_pipeline(where: Path) -> Path:
    """config/quickstart copied under `where`, with pretrain.json's schedule shortened."""
    folder = shutil.copytree(PIPELINE.parent, where / "quickstart_short")
    config = json.loads((folder / "pretrain.json").read_text())
    config["training"].update(SHORT_PRETRAIN)
    (folder / "pretrain.json").write_text(json.dumps(config, indent=2))
    return folder / PIPELINE.name


def test_killed_during_pretraining_resumes_to_the_same_loss(quickstart, tmp_path):
    run, _ = quickstart
    pipeline = _short_pretrain_pipeline(tmp_path)
    reference, other = tmp_path / "reference", tmp_path / "run"
    for target in (reference, other):
        shutil.copytree(run / "data", target / "data")      # same packed data and tokenizer
    only_pretrain = ("--only", "pretrain", "--no-report")
    uninterrupted = lmforge("run", str(pipeline), "--run-dir", str(reference), *only_pretrain)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    argv = [sys.executable, "-m", "lmforge.cli", "run", str(pipeline), "--run-dir", str(other), *only_pretrain]
    proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first_ckpt = other / f"checkpoints/pretrain/quickstart/step_{SHORT_PRETRAIN['save_every']}"
    deadline = time.time() + 600
    while not first_ckpt.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    # A power cut: the runner and its stage (in a process group of its own, its pid in the lock file).
    stage_pid = int((other / "checkpoints/pretrain/quickstart/.lmforge.lock").read_text().split()[0])
    os.killpg(proc.pid, signal.SIGKILL)
    os.kill(stage_pid, signal.SIGKILL)
    proc.wait()
    while Path(f"/proc/{stage_pid}").exists() and "zombie" not in _state(stage_pid):
        time.sleep(0.05)
    assert first_ckpt.is_dir() and not (other / "checkpoints/pretrain/quickstart/final").exists()

    again = lmforge("run", str(pipeline), "--run-dir", str(other), *only_pretrain)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing" in again.stdout or "resumed from" in again.stdout
    done = json.loads((other / "checkpoints/pretrain/quickstart/final/manifest.json").read_text())
    expected = json.loads((reference / "checkpoints/pretrain/quickstart/final/manifest.json").read_text())
    assert done["figures"]["steps"] == expected["figures"]["steps"] == SHORT_PRETRAIN["max_steps"]
    assert done["figures"]["final_loss"] == pytest.approx(expected["figures"]["final_loss"], abs=1e-5)
