"""Real-data tier: the plan's corpus configs, with reduced budgets, against the hub mirror.

Skipped when no mirror is available (set LMFORGE_MIRROR or provide ../shared/mirror).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmforge.artifacts import load_manifest
from lmforge.cli import main as cli_main

pytestmark = pytest.mark.realdata
CONFIGS = Path(__file__).resolve().parents[1] / "config" / "pretrain" / "corpus"


def corpus(config: str, out: Path, mirror: Path, *extra: str) -> int:
    return cli_main(["corpus", "--config", str(CONFIGS / config), "--output-dir", str(out),
                     "--mirror", str(mirror), "--use-cache", *extra])


def test_tokenizer_mix_on_real_data(tmp_path, mirror, capsys):
    # 0.4% of the plan: C4 112K, Gutenberg/FineWeb/Wikipedia 96K tokens each
    scale = ["--set", "processing_params.budget_scale=0.004"]
    assert corpus("tokenizer_training_mix.json", tmp_path / "plan", mirror, "--analyze-only", *scale) == 0
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [r["name"] for r in plan["sources"]] == ["c4", "gutenberg", "fineweb_edu", "wikipedia"]
    assert [r["percent"] for r in plan["sources"]] == [28, 24, 24, 24]
    gutenberg = next(r for r in plan["sources"] if r["name"] == "gutenberg")
    assert gutenberg["tokens_per_document"] > 20 * plan["sources"][0]["tokens_per_document"]  # books vs web pages

    assert corpus("tokenizer_training_mix.json", tmp_path / "out", mirror, *scale) == 0
    assert "Final documents" in capsys.readouterr().out
    manifest = load_manifest(tmp_path / "out", "corpus", verify="sha256")
    figures = manifest["figures"]
    for name, src in figures["sources"].items():
        assert src["budget"] * 0.995 <= src["tokens"] <= src["budget"], name
    assert figures["budget_shortfalls"] == {}
    assert figures["mirror"] == str(mirror)
    first = json.loads(gzip.open(tmp_path / "out" / figures["shards"][0]["path"], "rt").readline())
    assert set(first) == {"id", "source", "text"} and len(first["text"]) >= 200


def test_pretrain_config_with_exact_tokens_on_real_data(tmp_path, mirror, tiny_tokenizer):
    extra = ["--set", "processing_params.budget_scale=0.0004", "--tokenizer-dir", str(tiny_tokenizer)]
    assert corpus("tiny_23M_chinchilla_500M.json", tmp_path / "out", mirror, *extra) == 0
    figures = load_manifest(tmp_path / "out", "corpus")["figures"]
    assert figures["token_counting"]["method"] == "exact"
    assert set(figures["sources"]) == {"c4", "gutenberg", "fineweb_edu", "wikipedia"}
    for src in figures["sources"].values():
        assert 60_000 * 0.995 <= src["tokens"] <= 60_000
    # the same run again is a no-op
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    assert corpus("tiny_23M_chinchilla_500M.json", tmp_path / "out", mirror, *extra) == 0
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
