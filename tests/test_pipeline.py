"""`lmforge run`: pipeline files, command building, selection, dry runs, and real runs of cheap verbs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmforge.cli import main as cli
from lmforge.config import config_from_dict
from lmforge.pipeline.pipeline_file import (expand_env_value, launch_command, Pipeline, PipelineStage, plan, select,
                                            stage_argv, stage_output)
from lmforge.errors import LmforgeError

REPO = Path(__file__).resolve().parents[1]


def _stage(**kw) -> PipelineStage:
    return config_from_dict({"name": "s", "verb": "pack", **kw}, PipelineStage)


# ---------------------------------------------------------------- commands

def test_stage_argv_keeps_order_and_expands_values():
    stage = _stage(args={"--config": "{pipeline_dir}/c.json", "--data_dirs": ["{run_dir}/a", "b"],
                         "--use-cache": True, "--off": False, "--none": None, "workers": 2},
                   set={"training.max_steps": 5, "name": "abc", "sources": [{"tokens": 10}]})
    argv = stage_argv(stage, {"run_dir": "R", "pipeline_dir": "P"})
    assert argv == ["--config", "P/c.json", "--data_dirs", "R/a", "b", "--use-cache", "--workers", "2",
                    "--set", "training.max_steps=5", "--set", "name=abc", "--set", 'sources=[{"tokens": 10}]']


def test_launch_commands():
    argv = ["--x", "1"]
    assert launch_command(_stage(), argv) == [sys.executable, "-m", "lmforge.cli", "pack", "--x", "1"]
    acc = launch_command(_stage(launcher="accelerate"), argv)
    assert acc == [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "bf16",
                   "-m", "lmforge.cli", "pack", "--x", "1"]
    script = launch_command(_stage(launcher="accelerate", script="scripts/30_pack_dataset.py"), argv)
    assert script[3:] == ["--mixed_precision", "bf16", "scripts/30_pack_dataset.py", "--x", "1"]
    assert launch_command(_stage(verb="quickstart-data"), argv)[1:3] == ["-m", "lmforge.data.quickstart_data"]


def test_stage_output_from_flags():
    assert stage_output(_stage(), ["--output-dir", "out"]) == Path("out")
    assert stage_output(_stage(), ["--output_file", "ev/sft/results.json"]) == Path("ev/sft")
    assert stage_output(_stage(output="elsewhere"), ["--output-dir", "out"]) == Path("elsewhere")
    assert stage_output(_stage(), ["--config", "c"]) is None


def test_env_expansion():
    env = {"A": "1"}
    assert expand_env_value("${A:-x}/${B:-y}/${A}", env) == "1/y/1"


def _pipeline(**kw) -> Pipeline:
    raw = {"run_dir": "runs/t", "stages": [{"name": n, "verb": "pack"} for n in ("a", "b", "c", "d")], **kw}
    return config_from_dict(raw, Pipeline)


def test_select_from_to_only():
    planned = plan(_pipeline(), Path("p.json"), Path("runs/t"))
    names = lambda sel: [p.stage.name for p in sel]  # noqa: E731
    assert names(select(planned, None, None, [])) == ["a", "b", "c", "d"]
    assert names(select(planned, "b", "c", [])) == ["b", "c"]
    assert names(select(planned, "2", None, [])) == ["b", "c", "d"]
    assert names(select(planned, None, None, ["d,a"])) == ["a", "d"]
    with pytest.raises(LmforgeError, match="no such stage.*did you mean 'b'"):
        select(planned, None, None, ["bb"])
    with pytest.raises(LmforgeError, match="comes after"):
        select(planned, "c", "a", [])


def test_invalid_pipeline_reports_every_problem(tmp_path, capsys):
    bad = {"run_dir": "x", "stages": [{"name": "a", "verb": "corpuss", "argz": {}},
                                      {"name": "a", "verb": "pack", "launcher": "mpi"}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bad))
    assert cli(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown verb 'corpuss'" in err and "argz: unknown key" in err
    assert "launcher" in err and "duplicate stage name(s): a" in err


# ---------------------------------------------------------------- real runs of cheap verbs

@pytest.fixture()
def small_pipeline(tmp_path) -> Path:
    """corpus (built-in source, small budget) then quickstart-data: real verbs, seconds each."""
    corpus_cfg = json.loads((REPO / "config/quickstart/corpus.json").read_text())
    corpus_cfg["sources"] = [dict(corpus_cfg["sources"][1], tokens=40_000)]
    (tmp_path / "corpus.json").write_text(json.dumps(corpus_cfg))
    pipeline = {"run_dir": str(tmp_path / "run"), "description": "two cheap stages",
                "env": {"LMFORGE_TEST_MARK": "${LMFORGE_TEST_MARK:-from-pipeline}"},
                "stages": [
                    {"name": "corpus", "verb": "corpus",
                     "args": {"--config": "{pipeline_dir}/corpus.json", "--output-dir": "{run_dir}/corpus"}},
                    {"name": "qdata", "verb": "quickstart-data", "set": {"boolq_items": 20, "alpaca_items": 30},
                     "args": {"--corpus-dir": "{run_dir}/corpus", "--output-dir": "{run_dir}/qdata"}}]}
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(pipeline))
    return path


def _record(run: Path) -> dict:
    return json.loads((run / "pipeline_run.json").read_text())["stages"]


def test_dry_run_prints_commands_and_figures_and_runs_nothing(small_pipeline, capsys):
    assert cli(["run", str(small_pipeline), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "two cheap stages" in out and "env LMFORGE_TEST_MARK=from-pipeline" in out
    assert "[1/2] corpus (corpus)" in out and "-m lmforge.cli corpus --config" in out
    assert "total_tokens: 40.00K" in out                              # the corpus verb's describe()
    assert "items: 20 BoolQ, 30 Alpaca" in out                        # quickstart-data's describe()
    assert not (small_pipeline.parent / "run").exists()


def test_run_then_rerun_skips_every_stage(small_pipeline, capsys):
    run = small_pipeline.parent / "run"
    assert cli(["run", str(small_pipeline)]) == 0
    out = capsys.readouterr().out
    assert "[1/2] corpus: done" in out and "[2/2] qdata: done" in out and "2 stage(s) ran" in out
    record = _record(run)
    assert [record[n]["status"] for n in ("corpus", "qdata")] == ["ran", "ran"]
    assert (run / "logs/01_corpus.log").read_text().startswith("$ ")
    assert "Quickstart data ready" in (run / "logs/02_qdata.log").read_text()
    assert (run / "qdata/manifest.json").is_file() and (run / "REPORT.md").is_file()
    first_wall = record["qdata"]["ran_wall_s"]
    assert record["qdata"]["ran_cpu_s"] > 0                          # the stage's own CPU time

    assert cli(["run", str(small_pipeline)]) == 0
    out = capsys.readouterr().out
    assert out.count(": skipped (up to date) in ") == 2 and "0 stage(s) ran, 2 skipped" in out
    record = _record(run)
    assert [record[n]["status"] for n in ("corpus", "qdata")] == ["skipped", "skipped"]
    assert record["qdata"]["ran_wall_s"] == first_wall               # the real run's time is kept
    assert cli(["run", str(small_pipeline), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("last run here: ") == 2      # the time estimate of a dry run


def test_only_and_from_run_a_slice(small_pipeline, capsys):
    run = small_pipeline.parent / "run"
    assert cli(["run", str(small_pipeline), "--to", "corpus"]) == 0
    assert set(_record(run)) == {"corpus"} and not (run / "qdata").exists()
    assert cli(["run", str(small_pipeline), "--only", "qdata"]) == 0
    assert _record(run)["qdata"]["status"] == "ran"
    assert cli(["run", str(small_pipeline), "--from", "2"]) == 0
    assert _record(run)["qdata"]["status"] == "skipped"
    capsys.readouterr()


def test_failing_stage_stops_the_run_naming_stage_and_log(small_pipeline, capsys):
    data = json.loads(small_pipeline.read_text())
    data["stages"][0]["args"]["--config"] = "{pipeline_dir}/missing.json"
    small_pipeline.write_text(json.dumps(data))
    assert cli(["run", str(small_pipeline)]) == 2
    captured = capsys.readouterr()
    log = small_pipeline.parent / "run/logs/01_corpus.log"
    assert "stage 'corpus' (1/2, lmforge corpus) failed with exit code 2" in captured.err
    assert str(log) in captured.err and "config file not found" in log.read_text()
    assert "Traceback" not in captured.err
    record = _record(small_pipeline.parent / "run")
    assert record["corpus"]["status"] == "failed" and "qdata" not in record
    report = (small_pipeline.parent / "run/REPORT.md").read_text()
    assert "| 1 | corpus | corpus | **failed** (exit 2, log" in report


def test_stage_env_and_log_name(tmp_path, capsys, monkeypatch):
    """Environment reaches the stage (pipeline value, caller override) and `log` names the file."""
    monkeypatch.setenv("LMFORGE_TEST_MARK", "from-caller")
    pipeline = {"run_dir": str(tmp_path / "run"), "env": {"LMFORGE_TEST_MARK": "${LMFORGE_TEST_MARK:-x}"},
                "stages": [{"name": "v", "verb": "verify", "log": "custom.log",
                            "env": {"LMFORGE_OTHER": "{run_dir}/o"},
                            "args": {"paths": None, "--help": True}}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pipeline))
    planned = plan(config_from_dict(pipeline, Pipeline), path, tmp_path / "run")
    assert planned[0].env == {"LMFORGE_TEST_MARK": "from-caller", "LMFORGE_OTHER": f"{tmp_path / 'run'}/o"}
    assert cli(["run", str(path), "--no-report"]) == 0
    assert "lmforge verify" in (tmp_path / "run/logs/custom.log").read_text()
    capsys.readouterr()


# ---------------------------------------------------------------- presets

@pytest.mark.parametrize("preset", ["config/quickstart/pipeline.json", "config/pipelines/tiny_23m.json",
                                    "config/pipelines/realdata_small.json"])
def test_presets_are_valid_and_dry_run(preset, capsys, monkeypatch):
    monkeypatch.delenv("LMFORGE_MIRROR", raising=False)
    monkeypatch.chdir(REPO)
    assert cli(["run", preset, "--dry-run", "--run-dir", "/nonexistent/run"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n[") == 10                                     # every stage listed with its command
    assert out.count("  $ ") == 10


def test_tiny_23m_is_the_plans_tldr(capsys, monkeypatch):
    """The plan's TL;DR commands, verbatim (same scripts, flags, values, paths)."""
    monkeypatch.chdir(REPO)
    assert cli(["run", "config/pipelines/tiny_23m.json", "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan_lines = [
        "scripts/10_prepare_corpus.py --config config/pretrain/corpus/tokenizer_training_mix.json "
        "--output-dir data/datasets/tokenizer_corpus --use-cache --log-level INFO",
        "scripts/20_train_tokenizer.py --config config/pretrain/tokenizer/spm32k.json "
        "--output-dir data/models/tokenizers/spm_32k --log-level INFO",
        "scripts/30_pack_dataset.py --config config/pretrain/packing/default.json --corpus-dir "
        "data/datasets/tiny_23M_corpus --tokenizer-dir data/models/tokenizers/spm_32k --output-dir "
        "data/processed/tiny_23M_1024 --log-level INFO",
        "accelerate.commands.launch --mixed_precision bf16 scripts/40_pretrain.py --config "
        "config/pretrain/training/chinchilla_tiny_500m.json --data_dirs data/processed/tiny_23M_1024 "
        "--tokenizer_dir data/models/tokenizers/spm_32k --output_dir checkpoints/pretrain --num_workers 4",
        "scripts/50_evaluate_pretrain.py --model_path checkpoints/pretrain/tiny/final --tokenizer_path "
        "data/models/tokenizers/spm_32k --output_dir evaluation_results/pretrain/tiny",
        "accelerate.commands.launch --mixed_precision bf16 scripts/70_train_sft.py --config "
        "config/sft/training/lora_optimal_tiny_23m.json --model_path checkpoints/pretrain/tiny/final "
        "--data_dirs data/sft_processed/alpaca_chatml data/sft_processed/oasst1_chatml --data_weights 0.7 0.3 "
        "--tokenizer_path data/models/tokenizers/spm_32k --output_dir checkpoints/sft/tiny",
        "scripts/80_evaluate_sft.py --config config/evaluation/sft_standard.json --model_path "
        "checkpoints/sft/tiny/final --tokenizer_path data/models/tokenizers/spm_32k "
        "--output_file evaluation_results/sft/tiny/results.json",
    ]
    for line in plan_lines:
        assert line in out, line
    pipeline = json.loads((REPO / "config/pipelines/tiny_23m.json").read_text())
    assert [s["log"] for s in pipeline["stages"]][:2] == ["01_tokenizer_corpus.log", "02_tokenizer_training.log"]


@pytest.mark.realdata
def test_realdata_preset_reads_the_mirror(mirror, tmp_path, capsys, monkeypatch):
    """Dry run on the mirror, then its first stage for real: three real sources, no FineWeb."""
    monkeypatch.setenv("LMFORGE_MIRROR", str(mirror))
    monkeypatch.chdir(REPO)
    preset = "config/pipelines/realdata_small.json"
    assert cli(["run", preset, "--dry-run", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"env LMFORGE_MIRROR={mirror}" in out
    assert "sources: c4=500.00K, gutenberg=1.00M, wikipedia=1.00M" in out and "fineweb" not in out.lower()
    assert cli(["run", preset, "--run-dir", str(tmp_path / "run"), "--only", "tokenizer_corpus"]) == 0
    manifest = json.loads((tmp_path / "run/data/datasets/tokenizer_corpus/manifest.json").read_text())
    assert manifest["stage"] == "corpus"
    sources = manifest["figures"]["sources"]
    assert set(sources) == {"c4", "gutenberg", "wikipedia"}
    assert all(s["budget_met_percent"] >= 99.5 and not s["ran_dry"] for s in sources.values())
    capsys.readouterr()


def test_accelerate_launcher_runs_the_verb(tmp_path, capsys):
    """`launcher: accelerate` really goes through `accelerate launch -m lmforge.cli VERB`."""
    pipeline = {"run_dir": str(tmp_path / "run"),
                "stages": [{"name": "v", "verb": "verify", "launcher": "accelerate", "args": {"--help": True}}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pipeline))
    assert cli(["run", str(path), "--no-report"]) == 0
    log = (tmp_path / "run/logs/01_v.log").read_text()
    assert "accelerate.commands.launch --mixed_precision bf16 -m lmforge.cli verify --help" in log.splitlines()[0]
    assert "usage: lmforge verify" in log
    capsys.readouterr()


# ---------------------------------------------------------------- dry run: run / skip / blocked

def _states(out: str) -> dict[str, str]:
    """stage name -> the dry run's '→ state: reason' line."""
    import re

    return dict(re.findall(r"\n\[\d+/\d+\] (\S+) \([^)]*\)\n  → ([^\n]+)", out))


def test_dry_run_says_run_skip_or_blocked_with_the_reason(small_pipeline, capsys):
    run = small_pipeline.parent / "run"
    assert cli(["run", str(small_pipeline), "--dry-run"]) == 0
    states = _states(capsys.readouterr().out)
    assert states["corpus"].startswith("run: no complete output yet")
    assert states["qdata"].startswith("run: stage 'corpus' runs first")
    assert cli(["run", str(small_pipeline), "--dry-run", "--only", "qdata"]) == 0
    out = capsys.readouterr().out
    assert _states(out)["qdata"].startswith("blocked: needs ") and "from stage 'corpus', which is not built" in out
    assert "0 to run, 0 up to date, 1 blocked" in out

    assert cli(["run", str(small_pipeline)]) == 0
    capsys.readouterr()
    derived = json.loads((run / "qdata/mirror/DERIVED.json").read_text())["datasets"]   # says what it really is
    assert set(derived) == {"EleutherAI/wikitext_document_level", "aps/super_glue", "tatsu-lab/alpaca",
                            "OpenAssistant/oasst1"}
    assert cli(["run", str(small_pipeline), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(s.startswith("skip (up to date): ") for s in _states(out).values()), out
    assert "0 to run, 2 up to date, 0 blocked" in out

    # an edited config reruns its stage, and the stage after it
    import os
    import time

    config = small_pipeline.parent / "corpus.json"
    later = time.time() + 5
    os.utime(config, (later, later))
    assert cli(["run", str(small_pipeline), "--dry-run"]) == 0
    states = _states(capsys.readouterr().out)
    assert states["corpus"] == f"run: {config} was edited after the output was built"
    assert states["qdata"].startswith("run: stage 'corpus' runs first")
    assert not any("describe() failed" in s for s in states.values())
    assert json.loads((run / "pipeline_run.json").read_text())["stages"]["corpus"]["status"] == "ran"


def test_tokenizer_describe_reads_a_real_corpus_manifest(tmp_path, capsys):
    """The corpus stage records `shards` as a list of files: the tokenizer's dry run once
    failed on it (TypeError: bad operand type for abs(): 'list')."""
    from lmforge.artifacts import write_manifest

    corpus = tmp_path / "corpus"
    (corpus / "shards").mkdir(parents=True)
    (corpus / "shards/shard_0000.jsonl").write_text('{"text": "a"}\n')
    write_manifest(corpus, "corpus", config={}, outputs=["shards/shard_0000.jsonl"],
                   figures={"documents": 1, "characters": 1, "shards": ["shards/shard_0000.jsonl"], "shard_count": 1})
    pipeline = {"run_dir": str(tmp_path / "run"), "stages": [
        {"name": "tok", "verb": "tokenizer", "args": {"--config": str(REPO / "config/quickstart/tokenizer.json"),
                                                      "--corpus-dir": str(corpus), "--output-dir": "{run_dir}/tok"}}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pipeline))
    assert cli(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "corpus shards: 1" in out and "corpus documents: 1" in out and "note:" not in out
