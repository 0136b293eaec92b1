"""The real-data preset end to end: the plan's own configs, scaled down by `--set` in
config/pipelines/realdata_small.json, on the hub mirror (C4, Gutenberg, Wikipedia,
WikiText-2, BoolQ, Alpaca, OASST1). Skips when no mirror is available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "config/pipelines/realdata_small.json"


def test_realdata_preset_runs_every_stage_with_one_tokenizer(tmp_path, mirror):
    run = tmp_path / "run"
    env = {**os.environ, "LMFORGE_MIRROR": str(mirror), "LMFORGE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "run", str(PRESET), "--run-dir", str(run)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stages = json.loads((run / "pipeline_run.json").read_text())["stages"]
    assert all(info["status"] == "ran" for info in stages.values()), stages

    # the plan's jq fields, read the same way
    tokenizer = json.loads((run / "data/models/tokenizers/spm_32k/tokenizer_config.json").read_text())
    assert tokenizer["vocab_size"] == 32768
    for artifact in ("data/processed/tiny_23M_1024", "data/sft_processed/alpaca_chatml",
                     "data/sft_processed/oasst1_chatml"):
        manifest = json.loads((run / artifact / "manifest.json").read_text())
        assert manifest["tokenizer_sha256"] == tokenizer["sha256_hash"], artifact

    # real sources were read from the mirror and stayed within budget
    corpus = json.loads((run / "data/datasets/tiny_23M_corpus/manifest.json").read_text())["figures"]
    assert set(corpus["sources"]) == {"c4", "gutenberg", "wikipedia"}
    assert corpus["token_counting"]["method"] == "exact"  # counted with the trained tokenizer

    check = subprocess.run([sys.executable, "-m", "lmforge.cli", "verify", str(run)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout[-3000:]
    assert "## Reference metrics" in (run / "REPORT.md").read_text()
